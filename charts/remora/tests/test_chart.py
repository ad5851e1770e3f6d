"""The Helm chart, rendered offline and checked object by object.

Renders charts/remora in-process with helm-python-sdk (Helm's own Go code,
no helm binary, no cluster) for the default values and for values-all.yaml,
validates every rendered object against the Kubernetes 1.35 schemas with
strict unknown-field checking (kubernetes-validate's bundled schemas), and
asserts what an operator relies on: the webhook's failurePolicy and
selectors, RBAC verbs exactly, the injector's environment accepted by the
real remora-injector, and the chart's generated certificate served by it.

Run by scripts/test.sh (scripts/deps.sh installs the packages into
target/chart-venv):  target/chart-venv/bin/python charts/remora/tests/test_chart.py
"""

import base64
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import unittest

import helm_python as helm
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
CHART = HERE.parent
REPO = CHART.parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
KUBERNETES = "1.35.0"
NAMESPACE = "remora-system"


def render(values=None, namespace=NAMESPACE):
    """Every rendered object, as (template, object) pairs."""
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name="remora", namespace=namespace, is_install=True)
    out = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for obj in yaml.safe_load_all(text):
            if obj:
                out.append((template, obj))
    return out


def notes(values=None):
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name="remora", namespace=NAMESPACE, is_install=True)
    return manifests["remora/templates/NOTES.txt"]


def values_all():
    return yaml.safe_load((HERE / "values-all.yaml").read_text())


def find(objects, kind, name):
    matches = [o for _, o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise AssertionError(f"{kind}/{name}: {len(matches)} rendered")
    return matches[0]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl_until_ok(proc, *args):
    """curl -f until it succeeds, the process exits, or 10 s pass."""
    deadline = time.monotonic() + 10
    while True:
        result = subprocess.run(["curl", "-fsS", "--max-time", "2", *args], capture_output=True, text=True)
        if result.returncode == 0 or time.monotonic() > deadline or proc.poll() is not None:
            return result
        time.sleep(0.1)


class Schemas(unittest.TestCase):
    def check_all(self, objects):
        self.assertGreater(len(objects), 0)
        for template, obj in objects:
            with self.subTest(template=template, kind=obj["kind"], name=obj["metadata"]["name"]):
                kubernetes_validate.validate(obj, KUBERNETES, strict=True)

    def test_default_values_render_valid_objects(self):
        objects = render()
        self.check_all(objects)
        kinds = sorted((o["kind"], o["metadata"]["name"]) for _, o in objects)
        self.assertEqual(
            kinds,
            [
                ("ClusterRole", "remora-cp"),
                ("ClusterRoleBinding", "remora-cp"),
                ("ConfigMap", "remora-mesh"),
                ("Deployment", "remora-cp"),
                ("Deployment", "remora-injector"),
                ("MutatingWebhookConfiguration", "remora-injector"),
                ("PersistentVolumeClaim", "remora-cp-root"),
                ("PodDisruptionBudget", "remora-cp"),
                ("PodDisruptionBudget", "remora-injector"),
                ("Role", "remora-cp-leader-election"),
                ("RoleBinding", "remora-cp-leader-election"),
                ("Secret", "remora-injector-tls"),
                ("Service", "remora-cp"),
                ("Service", "remora-injector"),
                ("ServiceAccount", "remora-cp"),
                ("ServiceAccount", "remora-injector"),
            ],
        )

    def test_every_option_renders_valid_objects(self):
        objects = render(values_all())
        self.check_all(objects)
        names = {(o["kind"], o["metadata"]["name"]) for _, o in objects}
        # A supplied root and a supplied webhook certificate: nothing generated.
        self.assertNotIn(("PersistentVolumeClaim", "remora-cp-root"), names)
        self.assertNotIn(("Secret", "remora-injector-tls"), names)

    def test_a_validator_that_cannot_fail_is_not_a_test(self):
        deployment = find(render(), "Deployment", "remora-cp")
        deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


class Webhook(unittest.TestCase):
    def test_defaults(self):
        objects = render()
        config = find(objects, "MutatingWebhookConfiguration", "remora-injector")
        hooks = {h["name"]: h for h in config["webhooks"]}
        self.assertEqual(sorted(hooks), ["namespace.inject.remora.dev", "pod.inject.remora.dev"])
        ns = hooks["namespace.inject.remora.dev"]
        self.assertEqual(ns["failurePolicy"], "Fail")
        self.assertEqual(ns["sideEffects"], "None")
        self.assertEqual(ns["admissionReviewVersions"], ["v1"])
        self.assertEqual(ns["timeoutSeconds"], 10)
        self.assertEqual(
            ns["namespaceSelector"],
            {"matchExpressions": [{"key": "remora.dev/inject", "operator": "In", "values": ["enabled"]}]},
        )
        self.assertNotIn("objectSelector", ns)
        self.assertEqual(
            ns["rules"],
            [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
              "resources": ["pods"], "scope": "Namespaced"}],
        )
        self.assertEqual(
            ns["clientConfig"]["service"],
            {"name": "remora-injector", "namespace": NAMESPACE, "path": "/inject", "port": 443},
        )
        opt_in = hooks["pod.inject.remora.dev"]
        self.assertEqual(opt_in["failurePolicy"], "Ignore")
        self.assertEqual(opt_in["clientConfig"]["service"]["path"], "/inject/pod-opt-in")
        self.assertEqual(
            opt_in["namespaceSelector"]["matchExpressions"],
            [
                {"key": "remora.dev/inject", "operator": "NotIn", "values": ["enabled"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": ["kube-system", "kube-public", "kube-node-lease", NAMESPACE]},
            ],
        )
        # The caBundle is the CA of the certificate the injector serves.
        secret = find(objects, "Secret", "remora-injector-tls")
        self.assertEqual(ns["clientConfig"]["caBundle"], secret["data"]["ca.crt"])
        self.assertEqual(opt_in["clientConfig"]["caBundle"], secret["data"]["ca.crt"])
        self.assertTrue(base64.b64decode(secret["data"]["ca.crt"]).startswith(b"-----BEGIN CERTIFICATE-----"))

    def test_options(self):
        config = find(render(values_all()), "MutatingWebhookConfiguration", "remora-injector")
        ns, opt_in = config["webhooks"]
        self.assertEqual((ns["failurePolicy"], ns["timeoutSeconds"]), ("Ignore", 5))
        self.assertEqual((opt_in["failurePolicy"], opt_in["timeoutSeconds"]), ("Fail", 5))
        self.assertEqual(ns["clientConfig"]["caBundle"], "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==")
        self.assertEqual(
            opt_in["namespaceSelector"]["matchExpressions"][1]["values"],
            ["kube-system", "kube-public", "kube-node-lease", "monitoring", NAMESPACE],
        )
        off = render({"webhook": {"podOptIn": {"enabled": False}}})
        config = find(off, "MutatingWebhookConfiguration", "remora-injector")
        self.assertEqual([h["name"] for h in config["webhooks"]], ["namespace.inject.remora.dev"])


class Rbac(unittest.TestCase):
    def test_exact_rules_and_no_wildcards(self):
        objects = render()
        role = find(objects, "ClusterRole", "remora-cp")
        self.assertEqual(
            role["rules"],
            [
                {"apiGroups": [""], "resources": ["services", "pods", "serviceaccounts", "namespaces"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes", "grpcroutes"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["gateway.networking.k8s.io"],
                 "resources": ["httproutes/status", "grpcroutes/status"], "verbs": ["update", "patch"]},
                {"apiGroups": ["remora.dev"],
                 "resources": ["pluginpolicies", "consumers", "authorizationpolicies", "meshtlspolicies",
                               "trafficpolicies"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["remora.dev"],
                 "resources": ["pluginpolicies/status", "consumers/status", "authorizationpolicies/status",
                               "meshtlspolicies/status", "trafficpolicies/status"],
                 "verbs": ["update", "patch"]},
                {"apiGroups": [""], "resources": ["configmaps"],
                 "verbs": ["get", "list", "watch", "create", "patch"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            ],
        )
        lease = find(objects, "Role", "remora-cp-leader-election")
        self.assertEqual(lease["metadata"]["namespace"], NAMESPACE)
        self.assertEqual(
            lease["rules"],
            [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
              "verbs": ["get", "create", "update", "patch"]}],
        )
        for _, obj in objects:
            for rule in obj.get("rules", []):
                for field in ("apiGroups", "resources", "verbs"):
                    self.assertNotIn("*", rule.get(field, []), obj["metadata"]["name"])
        binding = find(objects, "ClusterRoleBinding", "remora-cp")
        self.assertEqual(binding["subjects"],
                         [{"kind": "ServiceAccount", "name": "remora-cp", "namespace": NAMESPACE}])
        # The injector has no RBAC; by default (proxy.nativeSidecar=auto) its
        # token reads GET /version, which system:discovery grants everyone.
        injector_sa = find(objects, "ServiceAccount", "remora-injector")
        self.assertIs(injector_sa["automountServiceAccountToken"], True)
        injector = find(objects, "Deployment", "remora-injector")["spec"]["template"]["spec"]
        self.assertIs(injector["automountServiceAccountToken"], True)
        self.assertEqual(env_of(injector["containers"][0])["REMORA_INJECTOR_NATIVE_SIDECAR"], "auto")
        self.assertEqual(
            [o for _, o in objects if o["kind"].endswith("Binding")
             and any(s["name"] == "remora-injector" for s in o["subjects"])],
            [],
        )
        # Told how to inject, it has no API access at all.
        for setting, env in ((False, "false"), (True, "true")):
            objects = render({"proxy": {"nativeSidecar": setting}})
            self.assertIs(find(objects, "ServiceAccount", "remora-injector")["automountServiceAccountToken"], False)
            injector = find(objects, "Deployment", "remora-injector")["spec"]["template"]["spec"]
            self.assertIs(injector["automountServiceAccountToken"], False)
            self.assertEqual(env_of(injector["containers"][0])["REMORA_INJECTOR_NATIVE_SIDECAR"], env)


    def test_the_injector_can_keep_the_ca_bundle_itself(self):
        objects = render({"injector": {"replicas": 3, "tls": {"source": "injector"}}}, namespace="mesh")
        for _, obj in objects:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        names = {(o["kind"], o["metadata"]["name"]) for _, o in objects}
        self.assertNotIn(("Secret", "remora-injector-tls"), names)
        config = find(objects, "MutatingWebhookConfiguration", "remora-injector")
        self.assertEqual([sorted(w["clientConfig"]) for w in config["webhooks"]], [["service"], ["service"]])
        role = find(objects, "ClusterRole", "remora-injector-webhook")
        self.assertEqual(
            role["rules"],
            [{"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
              "resourceNames": ["remora-injector"], "verbs": ["get", "patch"]}],
        )
        binding = find(objects, "ClusterRoleBinding", "remora-injector-webhook")
        self.assertEqual(binding["roleRef"]["name"], "remora-injector-webhook")
        self.assertEqual(binding["subjects"],
                         [{"kind": "ServiceAccount", "name": "remora-injector", "namespace": "mesh"}])
        self.assertIs(find(objects, "ServiceAccount", "remora-injector")["automountServiceAccountToken"], True)
        pod = find(objects, "Deployment", "remora-injector")["spec"]["template"]["spec"]
        self.assertIs(pod["automountServiceAccountToken"], True)
        self.assertNotIn("volumes", pod)
        env = env_of(pod["containers"][0])
        self.assertEqual(env["REMORA_INJECTOR_WEBHOOK_CONFIG_NAME"], "remora-injector")
        self.assertEqual(env["REMORA_INJECTOR_DNS_NAMES"],
                         "remora-injector.mesh.svc,remora-injector.mesh.svc.cluster.local")
        self.assertNotIn("REMORA_INJECTOR_TLS_CERT", env)

    def test_the_injector_keeps_four_certificates_so_at_most_three_replicas(self):
        with self.assertRaises((helm.HelmValuesError, helm.HelmRenderError, helm.HelmError)) as caught:
            render({"injector": {"replicas": 4, "tls": {"source": "injector"}}})
        self.assertIn("use at most 3 injector.replicas", str(caught.exception))


class Values(unittest.TestCase):
    def refused(self, values, message):
        with self.assertRaises((helm.HelmValuesError, helm.HelmRenderError, helm.HelmError)) as caught:
            render(values)
        self.assertIn(message, str(caught.exception))

    def test_out_of_range_and_unknown_values_are_refused(self):
        self.refused({"controlPlane": {"replicas": 0}}, "at '/controlPlane/replicas': minimum: got 0, want 1")
        self.refused({"injector": {"replicas": 11}}, "at '/injector/replicas': maximum: got 11, want 10")
        self.refused({"webhook": {"timeoutSeconds": 31}}, "at '/webhook/timeoutSeconds': maximum: got 31, want 30")
        self.refused({"webhook": {"failurePolicy": "Sometimes"}},
                     "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'")
        self.refused({"webhok": {}}, "additional properties 'webhok' not allowed")
        self.refused({"mesh": {"defaultMtlsMode": "strict"}},
                     "at '/mesh/defaultMtlsMode': value must be one of 'PERMISSIVE', 'STRICT'")
        self.refused({"proxy": {"memory": "lots"}}, "at '/proxy/memory': 'lots' does not match pattern")
        self.refused({"proxy": {"nativeSidecar": "yes"}}, "at '/proxy/nativeSidecar': value must be one of")
        self.refused({"controlPlane": {"certLifetime": "1 day"}},
                     "at '/controlPlane/certLifetime': '1 day' does not match pattern")
        self.refused({"controlPlane": {"auth": "token-file",
                                       "tokens": [{"token": "", "namespace": "a", "serviceAccount": "b"}]}},
                     "at '/controlPlane/tokens/0/token': minLength: got 0, want 1")

    def test_contradictions_are_refused_with_what_to_do(self):
        self.refused({"controlPlane": {"tokens": [{"token": "t", "namespace": "a", "serviceAccount": "b"}]}},
                     "controlPlane.tokens and controlPlane.tokensSecret are read only with controlPlane.auth=token-file")
        self.refused({"controlPlane": {"auth": "tokenreview"}},
                     "at '/controlPlane/auth': value must be one of 'kubernetes', 'token-file'")
        self.refused({"controlPlane": {"replicas": 2}},
                     "controlPlane.root.source=pvc keeps the root on a ReadWriteOnce claim")
        self.refused({"controlPlane": {"root": {"source": "secret"}}},
                     "controlPlane.root.source=secret needs controlPlane.root.secretName")
        self.refused({"injector": {"tls": {"source": "secret", "secretName": "x"}}},
                     "injector.tls.source=secret needs injector.tls.secretName")
        self.refused({"controlPlane": {"extraTrustRoots": {"secretName": "next", "keys": []}}},
                     "controlPlane.extraTrustRoots.secretName needs controlPlane.extraTrustRoots.keys")

    def test_values_reach_the_parts(self):
        objects = render(values_all())
        cp = find(objects, "Deployment", "remora-cp")["spec"]["template"]["spec"]
        env = env_of(cp["containers"][0])
        self.assertEqual(env["REMORA_CP_TRUST_DOMAIN"], "prod.example.com")
        self.assertEqual(env["REMORA_CP_KUBERNETES"], "true")
        self.assertEqual(env["REMORA_CP_ROOT_CERT"], "/etc/remora-cp/root/root-cert.pem")
        self.assertEqual(
            env["REMORA_CP_EXTRA_TRUST_ROOTS"],
            "/etc/remora-cp/extra-roots/next-root-cert.pem,/etc/remora-cp/extra-roots/other-root-cert.pem",
        )
        self.assertEqual(cp["containers"][0]["image"], "registry.example/mesh/remora/cp:0.1.0-rc.1")
        self.assertEqual(find(objects, "Deployment", "remora-cp")["spec"]["replicas"], 3)
        tokens = yaml.safe_load(find(objects, "Secret", "remora-cp-tokens")["stringData"]["tokens.yaml"])
        self.assertEqual(tokens, {"tokens": [{"token": "3f0c2a9e7d", "namespace": "shop",
                                              "serviceAccount": "checkout"}]})
        self.assertEqual(find(objects, "ConfigMap", "remora-mesh")["data"],
                         {"trustDomain": "prod.example.com", "defaultMtlsMode": "STRICT"})
        injector = find(objects, "Deployment", "remora-injector")["spec"]["template"]["spec"]
        env = env_of(injector["containers"][0])
        self.assertEqual(env["REMORA_INJECTOR_NATIVE_SIDECAR"], "false")
        self.assertEqual(env["REMORA_INJECTOR_PROXY_IMAGE"], "registry.example/mesh/remora/proxy:0.1.0-rc.1")
        self.assertEqual(env["REMORA_INJECTOR_PROXY_MEMORY_LIMIT"], "512Mi")
        self.assertEqual(injector["volumes"][0]["secret"]["secretName"], "remora-injector-cert")
        cp_env = env_of(cp["containers"][0])
        self.assertEqual(cp_env["REMORA_CP_AUTH"], "token-file")
        self.assertEqual(cp_env["REMORA_CP_TOKEN_FILE"], "/etc/remora-cp/tokens/tokens.yaml")
        self.assertNotIn("REMORA_CP_TOKEN_AUDIENCE", cp_env)
        # An empty token file is said in the notes.
        self.assertIn("The token file is empty", notes({"controlPlane": {"auth": "token-file"}}))
        self.assertNotIn("The token file is empty", notes())
        self.assertNotIn("The token file is empty", notes(values_all()))

    def test_tokenreview_by_default_for_the_injected_tokens_audience(self):
        objects = render({"proxy": {"tokenAudience": "mesh.example"}})
        cp = find(objects, "Deployment", "remora-cp")["spec"]["template"]["spec"]
        env = env_of(cp["containers"][0])
        self.assertEqual(env["REMORA_CP_AUTH"], "kubernetes")
        # The audience remora-cp checks is the one the injector projects.
        self.assertEqual(env["REMORA_CP_TOKEN_AUDIENCE"], "mesh.example")
        injector = find(objects, "Deployment", "remora-injector")["spec"]["template"]["spec"]
        self.assertEqual(env_of(injector["containers"][0])["REMORA_INJECTOR_TOKEN_AUDIENCE"], "mesh.example")
        self.assertNotIn("REMORA_CP_TOKEN_FILE", env)
        self.assertEqual([v["name"] for v in cp["volumes"]], ["root"])
        self.assertNotIn("automountServiceAccountToken", cp, "its token calls TokenReview")

    def test_the_control_plane_writes_the_configmap_the_injector_mounts(self):
        for values, name in (({}, "remora-ca-roots"), (values_all(), "mesh-roots")):
            objects = render(values)
            cp = find(objects, "Deployment", "remora-cp")["spec"]["template"]["spec"]["containers"][0]
            injector = find(objects, "Deployment", "remora-injector")["spec"]["template"]["spec"]["containers"][0]
            self.assertEqual(env_of(cp)["REMORA_CP_CA_ROOTS_CONFIG_MAP"], name)
            self.assertEqual(env_of(injector)["REMORA_INJECTOR_CA_ROOTS_CONFIG_MAP"], name)
            # Cluster-wide (namespaces come and go), without update or delete.
            rules = find(objects, "ClusterRole", "remora-cp")["rules"]
            self.assertEqual([r["verbs"] for r in rules if "configmaps" in r["resources"]],
                             [["get", "list", "watch", "create", "patch"]])
            self.assertEqual([o["kind"] for _, o in objects if o["kind"] in ("Role", "ClusterRole")
                              and any("configmaps" in r["resources"] for r in o["rules"])], ["ClusterRole"])

    def test_injected_proxies_ask_this_releases_control_plane(self):
        objects = render(namespace="mesh-ops")
        injector = find(objects, "Deployment", "remora-injector")["spec"]["template"]["spec"]
        env = env_of(injector["containers"][0])
        self.assertEqual(env["REMORA_INJECTOR_CA_ADDR"], "remora-cp.mesh-ops.svc:15012")
        self.assertEqual(env["REMORA_INJECTOR_CA_ROOTS_CONFIG_MAP"], "remora-ca-roots")
        objects = render(values_all())
        injector = find(objects, "Deployment", "remora-injector")["spec"]["template"]["spec"]
        self.assertEqual(env_of(injector["containers"][0])["REMORA_INJECTOR_CA_ROOTS_CONFIG_MAP"], "mesh-roots")
        self.refused({"proxy": {"caRootsConfigMap": "Roots_1"}}, "caRootsConfigMap")


class RealBinaries(unittest.TestCase):
    """The rendered environment, run by the real binaries."""

    def injector_env(self, objects, tls_dir, port):
        container = find(objects, "Deployment", "remora-injector")["spec"]["template"]["spec"]["containers"][0]
        env = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
        env["REMORA_INJECTOR_LISTEN"] = f"127.0.0.1:{port}"
        env["REMORA_INJECTOR_TLS_CERT"] = str(tls_dir / "tls.crt")
        env["REMORA_INJECTOR_TLS_KEY"] = str(tls_dir / "tls.key")
        env["PATH"] = os.environ.get("PATH", "")
        # No Kubernetes API: no in-cluster environment and no kubeconfig.
        env["KUBECONFIG"] = str(tls_dir / "no-kubeconfig")
        return env

    def test_injector_serves_the_charts_certificate_with_the_charts_settings(self):
        binary = TARGET / "debug" / "remora-injector"
        self.assertTrue(binary.exists(), f"{binary}: build it first (cargo build -p remora-injector)")
        objects = render()
        secret = find(objects, "Secret", "remora-injector-tls")["data"]
        with tempfile.TemporaryDirectory() as tmp:
            tls_dir = pathlib.Path(tmp)
            for key in ("tls.crt", "tls.key", "ca.crt"):
                (tls_dir / key).write_bytes(base64.b64decode(secret[key]))
            port = free_port()
            proc = subprocess.Popen([str(binary)], env=self.injector_env(objects, tls_dir, port),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                host = f"remora-injector.{NAMESPACE}.svc"
                result = curl_until_ok(proc, "--cacert", str(tls_dir / "ca.crt"),
                                       "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/ready")
                self.assertIsNone(proc.poll(), "the injector exited")
                self.assertEqual((result.returncode, result.stdout), (0, "ok\n"), result.stderr)
                # proxy.nativeSidecar=auto without an API server to ask: a
                # regular container.
                result = curl_until_ok(proc, "--cacert", str(tls_dir / "ca.crt"),
                                       "--resolve", f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/metrics")
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertIn("\nremora_injector_native_sidecar 0\n", result.stdout)
            finally:
                proc.terminate()
                proc.wait(timeout=10)

    def test_injector_takes_the_ca_bundle_settings_and_needs_the_api_for_them(self):
        binary = TARGET / "debug" / "remora-injector"
        objects = render({"injector": {"tls": {"source": "injector"}}})
        with tempfile.TemporaryDirectory() as tmp:
            env = self.injector_env(objects, pathlib.Path(tmp), free_port())
            del env["REMORA_INJECTOR_TLS_CERT"], env["REMORA_INJECTOR_TLS_KEY"]
            env["HOME"] = tmp  # no kubeconfig, no in-cluster token: no API
            result = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=20)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--webhook-config-name needs the Kubernetes API", result.stderr)

    def test_injector_accepts_every_option(self):
        binary = TARGET / "debug" / "remora-injector"
        objects = render(values_all())
        with tempfile.TemporaryDirectory() as tmp:
            # values-all names a Secret, so no certificate is rendered: the
            # injector's own generated one stands in for it.
            env = self.injector_env(objects, pathlib.Path(tmp), free_port())
            del env["REMORA_INJECTOR_TLS_CERT"], env["REMORA_INJECTOR_TLS_KEY"]
            log = pathlib.Path(tmp) / "log"
            with open(log, "wb") as err:
                proc = subprocess.Popen([str(binary)], env=env, stdout=subprocess.DEVNULL, stderr=err)
            try:
                time.sleep(1.0)
                self.assertIsNone(proc.poll(), log.read_text())
            finally:
                proc.terminate()
                proc.wait(timeout=10)

    def start_control_plane(self, values, tmp, kubernetes=None):
        """remora-cp with the rendered environment (REMORA_CP_KUBERNETES
        overridden by `kubernetes`); its /live and /ready answers."""
        binary = TARGET / "debug" / "remora-cp"
        self.assertTrue(binary.exists(), f"{binary}: build it first (cargo build -p remora-cp)")
        objects = render(values)
        container = find(objects, "Deployment", "remora-cp")["spec"]["template"]["spec"]["containers"][0]
        env = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
        env["REMORA_CP_NAMESPACE"] = NAMESPACE  # the downward API's value
        env["REMORA_CP_STATE_DIR"] = str(tmp / "state")
        if kubernetes is not None:
            env["REMORA_CP_KUBERNETES"] = kubernetes
        if "REMORA_CP_TOKEN_FILE" in env:
            tokens = find(objects, "Secret", "remora-cp-tokens")["stringData"]["tokens.yaml"]
            (tmp / "tokens.yaml").write_text(tokens)
            env["REMORA_CP_TOKEN_FILE"] = str(tmp / "tokens.yaml")
        # TokenReview, the watches and the Lease need an API server only once
        # they talk to it: a kubeconfig naming one where none listens is
        # enough to start (in a pod, the service account's is used).
        (tmp / "kubeconfig").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:9"}}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
        }))
        env["KUBECONFIG"] = str(tmp / "kubeconfig")
        kubernetes = env.get("REMORA_CP_KUBERNETES") == "true"
        admin = free_port()
        env["REMORA_CP_GRPC_ADDR"] = f"127.0.0.1:{free_port()}"
        env["REMORA_CP_ADMIN_ADDR"] = f"127.0.0.1:{admin}"
        log = tmp / "log"
        with open(log, "wb") as err:
            proc = subprocess.Popen([str(binary), *container["args"]], env=env,
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            if kubernetes:
                # Live at once; ready only once every watch has listed,
                # which needs the API server this test does not have.
                result = curl_until_ok(proc, f"http://127.0.0.1:{admin}/live")
                self.assertIsNone(proc.poll(), f"remora-cp exited: {log.read_text()}")
                self.assertEqual(result.returncode, 0, result.stderr)
                ready = subprocess.run(["curl", "-sS", "--max-time", "2", "-o", "/dev/stderr", "-w", "%{http_code}",
                                        f"http://127.0.0.1:{admin}/ready"], capture_output=True, text=True)
                self.assertEqual((ready.stdout, ready.stderr), ("503", "starting\n"))
            else:
                result = curl_until_ok(proc, f"http://127.0.0.1:{admin}/ready")
                self.assertIsNone(proc.poll(), f"remora-cp exited: {log.read_text()}")
                self.assertEqual((result.returncode, result.stdout), (0, "ready\n"), result.stderr)
            self.assertTrue((tmp / "state" / "root-cert.pem").exists(), "the root is generated into the state dir")
        finally:
            proc.terminate()
            proc.wait(timeout=15)

    def test_control_plane_starts_with_the_charts_settings(self):
        tokens = {"auth": "token-file", "tokens": [{"token": "3f0c", "namespace": "shop", "serviceAccount": "web"}]}
        for values in ({}, {"controlPlane": tokens}):
            with self.subTest(values=values), tempfile.TemporaryDirectory() as tmp:
                self.start_control_plane(values, pathlib.Path(tmp))

    def test_the_chart_runs_the_kubernetes_source(self):
        env = env_of(find(render({}), "Deployment", "remora-cp")["spec"]["template"]["spec"]["containers"][0])
        self.assertEqual(env.get("REMORA_CP_KUBERNETES"), "true")
        self.assertIn("REMORA_CP_POD_NAME", env)

    def test_control_plane_is_ready_with_the_charts_settings_but_the_kubernetes_source(self):
        # The same settings with the watches off: ready at once.
        with tempfile.TemporaryDirectory() as tmp:
            self.start_control_plane({}, pathlib.Path(tmp), kubernetes="false")

if __name__ == "__main__":
    unittest.main(verbosity=2)
