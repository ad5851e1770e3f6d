//! The demo's cluster as data, with no I/O: its pods, the Kubernetes
//! objects remora-cp's file source reads, what the injector's pure function
//! makes of each pod, and how those injected settings map onto a host.
//!
//! Everything a demo pod runs comes from here: `remora-init`'s and
//! `remora-proxy`'s environment and user are read out of the Pod that
//! `remora_injector::injected_pod` returns, so the demo runs exactly what a
//! real injection gives (the downward API's `fieldRef`s resolved from the
//! Pod, as kubelet does); the few values that cannot apply outside a
//! cluster (projected volumes, remora-cp's Service name) are mapped one by
//! one, each with its reason, in [`HostMapping`]. The proxies get their
//! mesh config from remora-cp over discovery, as injected.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use remora_injector::inject::{
    ENV_PROXY_CA_ADDR, ENV_PROXY_CA_ROOTS, ENV_PROXY_DISCOVERY_ADDR, ENV_PROXY_IDENTITY_TOKEN_FILE,
    INIT_NAME, PROXY_NAME,
};
use remora_injector::Settings;
use serde_json::{json, Value};

use crate::translate::{self, Options, Store};

/// The Kubernetes namespace of the demo's pods.
pub const NAMESPACE: &str = "demo";
pub const TRUST_DOMAIN: &str = "cluster.local";
/// Every network namespace of the demo starts with this (the e2e harness
/// uses `rm-`).
pub const NETNS_PREFIX: &str = "remora-demo-";
/// The node: the bridge's namespace, where remora-cp runs.
pub const NODE_NETNS: &str = "remora-demo-node";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 1);
pub const PREFIX_LEN: u8 = 24;
/// The `hello` Service's cluster IP and port, and the apps' port.
pub const HELLO_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const HELLO_PORT: u16 = 80;
pub const APP_PORT: u16 = 8080;
/// remora-cp's gRPC (CA) and admin ports in the node namespace.
pub const CP_GRPC_PORT: u16 = 15012;
pub const CP_ADMIN_PORT: u16 = 15014;
/// The HTTPRoute weights of the split step and the rate limit's count.
pub const SPLIT_WEIGHTS: (u32, u32) = (90, 10);
pub const LIMIT_COUNT: u32 = 5;
pub const LIMIT_WINDOW_SECONDS: u32 = 60;
/// The limit-count rejection, as APISIX writes it with `rejected_msg`.
pub const LIMIT_MESSAGE: &str = "Too many requests";
/// The path the rate-limited route matches.
pub const LIMITED_PATH: &str = "/limited";

/// One demo pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoPod {
    pub name: &'static str,
    pub service_account: &'static str,
    /// `v1`/`v2` for the servers; `None` for the client.
    pub version: Option<&'static str>,
    pub ip: Ipv4Addr,
}

pub const CLIENT: DemoPod = DemoPod {
    name: "client",
    service_account: "client",
    version: None,
    ip: Ipv4Addr::new(10, 90, 0, 2),
};
pub const HELLO_V1: DemoPod = DemoPod {
    name: "hello-v1",
    service_account: "hello",
    version: Some("v1"),
    ip: Ipv4Addr::new(10, 90, 0, 3),
};
pub const HELLO_V2: DemoPod = DemoPod {
    name: "hello-v2",
    service_account: "hello",
    version: Some("v2"),
    ip: Ipv4Addr::new(10, 90, 0, 4),
};
pub const PODS: [DemoPod; 3] = [CLIENT, HELLO_V1, HELLO_V2];
pub const SERVERS: [DemoPod; 2] = [HELLO_V1, HELLO_V2];

impl DemoPod {
    pub fn netns(&self) -> String {
        format!("{NETNS_PREFIX}{}", self.name)
    }

    /// The token the pod proves its identity with (remora-cp's token file
    /// maps it to the pod's service account).
    pub fn token(&self) -> String {
        format!("demo-token-{}", self.name)
    }

    pub fn identity(&self) -> String {
        translate::identity(&options(), NAMESPACE, self.service_account)
    }

    /// The workload key translation files the pod's inbound side under.
    pub fn workload(&self) -> String {
        format!("{NAMESPACE}/{}", self.name)
    }

    /// The app container's name (the rewritten probe's path names it).
    pub fn container(&self) -> &'static str {
        if self.version.is_some() {
            "hello"
        } else {
            "client"
        }
    }

    /// The Pod as a user would write it, before injection. The servers
    /// have a readiness probe on the app, which the injector moves to the
    /// proxy's admin port.
    pub fn manifest(&self) -> Value {
        let mut labels = json!({"app": self.container()});
        let mut container = json!({
            "name": self.container(),
            "image": format!("remora/demo-{}", self.container()),
        });
        if let Some(version) = self.version {
            labels["version"] = json!(version);
            container["ports"] = json!([{"name": "http", "containerPort": APP_PORT}]);
            container["readinessProbe"] = json!({
                "httpGet": {"path": "/healthz", "port": APP_PORT},
                "periodSeconds": 1,
            });
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "serviceAccountName": self.service_account,
                "containers": [container],
            },
        })
    }
}

/// Translation's settings for the demo (remora-cp's defaults).
pub fn options() -> Options {
    Options {
        trust_domain: TRUST_DOMAIN.to_owned(),
        ..Options::default()
    }
}

/// The injector's settings: the webhook's defaults, as the chart installs
/// it (remora-cp's certificate and discovery services at
/// `remora-cp.remora-system.svc:15012`).
pub fn injector_settings() -> Settings {
    Settings::default()
}

/// The demo namespace's labels: opted in, as `kubectl label` would.
pub fn namespace_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        remora_injector::inject::NAMESPACE_LABEL.to_owned(),
        "enabled".to_owned(),
    )])
}

/// Why the demo cannot start from its own objects.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("the injector refused demo pod {pod}: {reason}")]
    Inject { pod: &'static str, reason: String },
    #[error("the injector skipped demo pod {0}; the demo needs it injected")]
    Skipped(&'static str),
    #[error("the injected pod {pod} has no {what}")]
    Missing { pod: &'static str, what: String },
    #[error("translation reported a problem with the demo's objects: {0}")]
    Translation(String),
    #[error("rendering {what}: {reason}")]
    Render { what: String, reason: String },
}

/// Paths and addresses on this host that stand in for what a cluster
/// provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// remora-cp's gRPC port (certificates and discovery) as the pods
    /// reach it.
    pub cp_addr: String,
    /// remora-cp's root, readable by uid 1337.
    pub ca_roots: PathBuf,
    /// Directory of the pods' token files.
    pub tokens_dir: PathBuf,
}

impl HostPaths {
    pub fn token_file(&self, pod: &DemoPod) -> PathBuf {
        self.tokens_dir.join(pod.name)
    }
}

/// One injected value that the demo sets differently on a host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMapping {
    pub name: String,
    /// What the injection set (`None`: the demo adds the variable).
    pub injected: Option<String>,
    pub host: String,
    pub why: &'static str,
}

/// What a demo pod runs, read out of its injected Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Sidecar {
    pub pod: DemoPod,
    /// The injected Pod, as the file source and the API server see it.
    pub injected: Value,
    /// `remora-init`'s environment (its flags' env vars) and arguments.
    pub init_env: Vec<(String, String)>,
    pub init_args: Vec<String>,
    /// `remora-proxy`'s environment, after [`HostMapping`]s, and arguments.
    pub proxy_env: Vec<(String, String)>,
    pub proxy_args: Vec<String>,
    /// The proxy's securityContext runAsUser / runAsGroup.
    pub proxy_uid: i64,
    pub proxy_gid: i64,
    pub mappings: Vec<HostMapping>,
    /// The readiness path the injector rewrote the app's probe to, on the
    /// proxy's admin port.
    pub app_probe: Option<String>,
}

/// Injects `pod` with the injector's pure function and reads out what
/// its init and proxy containers run, mapping host-specific values.
pub fn sidecar(pod: &DemoPod, host: &HostPaths) -> Result<Sidecar, ObjectsError> {
    let injected =
        remora_injector::injected_pod(&pod.manifest(), &namespace_labels(), &injector_settings())
            .map_err(|e| ObjectsError::Inject {
                pod: pod.name,
                reason: e.to_string(),
            })?
            .map(|(pod, _warnings)| pod)
            .ok_or(ObjectsError::Skipped(pod.name))?;
    let missing = |what: &str| ObjectsError::Missing {
        pod: pod.name,
        what: what.to_owned(),
    };
    let init = container(&injected, INIT_NAME).ok_or_else(|| missing("remora-init container"))?;
    let proxy =
        container(&injected, PROXY_NAME).ok_or_else(|| missing("remora-proxy container"))?;
    let proxy_uid = proxy
        .pointer("/securityContext/runAsUser")
        .and_then(Value::as_i64)
        .ok_or_else(|| missing("proxy securityContext.runAsUser"))?;
    let proxy_gid = proxy
        .pointer("/securityContext/runAsGroup")
        .and_then(Value::as_i64)
        .ok_or_else(|| missing("proxy securityContext.runAsGroup"))?;

    let mut init_env = env_of(&injected, init).map_err(|what| missing(&what))?;
    let mut mappings = Vec::new();
    // Not from the injection: the demo's pods have no IPv6 address.
    init_env.push(("REMORA_IPV6".to_owned(), "false".to_owned()));
    mappings.push(HostMapping {
        name: "remora-init REMORA_IPV6".to_owned(),
        injected: None,
        host: "false".to_owned(),
        why: "the demo's pods are IPv4 only",
    });

    let mut proxy_env = env_of(&injected, proxy).map_err(|what| missing(&what))?;
    for (name, value) in &mut proxy_env {
        let (host_value, why) = match name.as_str() {
            ENV_PROXY_CA_ADDR | ENV_PROXY_DISCOVERY_ADDR => (
                host.cp_addr.clone(),
                "no cluster DNS: remora-cp runs in the node namespace (its server name stays)",
            ),
            ENV_PROXY_CA_ROOTS => (
                host.ca_roots.display().to_string(),
                "a projected ConfigMap volume: remora-cp's root, copied to a file",
            ),
            ENV_PROXY_IDENTITY_TOKEN_FILE => (
                host.token_file(pod).display().to_string(),
                "a projected service-account token: a file remora-cp's --token-file maps to the pod's identity",
            ),
            _ => continue,
        };
        mappings.push(HostMapping {
            name: format!("remora-proxy {name}"),
            injected: Some(value.clone()),
            host: host_value.clone(),
            why,
        });
        *value = host_value;
    }
    let app_probe = pod.version.and_then(|_| {
        injected
            .pointer("/spec/containers/0/readinessProbe/httpGet/path")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    Ok(Sidecar {
        pod: *pod,
        init_args: args_of(init),
        proxy_args: args_of(proxy),
        injected,
        init_env,
        proxy_env,
        proxy_uid,
        proxy_gid,
        mappings,
        app_probe,
    })
}

/// The container `name` among the injected Pod's init and app containers.
fn container<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["/spec/initContainers", "/spec/containers"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

/// A container's env as kubelet gives it: literal values, and `fieldRef`s
/// to the Pod's own fields (the downward API); any other `valueFrom` is an
/// error naming it.
fn env_of(pod: &Value, container: &Value) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for var in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = var.get("name").and_then(Value::as_str).unwrap_or_default();
        let field = var
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str);
        let value = match (var.get("value").and_then(Value::as_str), field) {
            (Some(value), _) => value,
            (None, Some(field @ ("metadata.name" | "metadata.namespace"))) => pod
                .pointer(&format!("/{}", field.replace('.', "/")))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{field} for env {name}"))?,
            _ => {
                return Err(format!(
                    "value or pod name/namespace fieldRef for env {name}"
                ))
            }
        };
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

fn args_of(container: &Value) -> Vec<String> {
    container
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// The token file remora-cp reads: each pod's token to its identity.
pub fn token_file() -> String {
    let mut yaml = String::from("tokens:\n");
    for pod in PODS {
        yaml.push_str(&format!(
            "  - token: {}\n    namespace: {NAMESPACE}\n    serviceAccount: {}\n",
            pod.token(),
            pod.service_account
        ));
    }
    yaml
}

/// The objects the demo gives remora-cp's file source, file name to
/// YAML: the namespace, the injected pods, the Services and their
/// EndpointSlices, the HTTPRoutes and the PluginPolicy.
pub fn source_files(sidecars: &[Sidecar]) -> Result<Vec<(String, String)>, ObjectsError> {
    let mut pods = Vec::new();
    for sidecar in sidecars {
        pods.push(serde_saphyr::to_string(&sidecar.injected).map_err(|e| {
            ObjectsError::Render {
                what: format!("pod {}", sidecar.pod.name),
                reason: e.to_string(),
            }
        })?);
    }
    Ok(vec![
        ("00-namespace.yaml".to_owned(), namespace_yaml()),
        ("10-pods.yaml".to_owned(), pods.join("---\n")),
        ("20-services.yaml".to_owned(), services_yaml()),
        ("30-routes.yaml".to_owned(), routes_yaml()),
    ])
}

fn namespace_yaml() -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n  labels: {{remora.dev/inject: enabled}}\n"
    )
}

/// `hello` (both versions, the cluster IP the client calls) and one Service
/// per version for the route's backendRefs, each with its EndpointSlice.
fn services_yaml() -> String {
    let mut docs = Vec::new();
    let services: [(&str, Ipv4Addr, &[DemoPod], Option<&str>); 3] = [
        ("hello", HELLO_IP, &SERVERS, None),
        (
            "hello-v1",
            Ipv4Addr::new(10, 96, 0, 11),
            &[HELLO_V1],
            Some("v1"),
        ),
        (
            "hello-v2",
            Ipv4Addr::new(10, 96, 0, 12),
            &[HELLO_V2],
            Some("v2"),
        ),
    ];
    for (name, ip, pods, version) in services {
        let selector = match version {
            Some(v) => format!("{{app: hello, version: {v}}}"),
            None => "{app: hello}".to_owned(),
        };
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
             spec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  selector: {selector}\n  \
             ports: [{{name: http, port: {HELLO_PORT}, targetPort: {APP_PORT}, protocol: TCP}}]\n"
        ));
        let endpoints: String = pods
            .iter()
            .map(|p| {
                format!(
                    "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n    \
                     targetRef: {{kind: Pod, name: {}, namespace: {NAMESPACE}}}\n",
                    p.ip, p.name
                )
            })
            .collect();
        docs.push(format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
             namespace: {NAMESPACE}\n  labels: {{kubernetes.io/service-name: {name}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {APP_PORT}}}]\nendpoints:\n{endpoints}"
        ));
    }
    docs.join("---\n")
}

/// The 90/10 split on `hello`, the rate-limited route, and its limit.
fn routes_yaml() -> String {
    let (v1, v2) = SPLIT_WEIGHTS;
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: hello-split, namespace: {NAMESPACE}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: hello, port: {HELLO_PORT}}}]
  rules:
    - name: split
      backendRefs:
        - {{name: hello-v1, port: {HELLO_PORT}, weight: {v1}}}
        - {{name: hello-v2, port: {HELLO_PORT}, weight: {v2}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: hello-limited, namespace: {NAMESPACE}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: hello, port: {HELLO_PORT}}}]
  rules:
    - name: limited
      matches: [{{path: {{type: PathPrefix, value: {LIMITED_PATH}}}}}]
      backendRefs: [{{name: hello-v1, port: {HELLO_PORT}}}]
---
apiVersion: remora.dev/v1alpha1
kind: PluginPolicy
metadata: {{name: hello-limit, namespace: {NAMESPACE}}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: hello-limited}}]
  plugins:
    limit-count:
      count: {LIMIT_COUNT}
      time_window: {LIMIT_WINDOW_SECONDS}
      key_type: constant
      rejected_code: 429
      rejected_msg: {LIMIT_MESSAGE}
"#
    )
}

/// What remora-cp's translation makes of the objects in `store`, checked
/// before the demo starts: no problem reported, and every pod a meshed
/// workload (so discovery can serve each proxy its inbound side).
pub fn translated(store: &Store) -> Result<translate::Translation, ObjectsError> {
    let translation = translate::translate(store, &options());
    if let Some(p) = translation.problems.first() {
        return Err(ObjectsError::Translation(format!(
            "{} {}: {}=False ({}): {}",
            p.kind, p.key, p.condition, p.reason, p.message
        )));
    }
    for pod in PODS {
        let workload = pod.workload();
        if !translation.view.workloads.contains_key(&workload) {
            return Err(ObjectsError::Translation(format!(
                "no workload {workload}: is the pod injected?"
            )));
        }
    }
    Ok(translation)
}

/// Reads `dir` as remora-cp's file source does.
pub fn load_store(dir: &Path) -> Result<Store, ObjectsError> {
    let loaded = crate::source_dir::load_dir(dir, &crate::source_dir::DirLimits::default())
        .map_err(|e| ObjectsError::Translation(e.to_string()))?;
    if let Some(s) = loaded.skipped.first() {
        return Err(ObjectsError::Translation(format!(
            "{} ({}): {}",
            s.file.display(),
            s.kind,
            s.reason
        )));
    }
    Ok(loaded.store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostPaths {
        HostPaths {
            cp_addr: "10.90.0.1:15012".into(),
            ca_roots: "/tmp/d/ca-roots.pem".into(),
            tokens_dir: "/tmp/d/tokens".into(),
        }
    }

    fn store_of(sidecars: &[Sidecar]) -> Store {
        let mut store = Store::default();
        for (_, text) in source_files(sidecars).unwrap() {
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
            for doc in docs.into_iter().filter(|d| !d.is_null()) {
                store.insert(doc).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        store
    }

    #[test]
    fn the_proxy_runs_what_the_injection_gives_with_host_paths_mapped() {
        let s = sidecar(&HELLO_V1, &host()).unwrap();
        assert_eq!((s.proxy_uid, s.proxy_gid), (1337, 1337));
        assert_eq!(
            s.init_env,
            [
                ("REMORA_PROXY_UID".to_owned(), "1337".to_owned()),
                ("REMORA_PROXY_GID".to_owned(), "1337".to_owned()),
                ("REMORA_IPV6".to_owned(), "false".to_owned()),
            ]
        );
        let env: BTreeMap<&str, &str> = s
            .proxy_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env["REMORA_CA_ADDR"], "10.90.0.1:15012");
        assert_eq!(env["REMORA_CA_SERVER_NAME"], "remora-cp.remora-system.svc");
        assert_eq!(env["REMORA_CA_ROOTS"], "/tmp/d/ca-roots.pem");
        assert_eq!(env["REMORA_IDENTITY_TOKEN_FILE"], "/tmp/d/tokens/hello-v1");
        // Discovery, as injected: remora-cp's one gRPC port, and the pod's
        // name and namespace from the downward API.
        assert_eq!(env["REMORA_DISCOVERY_ADDR"], "10.90.0.1:15012");
        assert_eq!(env["REMORA_POD_NAME"], "hello-v1");
        assert_eq!(env["REMORA_POD_NAMESPACE"], "demo");
        assert!(!env.contains_key("REMORA_CONFIG"), "{env:?}");
        assert_eq!(env["RUST_LOG"], "info");
        // The rewritten readiness probe, served by the proxy for the app.
        assert_eq!(s.app_probe.as_deref(), Some("/app-health/hello/readyz"));
        assert!(env["REMORA_APP_PROBES"].contains("8080"), "{env:?}");
        let mapped: Vec<(&str, Option<&str>)> = s
            .mappings
            .iter()
            .map(|m| (m.name.as_str(), m.injected.as_deref()))
            .collect();
        assert_eq!(
            mapped,
            [
                ("remora-init REMORA_IPV6", None),
                (
                    "remora-proxy REMORA_IDENTITY_TOKEN_FILE",
                    Some("/var/run/secrets/remora.dev/identity/token")
                ),
                (
                    "remora-proxy REMORA_CA_ADDR",
                    Some("remora-cp.remora-system.svc:15012")
                ),
                (
                    "remora-proxy REMORA_CA_ROOTS",
                    Some("/var/run/secrets/remora.dev/identity/ca-roots.pem")
                ),
                (
                    "remora-proxy REMORA_DISCOVERY_ADDR",
                    Some("remora-cp.remora-system.svc:15012")
                ),
            ]
        );
        // The client has no app probe.
        assert_eq!(sidecar(&CLIENT, &host()).unwrap().app_probe, None);
    }

    #[test]
    fn translation_gives_each_pod_the_split_limit_and_identities() {
        let sidecars: Vec<Sidecar> = PODS.iter().map(|p| sidecar(p, &host()).unwrap()).collect();
        let translation = translated(&store_of(&sidecars)).unwrap();
        assert_eq!(
            translation.view.workloads.keys().collect::<Vec<_>>(),
            ["demo/client", "demo/hello-v1", "demo/hello-v2"]
        );
        // What discovery serves the client (before slicing), as JSON the
        // proxy parses.
        let config = translate::assemble(&translation.view, Some(&CLIENT.workload()));
        let text = serde_json::to_string(&config).unwrap();
        let config =
            remora_api::MeshConfig::parse(text.as_bytes(), &remora_api::ParseLimits::default())
                .unwrap();
        let hello = config
            .outbound
            .services
            .iter()
            .find(|s| s.name == "hello.demo")
            .unwrap();
        assert_eq!(hello.addresses, [std::net::IpAddr::V4(HELLO_IP)]);
        let routes = &hello.ports[0].routes;
        let split = routes
            .iter()
            .find(|r| r.name.as_deref() == Some("split"))
            .unwrap();
        let weights: Vec<(&str, u32)> = split
            .backend_refs
            .iter()
            .map(|b| (b.name.as_str(), b.weight))
            .collect();
        assert_eq!(
            weights,
            [("demo/hello-v1:80", 90), ("demo/hello-v2:80", 10)]
        );
        let limited = routes
            .iter()
            .find(|r| r.name.as_deref() == Some("limited"))
            .unwrap();
        assert_eq!(
            limited.plugins["limit-count"],
            json!({"count": 5, "time_window": 60, "key_type": "constant",
                   "rejected_code": 429, "rejected_msg": "Too many requests"})
        );
        let v1 = &config.backends["demo/hello-v1:80"].endpoints;
        assert_eq!(v1.len(), 1);
        assert_eq!(v1[0].address.to_string(), "10.90.0.3:8080");
        assert_eq!(
            v1[0].identity.as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/hello")
        );
    }

    #[test]
    fn a_pod_without_its_injection_is_a_translation_error() {
        let sidecars: Vec<Sidecar> = PODS.iter().map(|p| sidecar(p, &host()).unwrap()).collect();
        let mut store = store_of(&sidecars);
        store.pods.remove("demo/hello-v2");
        assert_eq!(
            translated(&store).unwrap_err().to_string(),
            "translation reported a problem with the demo's objects: no workload demo/hello-v2: \
             is the pod injected?"
        );
    }

    #[test]
    fn an_env_source_kubelet_would_need_more_than_the_pod_for_is_refused() {
        let pod = json!({"metadata": {"name": "p", "namespace": "demo"}});
        let container = json!({"env": [
            {"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ]});
        assert_eq!(
            env_of(&pod, &container).unwrap(),
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "demo".to_owned())
            ]
        );
        let secret = json!({"env": [
            {"name": "C", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ]});
        assert_eq!(
            env_of(&pod, &secret).unwrap_err(),
            "value or pod name/namespace fieldRef for env C"
        );
    }

    #[test]
    fn the_token_file_maps_each_pod_to_its_service_account() {
        assert_eq!(
            token_file(),
            "tokens:\n  - token: demo-token-client\n    namespace: demo\n    serviceAccount: client\n  \
             - token: demo-token-hello-v1\n    namespace: demo\n    serviceAccount: hello\n  \
             - token: demo-token-hello-v2\n    namespace: demo\n    serviceAccount: hello\n"
        );
        assert_eq!(
            CLIENT.identity(),
            "spiffe://cluster.local/ns/demo/sa/client"
        );
    }
}
