//! A mesh for the discovery tests: a real remora-cp in file mode
//! (`--source-dir`, a directory of Kubernetes YAML) in a pod, three HTTP apps
//! behind two Services (`web`: a and b; `web-v2`: v2) and a meshed client
//! whose sidecar uses `--discovery-addr`; with the helpers that count
//! answers and follow discovery versions. Used by tests/tests/discovery.rs
//! and tests/tests/admin_api.rs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::http_apps::{eventually, HttpApp, Outcome};
use crate::{ControlPlane, Metrics, Pod, ProxyHandle, TestNet, CLIENT};

pub const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const V2_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
pub const APP_PORT: u16 = 8081;
/// How long a change in the source directory may take to reach a proxy
/// (debounce, coalescing, push): generous, never asserted as a latency.
pub const PROPAGATION: Duration = Duration::from_secs(10);
/// remora-cp's admin port in its pod.
pub const CP_ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 15014);

/// `web`'s VIP and port.
pub fn web() -> SocketAddr {
    SocketAddr::from((WEB_VIP, 80))
}

/// The directory remora-cp reads; files are replaced atomically.
#[derive(Debug)]
pub struct SourceDir(pub PathBuf);

impl SourceDir {
    pub fn new(test: &str) -> SourceDir {
        let dir = std::env::temp_dir().join(format!(
            "remora-e2e-discovery-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the source directory");
        SourceDir(dir)
    }

    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }

    pub fn write(&self, name: &str, yaml: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write a source file");
        std::fs::rename(&tmp, self.0.join(format!("{name}.yaml")))
            .expect("rename a source file into place");
    }
}

impl Drop for SourceDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Service `web` (VIP 10.96.0.10:80, round robin) with `endpoints`, and
/// service `web-v2` (10.96.0.11:80) with `v2`.
pub fn services(endpoints: &[Ipv4Addr], v2: Ipv4Addr) -> String {
    let list = endpoints
        .iter()
        .map(|ip| format!("  - addresses: [{ip}]\n"))
        .collect::<String>();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIPs: [{WEB_VIP}]
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {APP_PORT}}}]
endpoints:
{list}---
apiVersion: v1
kind: Service
metadata: {{name: web-v2, namespace: default}}
spec:
  clusterIPs: [{V2_VIP}]
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-v2-1, namespace: default, labels: {{kubernetes.io/service-name: web-v2}}}}
addressType: IPv4
ports: [{{name: http, port: {APP_PORT}}}]
endpoints:
  - addresses: [{v2}]
---
apiVersion: remora.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: web, namespace: default}}
spec:
  targetRefs: [{{kind: Service, name: web}}]
  loadBalancer: roundRobin
"#
    )
}

/// Requests flagged `x-canary: 1` go to web-v2, the rest to web.
pub const CANARY_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: default, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
    - matches: [{headers: [{name: x-canary, value: "1"}]}]
      backendRefs: [{name: web-v2, port: 80}]
    - backendRefs: [{name: web, port: 80}]
"#;

/// Pods: remora-cp's, three apps (a, b, v2), and a meshed client.
#[derive(Debug)]
pub struct Mesh {
    pub net: TestNet,
    pub cp_pod: Pod,
    pub dir: SourceDir,
    pub apps: Vec<HttpApp>,
    pub ips: Vec<Ipv4Addr>,
    pub client: Pod,
}

impl Mesh {
    pub async fn new(test: &str) -> Mesh {
        let net = TestNet::new(test);
        let cp_pod = net.pod("cp");
        let client = net.pod("client");
        let mut apps = Vec::new();
        let mut ips = Vec::new();
        for name in ["a", "b", "v2"] {
            let pod = net.pod(&format!("srv{name}"));
            apps.push(pod.spawn_http_app(APP_PORT, name));
            ips.push(pod.ip4());
        }
        let dir = SourceDir::new(test);
        let mesh = Mesh {
            net,
            cp_pod,
            dir,
            apps,
            ips,
            client,
        };
        mesh.dir
            .write("services", &services(&mesh.ips[..2], mesh.ips[2]));
        mesh
    }

    pub async fn start_cp(&self, pod: &Pod) -> ControlPlane {
        self.start_cp_with(pod, &[]).await
    }

    /// remora-cp on the source directory, with `extra` flags.
    pub async fn start_cp_with(&self, pod: &Pod, extra: &[&str]) -> ControlPlane {
        let dir = self.dir.arg();
        let mut flags = vec!["--source-dir", &dir];
        flags.extend_from_slice(extra);
        pod.start_control_plane(&[CLIENT], &flags).await
    }

    /// The client's sidecar, in discovery mode against `addrs`.
    pub async fn mesh_client(&self, addrs: &str, roots: &std::path::Path) -> ProxyHandle {
        let roots = roots.display().to_string();
        self.client
            .mesh_with(&[], &discovery_args(addrs, &roots, "client").strs())
            .await
    }

    /// What each app received so far, by name.
    pub fn received(&self) -> BTreeMap<String, usize> {
        self.apps
            .iter()
            .map(|a| (a.name().to_owned(), a.received()))
            .collect()
    }
}

/// The flags of a sidecar in discovery mode.
pub fn discovery_args(addrs: &str, roots: &str, pod: &str) -> Vec<String> {
    [
        "--discovery-addr",
        addrs,
        "--ca-roots",
        roots,
        "--pod-name",
        pod,
        "--pod-namespace",
        "default",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `&str` views of owned flags.
pub trait Args {
    fn strs(&self) -> Vec<&str>;
}

impl Args for Vec<String> {
    fn strs(&self) -> Vec<&str> {
        self.iter().map(String::as_str).collect()
    }
}

/// Counts answers by app, failing on any error or non-200.
pub fn tally(results: Vec<Outcome>) -> BTreeMap<String, usize> {
    let mut by_app = BTreeMap::new();
    for (i, result) in results {
        let reply = result.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(reply.status, 200, "request {i}: {:?}", reply.remora_error());
        *by_app.entry(reply.body).or_insert(0) += 1;
    }
    by_app
}

/// Expected answers by app.
pub fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The proxy's `/config_dump`.
pub async fn dump(proxy: &ProxyHandle) -> Value {
    let r = proxy.get("/config_dump").await.expect("GET /config_dump");
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).expect("config_dump is JSON")
}

/// The version of the last push applied for `subscription`.
pub async fn version(proxy: &ProxyHandle, subscription: &str) -> u64 {
    dump(proxy).await["discovery"]["versions"][subscription]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until `subscription` has been pushed a version past `after`.
pub async fn pushed_after(proxy: &ProxyHandle, subscription: &str, after: u64) {
    eventually(
        PROPAGATION,
        &format!("a push of {subscription} after version {after}"),
        || async {
            let now = version(proxy, subscription).await;
            if now > after {
                Ok(())
            } else {
                Err(format!("version {now}"))
            }
        },
    )
    .await
}

/// remora-cp's metrics, scraped inside its pod.
pub async fn cp_metrics(pod: &Pod) -> Metrics {
    let r = pod
        .http("GET", CP_ADMIN, "/metrics")
        .await
        .expect("GET remora-cp /metrics");
    Metrics::parse(&r.body)
}

/// The client's subscription to `web`'s VIP.
pub const WEB_SUB: &str = "address 10.96.0.10:80";
