//! Golden tests of the pure injection function on real Pod specs
//! (tests/fixtures/*.yaml): the exact patch and the exact injected Pod are
//! kept in tests/golden/; `UPDATE_GOLDEN=1 cargo test -p remora-injector
//! --test golden` rewrites them. Each patch is applied with the json-patch
//! crate to the original and must give exactly the golden Pod; injecting that
//! Pod again gives no patch, and uninjecting it gives the original back.

use std::collections::BTreeMap;
use std::path::PathBuf;

use remora_injector::{inject, injected_pod, uninject, Decision, Settings, Skip};
use serde_json::Value;

fn dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(sub)
}

fn fixture(name: &str) -> Value {
    let path = dir("fixtures").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    serde_saphyr::from_str(&text).expect("fixture is YAML")
}

fn enabled() -> BTreeMap<String, String> {
    BTreeMap::from([("remora.dev/inject".to_owned(), "enabled".to_owned())])
}

/// Compares `actual` with the golden file, or rewrites it under UPDATE_GOLDEN.
fn golden(file: &str, actual: &Value) {
    let path = dir("golden").join(file);
    let text = serde_json::to_string_pretty(actual).expect("serializes") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("golden written");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", path.display()));
    let expected_value: Value = serde_json::from_str(&expected).expect("golden is JSON");
    // Values, not text: key order is not part of the contract.
    assert!(
        *actual == expected_value,
        "{file} differs; if the change is right, run with UPDATE_GOLDEN=1\n--- expected\n{expected}\n--- actual\n{text}"
    );
}

/// Injects `name`, checks patch and Pod against the golden files, applies the
/// patch, re-injects and uninjects. Returns the injected Pod and warnings.
fn check_injection(name: &str) -> (Value, Vec<String>) {
    let original = fixture(name);
    let decision = inject(&original, &enabled(), &Settings::default()).expect("injectable");
    let Decision::Inject(injection) = decision else {
        panic!("{name}: expected a patch, got {decision:?}");
    };
    let patch = serde_json::to_value(&injection.patch).expect("serializes");
    golden(&format!("{name}.patch.json"), &patch);

    let mut patched = original.clone();
    json_patch::patch(&mut patched, &injection.patch).expect("the patch applies to the original");
    golden(&format!("{name}.pod.json"), &patched);

    assert_eq!(
        inject(&patched, &enabled(), &Settings::default()),
        Ok(Decision::Skip(Skip::AlreadyInjected)),
        "{name}: injecting the injected pod again changes nothing"
    );
    assert_eq!(
        uninject(&patched).expect("uninjectable"),
        original,
        "{name}: uninject(inject(pod)) == pod"
    );
    (patched, injection.warnings)
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry {name}"))
}

fn names<'a>(pod: &'a Value, list: &str) -> Vec<&'a str> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or_default())
        .collect()
}

fn env(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn plain_pod() {
    let (pod, warnings) = check_injection("plain-pod");
    assert_eq!(warnings, Vec::<String>::new());
    let names = names(&pod, "initContainers");
    assert_eq!(
        names,
        ["remora-init", "remora-proxy"],
        "init first, then the native sidecar"
    );
    let proxy = container(&pod, "initContainers", "remora-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["startupProbe"]["httpGet"]["port"], 15020);
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["runAsGroup"], 1337);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(proxy["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        proxy["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    let init = container(&pod, "initContainers", "remora-init");
    assert_eq!(
        init["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(pod["spec"]["containers"].as_array().map(Vec::len), Some(1));

    // The identity: the proxy reads the token and the roots from the one
    // projected volume, and asks the chart's default remora-cp.
    let identity_env = [
        "REMORA_IDENTITY_TOKEN_FILE",
        "REMORA_CA_ADDR",
        "REMORA_CA_SERVER_NAME",
        "REMORA_CA_ROOTS",
    ]
    .map(|name| env(proxy, name));
    assert_eq!(
        identity_env,
        [
            Some("/var/run/secrets/remora.dev/identity/token".to_owned()),
            Some("remora-cp.remora-system.svc:15012".to_owned()),
            Some("remora-cp.remora-system.svc".to_owned()),
            Some("/var/run/secrets/remora.dev/identity/ca-roots.pem".to_owned()),
        ]
    );
    let volume = pod["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "remora-identity"))
        .expect("the identity volume");
    assert_eq!(
        volume["projected"]["sources"][1]["configMap"],
        serde_json::json!({
            "name": "remora-ca-roots",
            "items": [{"key": "roots.pem", "path": "ca-roots.pem"}],
            "optional": false
        })
    );
}

/// Without a CA address the proxy gets no identity flags and no roots,
/// only the token's path.
#[test]
fn plain_pod_without_identity() {
    let settings = Settings {
        identity: None,
        ..Settings::default()
    };
    let (pod, _) = injected_pod(&fixture("plain-pod"), &enabled(), &settings)
        .expect("injects")
        .expect("not skipped");
    let proxy = container(&pod, "initContainers", "remora-proxy");
    assert_eq!(env(proxy, "REMORA_CA_ADDR"), None);
    assert_eq!(env(proxy, "REMORA_CA_ROOTS"), None);
    assert_eq!(
        env(proxy, "REMORA_IDENTITY_TOKEN_FILE").as_deref(),
        Some("/var/run/secrets/remora.dev/identity/token")
    );
    let volume = pod["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "remora-identity"))
        .expect("the identity volume");
    assert_eq!(
        volume["projected"]["sources"].as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn deployment_pod_with_probes() {
    let (pod, _) = check_injection("deployment-probes");
    let app = container(&pod, "containers", "checkout");
    assert_eq!(
        app["livenessProbe"],
        serde_json::json!({
            "httpGet": {"path": "/app-health/checkout/livez", "port": 15020, "scheme": "HTTP"},
            "initialDelaySeconds": 3, "periodSeconds": 10, "timeoutSeconds": 2,
            "failureThreshold": 3, "successThreshold": 1
        })
    );
    assert_eq!(
        app["readinessProbe"]["httpGet"]["path"],
        "/app-health/checkout/readyz"
    );
    assert_eq!(app["readinessProbe"].get("grpc"), None);
    assert_eq!(
        app["startupProbe"]["httpGet"]["path"],
        "/app-health/checkout/startupz"
    );
    let helper = container(&pod, "containers", "cache-warmer");
    assert_eq!(
        helper["livenessProbe"]["exec"]["command"][0], "/bin/warmer",
        "exec stays"
    );
    assert_eq!(
        helper["readinessProbe"],
        serde_json::json!({"httpGet": {"path": "/app-health/cache-warmer/readyz", "port": 15020,
            "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3,
            "successThreshold": 1}),
        "tcpSocket is checked by the proxy"
    );
    let proxy = container(&pod, "initContainers", "remora-proxy");
    let probes: Value =
        serde_json::from_str(&env(proxy, "REMORA_APP_PROBES").expect("set")).expect("JSON");
    assert_eq!(
        probes["/app-health/checkout/livez"]["httpGet"]["port"], 8080,
        "the named port is resolved for the proxy"
    );
    assert_eq!(
        probes["/app-health/checkout/readyz"],
        serde_json::json!({"grpc": {"port": 9090, "service": "shop.Checkout"}, "timeoutSeconds": 1})
    );
    assert_eq!(
        probes["/app-health/cache-warmer/readyz"],
        serde_json::json!({"tcpSocket": {"port": 6060}, "timeoutSeconds": 1})
    );
    let volumes = names(&pod, "volumes");
    assert_eq!(
        volumes,
        [
            "config",
            "remora-proxy-data",
            "remora-identity",
            "remora-xtables-lock"
        ]
    );
    let identity = &pod["spec"]["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(identity["audience"], "remora.dev");
}

#[test]
fn job_pod() {
    let (pod, _) = check_injection("job");
    // A native sidecar does not keep a Job's pod alive after its container ends.
    assert_eq!(
        container(&pod, "initContainers", "remora-proxy")["restartPolicy"],
        "Always"
    );
    assert_eq!(pod["spec"]["containers"].as_array().map(Vec::len), Some(1));
}

#[test]
fn pod_with_every_annotation() {
    let (pod, warnings) = check_injection("every-annotation");
    let init = container(&pod, "initContainers", "remora-init");
    assert_eq!(
        env(init, "REMORA_EXCLUDE_INBOUND_PORTS").as_deref(),
        Some("8081,9102")
    );
    assert_eq!(
        env(init, "REMORA_EXCLUDE_OUTBOUND_PORTS").as_deref(),
        Some("5432")
    );
    assert_eq!(
        env(init, "REMORA_EXCLUDE_OUTBOUND_CIDRS").as_deref(),
        Some("169.254.169.254/32,10.96.0.0/12")
    );
    // Not a native sidecar: the first regular container, holding the app.
    let proxy = &pod["spec"]["containers"][0];
    assert_eq!(proxy["name"], "remora-proxy");
    assert_eq!(proxy.get("restartPolicy"), None);
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        serde_json::json!(["remora-proxy", "wait-ready", "--timeout", "2m"])
    );
    assert_eq!(
        env(proxy, "REMORA_OPAQUE_PORTS").as_deref(),
        Some("5432,6379")
    );
    assert_eq!(env(proxy, "REMORA_DRAIN_DEADLINE").as_deref(), Some("45s"));
    assert_eq!(env(proxy, "RUST_LOG").as_deref(), Some("debug"));
    assert_eq!(
        proxy["resources"],
        serde_json::json!({"requests": {"cpu": "200m", "memory": "128Mi"},
                           "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    let names = names(&pod, "initContainers");
    assert_eq!(names, ["remora-init", "migrate"]);
    assert_eq!(
        warnings,
        ["the pod's init containers run after remora-init and before the proxy starts, so their \
          outbound TCP is captured with no proxy to take it; use a native sidecar \
          (remora.dev/native-sidecar: enabled) or exclude their ports"]
    );
}

#[test]
fn already_injected_pod_gets_no_patch() {
    let path = dir("golden").join("plain-pod.pod.json");
    let injected: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("golden")).expect("JSON");
    assert_eq!(
        inject(&injected, &enabled(), &Settings::default()),
        Ok(Decision::Skip(Skip::AlreadyInjected))
    );
}

#[test]
fn host_network_pod_is_skipped() {
    assert_eq!(
        inject(&fixture("host-network"), &enabled(), &Settings::default()),
        Ok(Decision::Skip(Skip::HostNetwork))
    );
}
