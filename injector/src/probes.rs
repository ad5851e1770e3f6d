//! Probe rewriting: kubelet's HTTP, gRPC and TCP probes of app containers
//! are pointed at the proxy's admin port, so they keep working when the
//! inbound proxy refuses plaintext (STRICT mTLS), and a TCP probe tells
//! whether the app is up rather than whether the capturing proxy accepts.
//!
//! The contract with the proxy (docs/injector.md): a probe of container `C`
//! becomes `GET /app-health/C/livez` (`readyz`, `startupz`) on port 15020, and
//! the proxy's `REMORA_APP_PROBES` environment variable maps each such path
//! to the original check (`httpGet`, `grpc` or `tcpSocket`, the port resolved
//! to a number), which the proxy performs against the app and answers with its
//! result. This module only rewrites; it works on the raw JSON of a probe so
//! nothing kubelet reads (timings, thresholds) is lost, and the original is
//! kept whole in the status annotation for uninjection.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::settings::PROXY_ADMIN_PORT;

/// The probe fields of a container, with the last part of their admin path.
pub const PROBES: &[(&str, &str)] = &[
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The proxy's environment variable that carries the original probes.
pub const ENV_APP_PROBES: &str = "REMORA_APP_PROBES";

/// The `timeoutSeconds` a rewritten probe may have: the proxy bounds its
/// check by it and accepts the same range (proxy/src/admin/probes.rs).
pub const TIMEOUT_SECONDS: std::ops::RangeInclusive<i64> = 1..=3600;

/// A probe that cannot be rewritten because it is broken already.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error(
        "container {container}: {probe} uses port `{port}`, which is not the name of one of the \
         container's ports; name the port in `ports` or use its number"
    )]
    UnknownPortName {
        container: String,
        probe: &'static str,
        port: String,
    },
    #[error("container {container}: {probe} uses port {port}; use 1-65535")]
    PortOutOfRange {
        container: String,
        probe: &'static str,
        port: i64,
    },
    #[error(
        "container {container}: {probe} has timeoutSeconds {value}; the mesh checks probes with \
         timeoutSeconds 1 to 3600"
    )]
    Timeout {
        container: String,
        probe: &'static str,
        value: String,
    },
    #[error("container {container}: {probe}: the {action} port must be a port number or name")]
    BadPort {
        container: String,
        probe: &'static str,
        action: &'static str,
    },
}

/// One rewritten probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrite {
    /// The probe field, e.g. `livenessProbe`.
    pub field: &'static str,
    /// The original probe, whole.
    pub original: Value,
    /// What replaces it.
    pub replacement: Value,
    /// The admin path and the check behind it, for `REMORA_APP_PROBES`.
    pub path: String,
    pub check: Value,
}

/// The admin path a probe of `container` is rewritten to.
pub fn admin_path(container: &str, suffix: &str) -> String {
    format!("/app-health/{container}/{suffix}")
}

/// Rewrites the HTTP, gRPC and TCP probes of one container (its raw JSON).
/// Exec probes stay as they are, and so do HTTP and TCP probes that name
/// another `host`: kubelet sends those elsewhere, not through the proxy.
pub fn rewrite_container(container: &Value) -> Result<Vec<Rewrite>, ProbeError> {
    let name = container.get("name").and_then(Value::as_str).unwrap_or("");
    let mut out = Vec::new();
    for (field, suffix) in PROBES {
        let Some(probe) = container.get(*field).and_then(Value::as_object) else {
            continue;
        };
        let path = admin_path(name, suffix);
        let check = if let Some(http) = probe.get("httpGet").and_then(Value::as_object) {
            if http
                .get("host")
                .and_then(Value::as_str)
                .is_some_and(|h| !h.is_empty())
            {
                continue;
            }
            let port = resolve_port(container, name, field, "httpGet", http.get("port"))?;
            let mut check = Map::new();
            check.insert(
                "path".into(),
                http.get("path").cloned().unwrap_or(json!("/")),
            );
            check.insert("port".into(), json!(port));
            check.insert(
                "scheme".into(),
                http.get("scheme").cloned().unwrap_or(json!("HTTP")),
            );
            if let Some(headers) = http.get("httpHeaders") {
                check.insert("httpHeaders".into(), headers.clone());
            }
            json!({ "httpGet": check })
        } else if let Some(grpc) = probe.get("grpc").and_then(Value::as_object) {
            let port = resolve_port(container, name, field, "grpc", grpc.get("port"))?;
            let mut check = Map::new();
            check.insert("port".into(), json!(port));
            if let Some(service) = grpc.get("service") {
                check.insert("service".into(), service.clone());
            }
            json!({ "grpc": check })
        } else if let Some(tcp) = probe.get("tcpSocket").and_then(Value::as_object) {
            if tcp
                .get("host")
                .and_then(Value::as_str)
                .is_some_and(|h| !h.is_empty())
            {
                continue;
            }
            let port = resolve_port(container, name, field, "tcpSocket", tcp.get("port"))?;
            json!({ "tcpSocket": { "port": port } })
        } else {
            continue;
        };
        let mut check = check;
        // Kubelet's timeout defaults to 1s; the proxy bounds its own check
        // by the same number so it answers before kubelet gives up.
        let timeout = probe.get("timeoutSeconds").cloned().unwrap_or(json!(1));
        if !timeout
            .as_i64()
            .is_some_and(|t| TIMEOUT_SECONDS.contains(&t))
        {
            return Err(ProbeError::Timeout {
                container: name.to_owned(),
                probe: field,
                value: timeout.to_string(),
            });
        }
        if let Some(map) = check.as_object_mut() {
            map.insert("timeoutSeconds".into(), timeout);
        }
        let mut replacement = probe.clone();
        replacement.remove("grpc");
        replacement.remove("tcpSocket");
        replacement.insert(
            "httpGet".into(),
            json!({ "path": path, "port": PROXY_ADMIN_PORT, "scheme": "HTTP" }),
        );
        out.push(Rewrite {
            field,
            original: Value::Object(probe.clone()),
            replacement: Value::Object(replacement),
            path,
            check,
        });
    }
    Ok(out)
}

/// The value of `REMORA_APP_PROBES`: admin path → original check, as JSON
/// with sorted keys.
pub fn app_probes_env(rewrites: &[Rewrite]) -> String {
    let map: BTreeMap<&str, &Value> = rewrites
        .iter()
        .map(|r| (r.path.as_str(), &r.check))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

fn resolve_port(
    container: &Value,
    name: &str,
    probe: &'static str,
    action: &'static str,
    port: Option<&Value>,
) -> Result<u16, ProbeError> {
    let out_of_range = |port: i64| ProbeError::PortOutOfRange {
        container: name.to_owned(),
        probe,
        port,
    };
    match port {
        Some(Value::Number(n)) => {
            let n = n.as_i64().ok_or_else(|| out_of_range(i64::MAX))?;
            u16::try_from(n)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| out_of_range(n))
        }
        Some(Value::String(port_name)) => {
            let found = container
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(port_name.as_str()))
                .and_then(|p| p.get("containerPort"))
                .and_then(Value::as_i64);
            match found {
                Some(n) => u16::try_from(n)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| out_of_range(n)),
                None => Err(ProbeError::UnknownPortName {
                    container: name.to_owned(),
                    probe,
                    port: port_name.clone(),
                }),
            }
        }
        _ => Err(ProbeError::BadPort {
            container: name.to_owned(),
            probe,
            action,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_probe_with_named_port_and_headers() {
        let container = json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": "http",
                            "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                "periodSeconds": 5, "timeoutSeconds": 2
            },
            "readinessProbe": {"grpc": {"port": 9090}},
            "startupProbe": {"tcpSocket": {"port": 8080}}
        });
        let rewrites = rewrite_container(&container).expect("valid");
        assert_eq!(rewrites.len(), 3);
        assert_eq!(
            rewrites[0].replacement,
            json!({"httpGet": {"path": "/app-health/web/livez", "port": 15020, "scheme": "HTTP"},
                   "periodSeconds": 5, "timeoutSeconds": 2})
        );
        assert_eq!(
            rewrites[1].replacement,
            json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020, "scheme": "HTTP"}})
        );
        assert_eq!(
            rewrites[2].replacement,
            json!({"httpGet": {"path": "/app-health/web/startupz", "port": 15020, "scheme": "HTTP"}})
        );
        assert_eq!(
            app_probes_env(&rewrites),
            r#"{"/app-health/web/livez":{"httpGet":{"httpHeaders":[{"name":"X-Probe","value":"1"}],"path":"/healthz","port":8080,"scheme":"HTTP"},"timeoutSeconds":2},"/app-health/web/readyz":{"grpc":{"port":9090},"timeoutSeconds":1},"/app-health/web/startupz":{"tcpSocket":{"port":8080},"timeoutSeconds":1}}"#
        );
    }

    #[test]
    fn probes_to_another_host_stay() {
        let container = json!({"name": "web", "livenessProbe": {
            "httpGet": {"host": "10.0.0.1", "port": 80}},
            "readinessProbe": {"tcpSocket": {"host": "10.0.0.1", "port": 80}},
            "startupProbe": {"exec": {"command": ["true"]}}});
        assert_eq!(rewrite_container(&container), Ok(vec![]));
    }

    #[test]
    fn broken_ports_are_errors() {
        let container = json!({"name": "web", "readinessProbe": {"httpGet": {"port": "admin"}}});
        assert_eq!(
            rewrite_container(&container).unwrap_err().to_string(),
            "container web: readinessProbe uses port `admin`, which is not the name of one of the \
             container's ports; name the port in `ports` or use its number"
        );
        let container = json!({"name": "web", "livenessProbe": {"grpc": {"port": 70000}}});
        assert_eq!(
            rewrite_container(&container).unwrap_err().to_string(),
            "container web: livenessProbe uses port 70000; use 1-65535"
        );
    }
}
