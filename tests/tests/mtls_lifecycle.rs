//! Mesh mTLS over time, under continuous traffic: certificates renewed
//! every few seconds, the control plane away and back, and the trust root
//! rotated in the three documented steps. A user would notice any of these
//! as failed requests; each test asserts there are none, and that the
//! change it is about really happened (serials, bundle fingerprints).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use remora_api::{Authorization, InboundMode, InboundPort, MeshConfig};
use remora_e2e::http_apps::{HttpClient, Req};
use remora_e2e::mesh_config::{
    backend, config_dump, mesh, route, service, wait_version, ConfigFile, VIP, VIP_PORT,
};
use remora_e2e::{
    ControlPlane, Pod, ProxyHandle, TestNet, TokenEntry, CLIENT as A, SERVER as B,
    SERVER_ID as B_ID,
};
use serde_json::Value;

const APP_PORT: u16 = 8080;
/// Short enough that renewals (at half of it) happen within a test.
const LIFETIME: &str = "12s";

struct World {
    net: TestNet,
    cp: ControlPlane,
    a: Pod,
    b: Pod,
    pa: ProxyHandle,
    pb: ProxyHandle,
    _files: Vec<ConfigFile>,
    _app: remora_e2e::http_apps::HttpApp,
}

async fn sidecar(
    cp: &ControlPlane,
    pod: &Pod,
    token: TokenEntry<'_>,
    config: &MeshConfig,
) -> (ProxyHandle, ConfigFile) {
    let file = ConfigFile::new(&format!("life-{}", pod.namespace()));
    file.write(config);
    let identity = cp.proxy_identity_args(pod, token.token);
    let mut args: Vec<&str> = identity.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--cert-lifetime", LIFETIME]);
    args.extend_from_slice(&file.proxy_args());
    let proxy = pod.mesh_with(&[], &args).await;
    wait_version(&proxy, &config.version).await;
    (proxy, file)
}

/// The service at the VIP is `b`'s app, which must prove B's identity.
fn client_config_for(b: &Pod) -> MeshConfig {
    let mut client = mesh("c1");
    let mut web = backend(&[b.addr4(APP_PORT)]);
    web.endpoints[0].identity = Some(B_ID.into());
    client.backends.insert("web".into(), web);
    client.outbound.services.push(service(
        "web.default",
        VIP,
        VIP_PORT,
        vec![route().to("web").build()],
    ));
    client
}

async fn world(test: &str) -> World {
    let net = TestNet::new(test);
    let cp = net.pod("cp").start_control_plane(&[A, B], &[]).await;
    let (a, b) = (net.pod("a"), net.pod("b"));
    let app = b.spawn_http_app(APP_PORT, "b");
    let client = client_config_for(&b);
    let mut server = mesh("s1");
    server.inbound.mode = InboundMode::Strict;
    server.inbound.ports = vec![InboundPort {
        port: APP_PORT,
        name: None,
        protocol: Default::default(),
        mode: None,
        plugins: Default::default(),
        routes: Vec::new(),
    }];
    server.inbound.authorization = Authorization::default();
    let (pa, fa) = sidecar(&cp, &a, A, &client).await;
    let (pb, fb) = sidecar(&cp, &b, B, &server).await;
    World {
        net,
        cp,
        a,
        b,
        pa,
        pb,
        _files: vec![fa, fb],
        _app: app,
    }
}

/// Requests from `a` to the service, 50 a second, a new connection (so a
/// new mTLS handshake between the sidecars... once the pooled one is
/// replaced) every 10 requests, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Traffic {
    fn start(a: &Pod) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let pod = a.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failures) = (0, Vec::new());
            let mut client = HttpClient::new(&pod, std::net::SocketAddr::new(VIP, VIP_PORT));
            let mut i = 0usize;
            while !flag.load(Ordering::SeqCst) {
                if i.is_multiple_of(10) {
                    client = HttpClient::new(&pod, std::net::SocketAddr::new(VIP, VIP_PORT));
                }
                match client.send(&Req::get(&format!("/r/{i}"))).await {
                    Ok(reply) if reply.status == 200 => ok += 1,
                    Ok(reply) => failures.push(format!(
                        "request {i}: {} {}",
                        reply.status,
                        reply.body.trim()
                    )),
                    Err(e) => failures.push(format!("request {i}: {e}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failures)
        });
        Traffic { stop, task }
    }

    /// Stops the traffic: the number of good requests, and the failures.
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the traffic task")
    }
}

async fn identity_of(proxy: &ProxyHandle) -> Value {
    config_dump(proxy).await.raw["identity"].clone()
}

async fn serial(proxy: &ProxyHandle) -> String {
    identity_of(proxy).await["serial"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Polls until `done` holds of `proxy`'s identity summary, for at most `limit`.
async fn wait_identity(
    proxy: &ProxyHandle,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let now = identity_of(proxy).await;
        if done(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {limit:?}: {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificates_renew_under_traffic_and_the_control_plane_can_go_away() {
    let mut w = world("mtls_renew").await;
    let (a0, b0) = (serial(&w.pa).await, serial(&w.pb).await);
    let traffic = Traffic::start(&w.a);
    // Two renewals each (at about 6 s, then 12 s).
    let limit = Duration::from_secs(20);
    let mut seen_a = vec![a0.clone()];
    let mut seen_b = vec![b0.clone()];
    let deadline = tokio::time::Instant::now() + limit;
    while (seen_a.len() < 3 || seen_b.len() < 3) && tokio::time::Instant::now() < deadline {
        for (proxy, seen) in [(&w.pa, &mut seen_a), (&w.pb, &mut seen_b)] {
            let now = serial(proxy).await;
            if !now.is_empty() && seen.last() != Some(&now) {
                seen.push(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen_a.len(), 3, "A's serials: {seen_a:?}");
    assert_eq!(seen_b.len(), 3, "B's serials: {seen_b:?}");

    // A second client, certified now, that has not called B yet.
    let d = w.net.pod("d");
    let (pd, _fd) = sidecar(&w.cp, &d, A, &client_config_for(&w.b)).await;

    // The control plane goes away: traffic goes on on the certificates
    // held, and a brand-new mTLS connection (D's first) is made.
    w.cp.stop();
    let before = w.pb.metrics().await;
    let mut client = HttpClient::new(&d, std::net::SocketAddr::new(VIP, VIP_PORT));
    for i in 0..3 {
        let reply = client
            .get(&format!("/d/{i}"))
            .await
            .expect("D's request with the CA away");
        assert_eq!(reply.status, 200, "D's request {i}: {}", reply.body);
    }
    let after = w.pb.metrics().await;
    let ok = [("direction", "inbound"), ("result", "ok")];
    assert_eq!(
        after.since(&before, "remora_tls_handshakes_total", &ok),
        1.0,
        "D's one new mTLS connection, made with the CA away\n{after}"
    );
    // And comes back: renewal resumes.
    w.cp.start().await;
    let back = serial(&w.pa).await;
    wait_identity(
        &w.pa,
        Duration::from_secs(15),
        "A renews once the CA is back",
        |id| id["serial"].as_str().is_some_and(|s| s != back),
    )
    .await;
    let (ok, failures) = traffic.finish().await;
    assert_eq!(
        failures,
        Vec::<String>::new(),
        "no request failed ({ok} succeeded)"
    );
    drop(pd);
    drop(w.net);
}

#[tokio::test]
async fn the_trust_root_rotates_in_three_steps_with_no_failed_request() {
    let mut w = world("mtls_rotate").await;
    let old_dir = w.cp.state_dir().to_owned();
    let old_cert = old_dir.join("root-cert.pem").display().to_string();
    let new_dir = w.cp.scratch("next-root");
    let out = std::process::Command::new(remora_e2e::bin_dir().join("remora-cp"))
        .args(["root", "generate", "--out-dir"])
        .arg(&new_dir)
        .output()
        .expect("remora-cp root generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_cert = new_dir.join("root-cert.pem").display().to_string();
    let new_key = new_dir.join("root-key.pem").display().to_string();
    let before = identity_of(&w.pa).await["trustBundle"].clone();
    assert_eq!(before.as_array().map(Vec::len), Some(1), "{before}");
    let old_fingerprint = before[0].clone();
    let traffic = Traffic::start(&w.a);
    let renewals = Duration::from_secs(20);

    // 1. The new root joins the bundle; the old one still signs.
    w.cp.restart_with(&["--extra-trust-root", &new_cert]).await;
    for proxy in [&w.pa, &w.pb] {
        wait_identity(proxy, renewals, "the two-root bundle", |id| {
            id["trustBundle"].as_array().is_some_and(|b| b.len() == 2)
        })
        .await;
    }
    // 2. The new root signs; the old one stays trusted while leaves move.
    w.cp.restart_with(&[
        "--root-cert",
        &new_cert,
        "--root-key",
        &new_key,
        "--extra-trust-root",
        &old_cert,
    ])
    .await;
    for proxy in [&w.pa, &w.pb] {
        let first = serial(proxy).await;
        wait_identity(proxy, renewals, "a leaf from the new root", |id| {
            id["serial"].as_str().is_some_and(|s| s != first)
        })
        .await;
    }
    // 3. The old root leaves the bundle.
    w.cp.restart_with(&["--root-cert", &new_cert, "--root-key", &new_key])
        .await;
    let mut after = Vec::new();
    for proxy in [&w.pa, &w.pb] {
        after.push(
            wait_identity(proxy, renewals, "the one-root bundle", |id| {
                id["trustBundle"].as_array().is_some_and(|b| b.len() == 1)
            })
            .await,
        );
    }
    // A request after the last step, on a fresh connection from a fresh
    // handshake, works too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failures) = traffic.finish().await;
    assert_eq!(
        failures,
        Vec::<String>::new(),
        "no request failed ({ok} succeeded)"
    );
    for id in &after {
        assert_ne!(
            id["trustBundle"][0], old_fingerprint,
            "the old root is gone: {id}"
        );
    }
    let _ = (&w.b, &w.net);
}
