//! Workload identity end to end: a real `remora-cp` (standalone, a token
//! file) in one pod, a real proxy (uid 1337) in another, over real TLS.
//! The proxy is ready only once it holds a certificate, shows it in
//! `/config_dump`, renews it at half its lifetime, keeps it while the CA is
//! away and renews again when the CA is back, drops it when it expires
//! unrenewed, and says so in `/ready` and `/metrics`, as it does when the
//! CA refuses its token.

use std::time::{Duration, SystemTime};

use remora_e2e::http_apps::eventually;
use remora_e2e::{write_readable, ControlPlane, Metrics, Pod, ProxyHandle, TestNet, TokenEntry};
use serde_json::Value;
use sha2::{Digest, Sha256};

const WEB: TokenEntry<'static> = TokenEntry {
    token: "token-web",
    namespace: "default",
    service_account: "web",
};
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const EXPIRY: &str = "remora_identity_cert_expiry_seconds";
const RENEWALS: &str = "remora_identity_renewals_total";
const REACHABLE: &str = "remora_identity_ca_reachable";

/// A CA pod and an app pod on one node.
struct Mesh {
    _net: TestNet,
    cp: ControlPlane,
    app: Pod,
}

async fn mesh(test: &str) -> Mesh {
    let net = TestNet::new(test);
    let cp_pod = net.pod("cp");
    let app = net.pod("app");
    let cp = cp_pod.start_control_plane(&[WEB], &[]).await;
    Mesh { _net: net, cp, app }
}

impl Mesh {
    /// Starts the app pod's proxy with `token`; waits for its admin port,
    /// not for /ready.
    async fn proxy(&self, token: &str, extra: &[&str]) -> ProxyHandle {
        let token_path = self.cp.scratch("proxy-token");
        write_readable(&token_path, token);
        let (addr, roots) = (self.cp.ca_addr(), self.cp.roots_path());
        let (roots, token_path) = (
            roots.display().to_string(),
            token_path.display().to_string(),
        );
        let mut args = vec![
            "--ca-addr",
            &addr,
            "--ca-roots",
            &roots,
            "--identity-token-file",
            &token_path,
        ];
        args.extend_from_slice(extra);
        let proxy = self.app.spawn_proxy(&args);
        eventually(Duration::from_secs(10), "the admin port", || async {
            proxy
                .get("/live")
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await;
        proxy
    }
}

/// A CA, and a ready proxy asking for `lifetime` certificates.
async fn ready_mesh(test: &str, lifetime: &str) -> (Mesh, ProxyHandle) {
    let mesh = mesh(test).await;
    let proxy = mesh
        .proxy("token-web", &["--cert-lifetime", lifetime])
        .await;
    wait_ready(&proxy, 200, Duration::from_secs(10)).await;
    (mesh, proxy)
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn ready(proxy: &ProxyHandle) -> (u16, String) {
    let r = proxy.get("/ready").await.expect("GET /ready");
    (r.status, r.body)
}

/// `/ready` until it answers `status`, for at most `limit`.
async fn wait_ready(proxy: &ProxyHandle, status: u16, limit: Duration) -> String {
    eventually(limit, &format!("/ready {status}"), || async {
        match ready(proxy).await {
            (now, body) if now == status => Ok(body),
            (now, body) => Err(format!("{now} {body}")),
        }
    })
    .await
}

/// The `identity` part of the `/config_dump` summary.
async fn dumped(proxy: &ProxyHandle) -> Value {
    let r = proxy.get("/config_dump").await.expect("GET /config_dump");
    assert_eq!(r.status, 200, "{}", r.body);
    let summary: Value = serde_json::from_str(&r.body).expect("JSON");
    summary["identity"].clone()
}

fn serial(identity: &Value) -> String {
    identity["serial"].as_str().unwrap_or_default().to_owned()
}

/// The serial once it differs from `old`, with the metrics at that moment.
async fn next_serial(proxy: &ProxyHandle, old: &str, limit: Duration) -> (Value, Metrics) {
    eventually(limit, "a renewed certificate", || async {
        let identity = dumped(proxy).await;
        match serial(&identity) {
            new if !new.is_empty() && new != old => Ok((identity, proxy.metrics().await)),
            same => Err(format!("serial {same:?}")),
        }
    })
    .await
}

fn fingerprint(pem_text: &str) -> String {
    let der = pem::parse(pem_text).unwrap().into_contents();
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_proxy_is_ready_only_once_it_holds_its_certificate() {
    let net = TestNet::new("id_ready");
    let (cp_pod, app) = (net.pod("cp"), net.pod("app"));
    // The CA is not up yet: the proxy starts, and is not ready.
    let mut cp = cp_pod.start_control_plane(&[WEB], &[]).await;
    cp.stop();
    let mesh = Mesh { _net: net, cp, app };
    let proxy = mesh.proxy("token-web\n", &[]).await;
    let body = wait_ready(&proxy, 503, Duration::from_secs(10)).await;
    let unreachable = format!(
        "not ready: identity: no valid certificate: the CA at {} is unreachable: ",
        mesh.cp.ca_addr()
    );
    assert!(body.starts_with(&unreachable), "{body}");
    let metrics = proxy.metrics().await;
    assert_eq!(metrics.get(REACHABLE, &[]), 0.0);
    assert_eq!(metrics.get(RENEWALS, &[("result", "ok")]), 0.0);
    assert_eq!(metrics.get(EXPIRY, &[]), 0.0);

    // The CA comes up: within the back-off (at most 30 s), a certificate.
    let mut cp = mesh.cp;
    cp.start().await;
    let body = wait_ready(&proxy, 200, Duration::from_secs(35)).await;
    assert_eq!(body, "ready\n");
    let identity = dumped(&proxy).await;
    assert_eq!(identity["identity"], WEB_ID);
    assert_eq!(identity["trustDomain"], "cluster.local");
    assert_eq!(
        identity["trustBundle"],
        serde_json::json!([fingerprint(&cp.root_pem())])
    );
    assert_eq!(identity["caError"], Value::Null);
    let serial = serial(&identity);
    assert!(
        serial.len() >= 30 && serial.chars().all(|c| c.is_ascii_hexdigit()),
        "{serial}"
    );
    assert!(
        !identity.to_string().contains("PRIVATE"),
        "never the key: {identity}"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(metrics.get(RENEWALS, &[("result", "ok")]), 1.0);
    assert_eq!(metrics.get(REACHABLE, &[]), 1.0);
    // The CA's default lifetime, 24 h, from about now.
    let left = metrics.get(EXPIRY, &[]) - now_unix();
    assert!((86_400.0 - 30.0..=86_400.0).contains(&left), "{left}");
}

#[tokio::test]
async fn the_certificate_is_renewed_at_half_its_lifetime() {
    let (_mesh, proxy) = ready_mesh("id_renew", "10s").await;
    let first = dumped(&proxy).await;
    let e1 = proxy.metrics().await.get(EXPIRY, &[]);
    // Renewed between 4.5 s and 5.5 s after each issue; each new leaf
    // lives 10 s from its issue, so notAfter moves by that same 4.5-5.5 s
    // (±1 s for whole seconds and the round trip).
    let (second, m2) = next_serial(&proxy, &serial(&first), Duration::from_secs(8)).await;
    assert_eq!(m2.get(RENEWALS, &[("result", "ok")]), 2.0);
    assert_eq!(second["identity"], WEB_ID);
    let e2 = m2.get(EXPIRY, &[]);
    assert!(
        (3.0..=7.0).contains(&(e2 - e1)),
        "notAfter moved {}s",
        e2 - e1
    );
    let (third, m3) = next_serial(&proxy, &serial(&second), Duration::from_secs(8)).await;
    assert_eq!(m3.get(RENEWALS, &[("result", "ok")]), 3.0);
    assert_ne!(serial(&third), serial(&first));
    let e3 = m3.get(EXPIRY, &[]);
    assert!(
        (3.0..=7.0).contains(&(e3 - e2)),
        "notAfter moved {}s",
        e3 - e2
    );
    assert_eq!(m3.get(RENEWALS, &[("result", "error")]), 0.0);
    assert_eq!(ready(&proxy).await, (200, "ready\n".to_owned()));
}

#[tokio::test]
async fn with_the_ca_away_the_certificate_is_kept_and_renewal_resumes_when_it_is_back() {
    let (mut mesh, proxy) = ready_mesh("id_ca_away", "30s").await;
    let first = dumped(&proxy).await;
    let expiry = proxy.metrics().await.get(EXPIRY, &[]);

    // The renewal (13.5 s to 16.5 s in) finds no CA.
    mesh.cp.stop();
    let away = eventually(Duration::from_secs(20), "the CA unreachable", || async {
        let metrics = proxy.metrics().await;
        match metrics.get(REACHABLE, &[]) {
            0.0 => Ok(metrics),
            other => Err(format!("{REACHABLE} {other}")),
        }
    })
    .await;
    assert_eq!(away.get(RENEWALS, &[("result", "ok")]), 1.0);
    assert!(away.get(RENEWALS, &[("result", "error")]) >= 1.0);
    assert_eq!(away.get(EXPIRY, &[]), expiry, "the same certificate");
    let (status, body) = ready(&proxy).await;
    assert_eq!(status, 200, "still ready on a valid certificate: {body}");
    let note = format!(
        "ready\nidentity: the CA at {} is unreachable: ",
        mesh.cp.ca_addr()
    );
    assert!(body.starts_with(&note), "{body}");
    assert!(
        body.contains("; serving with the current certificate until "),
        "{body}"
    );
    let during = dumped(&proxy).await;
    assert_eq!(
        serial(&during),
        serial(&first),
        "still the same certificate"
    );
    assert_eq!(during["identity"], WEB_ID);
    assert!(
        during["caError"]
            .as_str()
            .unwrap()
            .contains("is unreachable"),
        "{during}"
    );

    // Back (same root): the next retry (at most 4.4 s after the last
    // failure) renews, long before the 30 s notAfter.
    mesh.cp.start().await;
    let (renewed, metrics) = next_serial(&proxy, &serial(&first), Duration::from_secs(10)).await;
    assert_eq!(metrics.get(RENEWALS, &[("result", "ok")]), 2.0);
    assert_eq!(metrics.get(REACHABLE, &[]), 1.0);
    assert!(metrics.get(EXPIRY, &[]) > expiry);
    assert_eq!(renewed["caError"], Value::Null);
    assert_eq!(ready(&proxy).await, (200, "ready\n".to_owned()));
}

#[tokio::test]
async fn a_certificate_that_expires_unrenewed_is_dropped() {
    let (mut mesh, proxy) = ready_mesh("id_expire", "10s").await;
    mesh.cp.stop();
    // Renewal fails from about 5 s; at notAfter (10 s) it is gone.
    let body = wait_ready(&proxy, 503, Duration::from_secs(13)).await;
    assert!(
        body.starts_with("not ready: identity: no valid certificate: the CA at "),
        "{body}"
    );
    let identity = dumped(&proxy).await;
    assert_eq!(identity["identity"], Value::Null, "{identity}");
    assert_eq!(identity["serial"], Value::Null, "{identity}");
    let metrics = proxy.metrics().await;
    assert_eq!(metrics.get(EXPIRY, &[]), 0.0);
    assert_eq!(metrics.get(REACHABLE, &[]), 0.0);
}

#[tokio::test]
async fn an_unknown_token_is_refused_and_the_proxy_is_not_ready_until_it_has_a_good_one() {
    let mesh = mesh("id_bad_token").await;
    let proxy = mesh.proxy("token-nobody-issued", &[]).await;
    let refused = "not ready: identity: no valid certificate: the CA refused the request \
                   (Unauthenticated): the token is not known to remora-cp; check the token file \
                   (or, in Kubernetes, that the token is valid and unexpired)\n";
    let metrics = proxy
        .wait_metrics("a refusal", |m| {
            m.get(RENEWALS, &[("result", "error")]) >= 1.0
        })
        .await;
    assert_eq!(ready(&proxy).await, (503, refused.to_owned()));
    assert_eq!(metrics.get(RENEWALS, &[("result", "ok")]), 0.0);
    assert_eq!(metrics.get(REACHABLE, &[]), 1.0, "the CA answered");
    let identity = dumped(&proxy).await;
    assert_eq!(identity["identity"], Value::Null);
    assert_eq!(
        identity["caError"],
        refused["not ready: identity: no valid certificate: ".len()..].trim_end()
    );

    // kubelet rotates the token in place: the next retry uses it.
    write_readable(&mesh.cp.scratch("proxy-token"), "token-web");
    wait_ready(&proxy, 200, Duration::from_secs(35)).await;
    assert_eq!(dumped(&proxy).await["identity"], WEB_ID);
}

#[tokio::test]
async fn without_ca_addr_nothing_changes() {
    let net = TestNet::new("id_none");
    let app = net.pod("app");
    let proxy = app.start_proxy(&[]).await;
    assert_eq!(ready(&proxy).await, (200, "ready\n".to_owned()));
    let r = proxy.get("/config_dump").await.unwrap();
    let summary: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(summary.get("identity"), None);
    assert!(!proxy
        .metrics()
        .await
        .to_string()
        .contains("remora_identity_"));
}

#[tokio::test]
async fn a_ca_that_cannot_prove_its_name_gets_no_token() {
    let mesh = mesh("id_bad_name").await;
    // remora-cp's serving certificate names remora-cp.remora-system.svc
    // and friends, not this: the handshake fails before the token is sent.
    let proxy = mesh
        .proxy("token-web", &["--ca-server-name", "impostor.example"])
        .await;
    let body = eventually(Duration::from_secs(10), "a failed handshake", || async {
        match ready(&proxy).await {
            (status, body) if body.contains("is unreachable") => Ok((status, body)),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert_eq!(body.0, 503);
    assert!(
        body.1
            .contains("invalid peer certificate: certificate not valid for name"),
        "{}",
        body.1
    );
    let metrics = proxy.metrics().await;
    assert_eq!(metrics.get(REACHABLE, &[]), 0.0);
    assert_eq!(metrics.get(RENEWALS, &[("result", "ok")]), 0.0);
    assert!(
        !mesh
            .cp
            .log()
            .contains("certificate issued identity=spiffe://cluster.local/ns/default"),
        "nothing was signed"
    );
}

#[tokio::test]
async fn bad_identity_flags_stop_the_start() {
    let net = TestNet::new("id_flags");
    let app = net.pod("app");
    let missing = ["--ca-roots", "/nonexistent/roots.pem"];
    for (extra, code, says) in [
        (
            &[][..],
            2,
            "remora-proxy: --ca-roots: is required with --ca-addr",
        ),
        (
            &missing[..],
            1,
            "starting the certificate client: cannot read --ca-roots /nonexistent/roots.pem",
        ),
    ] {
        let mut args = vec!["--ca-addr", "10.99.0.9:15012"];
        args.extend_from_slice(extra);
        let mut proxy = app.spawn_proxy(&args);
        let status = proxy.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(code), "{args:?}");
        assert!(proxy.log().contains(says), "{args:?}: {}", proxy.log());
    }
}
