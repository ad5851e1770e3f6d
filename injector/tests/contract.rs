//! The environment the injector writes parses with the real flag definitions
//! of `remora-proxy` and `remora-init` (their clap `Args`), to the values the
//! annotations asked for. A renamed env var or a format the binaries refuse
//! fails here, not in a cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use remora_injector::{injected_pod, Settings};
use serde_json::{json, Value};

/// Variables the proxy reads outside its flags: RUST_LOG through tracing.
const NOT_FLAGS: &[&str] = &["RUST_LOG"];

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1",
            "readinessProbe": {"httpGet": {"path": "/r", "port": 8080}}}]}
    })
}

fn inject(pod: &Value) -> Value {
    let labels = BTreeMap::from([("remora.dev/inject".to_owned(), "enabled".to_owned())]);
    injected_pod(pod, &labels, &Settings::default())
        .expect("injectable")
        .expect("injected")
        .0
}

/// What kubelet makes of an env var: its value, or the pod field its
/// `fieldRef` names (the downward API).
fn resolve(pod: &Value, var: &Value) -> String {
    if let Some(value) = var["value"].as_str() {
        return value.to_owned();
    }
    let field = var["valueFrom"]["fieldRef"]["fieldPath"]
        .as_str()
        .unwrap_or_else(|| panic!("neither value nor fieldRef: {var}"));
    let path = format!("/{}", field.replace('.', "/"));
    pod.pointer(&path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the pod has no {field}"))
        .to_owned()
}

/// Turns a container's env into `--flag=value` arguments of `C`, by the env
/// name each flag declares; an env var that no flag declares is a failure.
fn argv<C: CommandFactory>(program: &str, pod: &Value, container: &Value) -> Vec<String> {
    let command = C::command();
    let mut out = vec![program.to_owned()];
    for var in container["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("name");
        if NOT_FLAGS.contains(&name) {
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name))
            .unwrap_or_else(|| panic!("{program} has no flag read from {name}"));
        let long = arg.get_long().expect("a long flag");
        out.push(format!("--{long}={}", resolve(pod, var)));
    }
    out
}

fn find<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .expect("container")
}

#[test]
fn proxy_and_init_accept_what_the_annotations_become() {
    let injected = inject(&pod(json!({
        "remora.dev/opaque-ports": "6379, 5432",
        "remora.dev/proxy-drain-deadline": "1m 30s",
        "remora.dev/exclude-inbound-ports": "9102,8081",
        "remora.dev/exclude-outbound-ports": "5432",
        "remora.dev/exclude-outbound-cidrs": "10.1.2.3/8, fd00::1",
    })));

    let args = argv::<remora_proxy::config::Args>(
        "remora-proxy",
        &injected,
        find(&injected, "remora-proxy"),
    );
    let parsed = remora_proxy::config::Args::try_parse_from(&args).expect("proxy flags parse");
    let config = remora_proxy::config::Config::from_args(parsed).expect("proxy config valid");
    assert_eq!(
        config.opaque_ports.into_iter().collect::<Vec<_>>(),
        [5432, 6379]
    );
    assert_eq!(config.drain_deadline, Duration::from_secs(90));
    // Discovery: remora-cp's one TLS port, the identity's roots and server
    // name, the pod as the downward API names it.
    let discovery = config.discovery.expect("discovery mode");
    assert_eq!(
        discovery.addrs,
        [("remora-cp.remora-system.svc".to_owned(), 15012)]
    );
    assert_eq!(discovery.server_name, "remora-cp.remora-system.svc");
    assert_eq!(
        discovery.ca_roots,
        std::path::Path::new("/var/run/secrets/remora.dev/identity/ca-roots.pem")
    );
    assert_eq!(
        (
            discovery.pod_name.as_str(),
            discovery.pod_namespace.as_str()
        ),
        ("p", "shop")
    );
    assert_eq!(config.config_path, None);
    // The rewritten readiness probe is one the proxy will answer.
    assert_eq!(config.app_probes.len(), 1);
    assert_eq!(
        config.app_probes.get("/app-health/app/readyz"),
        Some(&remora_proxy::AppProbeCheck {
            action: remora_proxy::AppProbeAction::Http {
                port: 8080,
                path: "/r".to_owned(),
                https: false,
                headers: vec![],
            },
            timeout: Duration::from_secs(1),
        })
    );

    use remora_iptables::config as init;
    let args = argv::<init::Args>("remora-init", &injected, find(&injected, "remora-init"));
    let parsed = init::Args::try_parse_from(&args).expect("init flags parse");
    let config = init::Config::from_args(parsed).expect("init config valid");
    assert_eq!(config.capture.proxy_uid, 1337);
    assert_eq!(config.capture.proxy_gid, 1337);
    assert_eq!(config.capture.exclude_inbound_ports, [8081, 9102]);
    assert_eq!(config.capture.exclude_outbound_ports, [5432]);
    assert_eq!(
        config
            .capture
            .exclude_outbound_cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.0.0.0/8", "fd00::1/128"]
    );
}

/// Both ends of the drain-deadline range the injector accepts are accepted
/// by the proxy too.
#[test]
fn drain_deadline_range_matches_the_proxy() {
    for (value, expected) in [("0s", 0), ("1h", 3600)] {
        let injected = inject(&pod(json!({ "remora.dev/proxy-drain-deadline": value })));
        let args = argv::<remora_proxy::config::Args>(
            "remora-proxy",
            &injected,
            find(&injected, "remora-proxy"),
        );
        let parsed = remora_proxy::config::Args::try_parse_from(&args).expect("parse");
        let config = remora_proxy::config::Config::from_args(parsed).expect("valid");
        assert_eq!(
            config.drain_deadline,
            Duration::from_secs(expected),
            "{value}"
        );
    }
}

/// The proxy refuses an empty `--opaque-ports`, so the injector refuses the
/// empty annotation instead of injecting a proxy that cannot start.
#[test]
fn empty_opaque_ports_are_refused_as_the_proxy_would() {
    assert!(
        remora_proxy::config::Args::try_parse_from(["remora-proxy", "--opaque-ports="]).is_err()
    );
    let labels = BTreeMap::from([("remora.dev/inject".to_owned(), "enabled".to_owned())]);
    let err = injected_pod(
        &pod(json!({ "remora.dev/opaque-ports": "" })),
        &labels,
        &Settings::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "annotation remora.dev/opaque-ports: ``: name at least one port; to keep the proxy's defaults, remove the annotation"
    );
}

/// Every probe kind the injector rewrites, at both ends of the timeout
/// range, is one the proxy accepts and answers at the same path.
#[test]
fn rewritten_probes_are_ones_the_proxy_answers() {
    let mut p = pod(json!({}));
    p["spec"]["containers"][0]["livenessProbe"] =
        json!({"tcpSocket": {"port": 8080}, "timeoutSeconds": 3600});
    p["spec"]["containers"][0]["startupProbe"] =
        json!({"grpc": {"port": 9090, "service": "s"}, "timeoutSeconds": 1});
    let injected = inject(&p);
    let app_probes = env_value(find(&injected, "remora-proxy"), "REMORA_APP_PROBES");
    let probes = remora_proxy::AppProbes::parse(&app_probes).expect("the proxy accepts them");
    use remora_proxy::{AppProbeAction as Action, AppProbeCheck as Check};
    let expect = [
        ("livez", Action::Tcp { port: 8080 }, 3600),
        (
            "readyz",
            Action::Http {
                port: 8080,
                path: "/r".into(),
                https: false,
                headers: vec![],
            },
            1,
        ),
        (
            "startupz",
            Action::Grpc {
                port: 9090,
                service: "s".into(),
            },
            1,
        ),
    ];
    assert_eq!(probes.len(), expect.len());
    for (kind, action, seconds) in expect {
        let path = format!("/app-health/app/{kind}");
        assert_eq!(
            probes.get(&path),
            Some(&Check {
                action,
                timeout: Duration::from_secs(seconds)
            }),
            "{path}"
        );
    }
    assert!(remora_proxy::AppProbes::parse(
        r#"{"/app-health/app/livez":{"tcpSocket":{"port":1},"timeoutSeconds":3601}}"#
    )
    .is_err());
}

fn env_value(container: &Value, name: &str) -> String {
    container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no {name}"))
        .to_owned()
}

/// Without an identity there is nothing for discovery to trust, so no
/// discovery env is injected even when an address is set; with discovery
/// off the proxy still starts (standalone, passing traffic through).
#[test]
fn discovery_is_injected_only_with_an_identity() {
    let labels = BTreeMap::from([("remora.dev/inject".to_owned(), "enabled".to_owned())]);
    let names = |settings: &Settings| -> Vec<String> {
        let injected = injected_pod(&pod(json!({})), &labels, settings)
            .expect("injectable")
            .expect("injected")
            .0;
        let proxy = find(&injected, "remora-proxy");
        let args = argv::<remora_proxy::config::Args>("remora-proxy", &injected, proxy);
        let parsed = remora_proxy::config::Args::try_parse_from(&args).expect("parse");
        let config = remora_proxy::config::Config::from_args(parsed).expect("valid");
        assert_eq!(config.discovery, None);
        proxy["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|v| v["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let no_identity = Settings {
        identity: None,
        ..Settings::default()
    };
    assert_eq!(
        names(&no_identity),
        [
            "RUST_LOG",
            "REMORA_IDENTITY_TOKEN_FILE",
            "REMORA_APP_PROBES"
        ]
    );
    let no_discovery = Settings {
        discovery_addrs: None,
        ..Settings::default()
    };
    assert_eq!(
        names(&no_discovery),
        [
            "RUST_LOG",
            "REMORA_IDENTITY_TOKEN_FILE",
            "REMORA_CA_ADDR",
            "REMORA_CA_SERVER_NAME",
            "REMORA_CA_ROOTS",
            "REMORA_APP_PROBES"
        ]
    );
}
