//! One real sidecar's memory against the size of the mesh (bench/README.md,
//! "cp-scale"): remora-cp in file mode serving a mesh of `N` Services (10
//! endpoints each), and a meshed client pod whose proxy is in discovery
//! mode and talks to 10 of them. On demand, the proxy subscribes to the 10
//! it uses, so its RSS should not depend on `N`.
//!
//! Run as root after a release build (`cargo build --release --bins`):
//! `REMORA_BIN_DIR=target/release cargo run --release -p remora-e2e --example proxy_mesh_rss`

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use remora_e2e::http_apps::{send_many, Req};
use remora_e2e::{TestNet, CLIENT};

const APP_PORT: u16 = 8081;
/// Destinations the client talks to.
const USED: usize = 10;

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i >> 8) as u8, (i & 255) as u8)
}

/// `services` Services; the first `USED` have the app as their endpoint,
/// the rest 10 addresses each that nothing is sent to.
fn mesh_yaml(services: std::ops::Range<usize>, app: Ipv4Addr) -> String {
    let mut y = String::new();
    for i in services {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\n\
             spec: {{clusterIPs: [{}], ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc-{i}-1, namespace: default, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {APP_PORT}}}]\nendpoints:\n",
            vip(i)
        );
        if i < USED {
            let _ = writeln!(y, "  - addresses: [{app}]");
        } else {
            for k in 0..10 {
                let e = i * 10 + k;
                let _ = writeln!(
                    y,
                    "  - addresses: [10.{}.{}.{}]",
                    128 + (e >> 16),
                    (e >> 8) & 255,
                    e & 255
                );
            }
        }
        y.push_str("---\n");
    }
    y
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (RSS before traffic, RSS after talking to `USED` destinations), KiB.
async fn measure(services: usize) -> (u64, u64) {
    let net = TestNet::new(&format!("rss{services}"));
    let cp_pod = net.pod("cp");
    let server = net.pod("srv");
    let client = net.pod("client");
    let _app = server.spawn_http_app(APP_PORT, "app");
    let dir = std::env::temp_dir().join(format!("remora-rss-{services}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the source directory");
    // Files of at most 500 Services: under the file source's 4 MiB a file.
    for (n, start) in (0..services).step_by(500).enumerate() {
        let end = (start + 500).min(services);
        std::fs::write(
            dir.join(format!("mesh-{n:03}.yaml")),
            mesh_yaml(start..end, server.ip4()),
        )
        .expect("write the mesh");
    }
    let cp = cp_pod
        .start_control_plane(&[CLIENT], &["--source-dir", &dir.display().to_string()])
        .await;
    let roots = cp.roots_path().display().to_string();
    let addr = cp.ca_addr();
    let proxy = client
        .mesh_with(
            &[],
            &[
                "--discovery-addr",
                &addr,
                "--ca-roots",
                &roots,
                "--pod-name",
                "client",
                "--pod-namespace",
                "default",
            ],
        )
        .await;
    let pid = proxy.pid().expect("the proxy runs");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    for i in 0..USED {
        let results = send_many(&client, SocketAddr::from((vip(i), 80)), 20, 2, |_| {
            Req::get("/")
        })
        .await;
        for (n, r) in results {
            let status = r.map(|r| r.status).unwrap_or(0);
            assert_eq!(status, 200, "svc-{i} request {n}");
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let dump = proxy.get("/config_dump").await.expect("config dump");
    let services_held = serde_json::from_str::<serde_json::Value>(&dump.body)
        .ok()
        .and_then(|d| d["counts"]["services"].as_u64())
        .unwrap_or(0);
    assert_eq!(services_held, USED as u64, "the proxy holds what it used");
    let _ = std::fs::remove_dir_all(&dir);
    (before, after)
}

#[tokio::main]
async fn main() {
    let small = measure(10).await;
    let large = measure(10_000).await;
    println!("| mesh size | proxy RSS before traffic | after 10 destinations |");
    println!("|---|---|---|");
    for (n, (b, a)) in [(10, small), (10_000, large)] {
        println!(
            "| {n} Services | {:.1} MiB | {:.1} MiB |",
            b as f64 / 1024.0,
            a as f64 / 1024.0
        );
    }
    println!(
        "\nRSS ratio, 10,000 vs 10 Services, after traffic: {:.3}x",
        large.1 as f64 / small.1.max(1) as f64
    );
}
