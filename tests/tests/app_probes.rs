//! The app's probes through the proxy's admin port, as kubelet sends them
//! after the injector rewrote them: `GET /app-health/<container>/<kind>` on
//! 15020, answered by performing the original check (REMORA_APP_PROBES)
//! against the app on the pod's own address. HTTP (status, path, headers),
//! TCP and gRPC health checks against real apps in a pod; a hung app is
//! answered within timeoutSeconds; the same with the pod's capture rules in
//! place; unknown paths, other methods and a malformed REMORA_APP_PROBES;
//! and `remora-proxy wait-ready`, the regular-container mode's postStart hook.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use remora_e2e::metrics::OPENED;
use remora_e2e::{bin_dir, HttpResponse, Pod, TestNet, DEFAULT_INIT_ARGS, INBOUND};
use serde_json::json;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

const ADMIN_PORT: u16 = 15020;
const HEALTHY: u16 = 8080;
const FAILING: u16 = 8081;
const HUNG: u16 = 8082;
const CLOSED: u16 = 8090;
const GRPC: u16 = 9090;

/// What the injector would write for a pod with these probes.
fn app_probes() -> String {
    json!({
        "/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": HEALTHY, "scheme": "HTTP",
            "httpHeaders": [{"name": "X-Probe", "value": "liveness"}, {"name": "User-Agent", "value": "kubelet-test"}]},
            "timeoutSeconds": 2},
        "/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": FAILING, "scheme": "HTTP"},
            "timeoutSeconds": 1},
        "/app-health/web/startupz": {"tcpSocket": {"port": CLOSED}, "timeoutSeconds": 1},
        "/app-health/db/livez": {"tcpSocket": {"port": HEALTHY}, "timeoutSeconds": 1},
        "/app-health/grpc/livez": {"grpc": {"port": GRPC, "service": "shop.Checkout"}, "timeoutSeconds": 1},
        "/app-health/grpc/readyz": {"grpc": {"port": GRPC, "service": "shop.Cart"}, "timeoutSeconds": 1},
        "/app-health/slow/livez": {"httpGet": {"path": "/", "port": HUNG, "scheme": "HTTP"}, "timeoutSeconds": 1},
    })
    .to_string()
}

/// The apps behind those probes, running in `pod`.
struct Apps {
    healthy: remora_e2e::http_apps::HttpApp,
    _failing: remora_e2e::http_apps::HttpApp,
    _hung: remora_e2e::http_apps::HttpApp,
    _grpc: tokio::task::JoinHandle<()>,
}

async fn start_apps(pod: &Pod) -> Apps {
    let healthy = pod.spawn_http_app(HEALTHY, "healthy");
    let failing = pod.spawn_http_app(FAILING, "failing");
    failing.fail_with(500);
    let hung = pod.spawn_http_app(HUNG, "hung");
    hung.set_delay(Duration::from_secs(30));
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.Checkout", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("shop.Cart", ServingStatus::NotServing)
        .await;
    let listeners = [pod.listen_tcp(GRPC), pod.listen_tcp6(GRPC)];
    let grpc = tokio::spawn(async move {
        let _reporter = reporter;
        let serve = listeners.map(|listener| {
            tonic::transport::Server::builder()
                .serve_with_incoming(service.clone(), TcpListenerStream::new(listener))
        });
        let [v4, v6] = serve;
        if let Err(e) = tokio::try_join!(v4, v6) {
            eprintln!("gRPC health app stopped: {e}");
        }
    });
    Apps {
        healthy,
        _failing: failing,
        _hung: hung,
        _grpc: grpc,
    }
}

async fn probe(kubelet: &Pod, admin: SocketAddr, method: &str, path: &str) -> HttpResponse {
    kubelet
        .http(method, admin, path)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} via {admin}: {e}"))
}

/// Every configured probe, from another pod (kubelet's place), to the pod
/// at `ip`: exact status and body.
async fn check_probes(kubelet: &Pod, ip: IpAddr, apps: &Apps) {
    let admin = SocketAddr::new(ip, ADMIN_PORT);
    let at = |port: u16| SocketAddr::new(ip, port);
    let cases: Vec<(&str, u16, String)> = vec![
        ("/app-health/web/livez", 200, "ok: HTTP 200\n".to_owned()),
        (
            "/app-health/web/readyz",
            503,
            format!("GET http://{}/healthz: HTTP 500\n", at(FAILING)),
        ),
        (
            "/app-health/web/startupz",
            503,
            format!(
                "tcp {0}: connecting to {0}: Connection refused (os error 111)\n",
                at(CLOSED)
            ),
        ),
        (
            "/app-health/db/livez",
            200,
            format!("ok: tcp {} open\n", at(HEALTHY)),
        ),
        ("/app-health/grpc/livez", 200, "ok: SERVING\n".to_owned()),
        (
            "/app-health/grpc/readyz",
            503,
            format!(
                "grpc health {} service \"shop.Cart\": NOT_SERVING\n",
                at(GRPC)
            ),
        ),
        (
            "/app-health/nope/livez",
            404,
            "no app probe at /app-health/nope/livez; the pod's probes are in REMORA_APP_PROBES\n"
                .to_owned(),
        ),
    ];
    for (path, status, body) in &cases {
        let response = probe(kubelet, admin, "GET", path).await;
        assert_eq!(
            (response.status, response.body.as_str()),
            (*status, body.as_str()),
            "GET {path} via {admin}"
        );
    }
    let response = probe(kubelet, admin, "POST", "/app-health/web/livez").await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (405, "method not allowed\n")
    );

    // The app saw kubelet's request: the probe's path and headers, the
    // probe's User-Agent in place of the default, from the inbound source.
    let seen = apps.healthy.last_request().expect("the app was probed");
    assert_eq!(seen.path, "/healthz");
    assert_eq!(seen.header_values("x-probe"), ["liveness"]);
    assert_eq!(seen.header_values("user-agent"), ["kubelet-test"]);
    assert_eq!(seen.header_values("host"), [at(HEALTHY).to_string()]);
    let source = apps.healthy.peers().last().expect("a peer").ip();
    let expected_source: IpAddr = match ip {
        IpAddr::V4(_) => Ipv4Addr::new(127, 0, 0, 6).into(),
        IpAddr::V6(_) => "::6".parse().expect("an address"),
    };
    assert_eq!(source, expected_source, "the inbound forward's source");

    // A hung app: 503 once timeoutSeconds (1) has passed, not later.
    let started = Instant::now();
    let response = probe(kubelet, admin, "GET", "/app-health/slow/livez").await;
    let took = started.elapsed();
    assert_eq!(
        (response.status, response.body.as_str()),
        (
            503,
            format!(
                "GET http://{}/: no answer within timeoutSeconds 1\n",
                at(HUNG)
            )
            .as_str()
        )
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn probes_are_performed_against_the_app_as_kubelet_would() {
    let net = TestNet::new("probes_plain");
    let pod = net.pod("app");
    let kubelet = net.pod("kubelet");
    let apps = start_apps(&pod).await;
    let probes = app_probes();
    let _proxy = pod.start_proxy(&["--app-probes", &probes]).await;
    check_probes(&kubelet, pod.ip4().into(), &apps).await;
}

#[tokio::test]
async fn probes_still_work_with_the_pods_capture_rules() {
    let net = TestNet::new("probes_captured");
    let pod = net.pod("app");
    let kubelet = net.pod("kubelet");
    let apps = start_apps(&pod).await;
    pod.run_init(DEFAULT_INIT_ARGS);
    let probes = app_probes();
    // A dual-stack admin listener, as an IPv6 or dual-stack cluster needs.
    let proxy = pod
        .start_proxy(&["--app-probes", &probes, "--admin-addr", "[::]:15020"])
        .await;
    let before = proxy.metrics().await;
    check_probes(&kubelet, pod.ip4().into(), &apps).await;
    check_probes(&kubelet, pod.ip6().into(), &apps).await;
    // The probes went straight to the app, not through the inbound listener.
    let after = proxy.metrics().await;
    assert_eq!(after.since(&before, OPENED, INBOUND), 0.0);
    // While the app's own port, from another pod, is captured.
    let reply = kubelet
        .http("GET", pod.addr4(HEALTHY), "/healthz")
        .await
        .expect("the app answers through the inbound proxy");
    assert_eq!((reply.status, reply.body.as_str()), (200, "healthy"));
    let after = proxy.metrics().await;
    assert_eq!(after.since(&before, OPENED, INBOUND), 1.0);
}

#[tokio::test]
async fn a_malformed_app_probes_value_stops_the_proxy_with_exit_2() {
    let net = TestNet::new("probes_malformed");
    let pod = net.pod("app");
    let cases = [
        (
            r#"{"/app-health/web/livez":{"tcpSocket":{"port":0}}}"#,
            "remora-proxy: --app-probes: REMORA_APP_PROBES /app-health/web/livez: port 0 is not a port; use 1-65535\n",
        ),
        (
            r#"{"/metrics":{"tcpSocket":{"port":22}}}"#,
            "remora-proxy: --app-probes: REMORA_APP_PROBES /metrics: not an app probe path; expected /app-health/<container>/livez, readyz or startupz\n",
        ),
        (
            "not json",
            "remora-proxy: --app-probes: REMORA_APP_PROBES is not the injector's JSON: expected ident at line 1 column 2\n",
        ),
    ];
    for (value, message) in cases {
        let mut proxy = pod.spawn_proxy(&["--app-probes", value]);
        let status = proxy
            .wait_exit(Duration::from_secs(5))
            .await
            .expect("the proxy exits");
        assert_eq!(status.code(), Some(2), "{value}");
        assert_eq!(proxy.log(), message, "{value}");
    }
}

/// `remora-proxy wait-ready ARGS` inside `pod`, as the postStart hook runs.
fn wait_ready(pod: &Pod, args: &[&str]) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", pod.namespace()])
        .arg(bin_dir().join("remora-proxy"))
        .arg("wait-ready")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec remora-proxy wait-ready")
}

async fn finish(child: std::process::Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("joined")
        .expect("wait-ready exits")
}

#[tokio::test]
async fn wait_ready_exits_0_once_the_proxy_is_ready_and_1_on_timeout() {
    let net = TestNet::new("probes_wait_ready");
    let pod = net.pod("app");

    // Nothing listens: 1 after the timeout, saying why.
    let started = Instant::now();
    let out = finish(wait_ready(&pod, &["--timeout", "1s"])).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "remora-proxy wait-ready: the proxy at 127.0.0.1:15020 is not ready after 1s: \
         connecting: Connection refused (os error 111)\n"
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // Started before the proxy, it returns once the proxy is ready.
    let waiting = wait_ready(&pod, &["--timeout", "20s"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let _proxy = pod.start_proxy(&[]).await;
    let out = finish(waiting).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A timeout out of range is a usage error.
    let out = finish(wait_ready(&pod, &["--timeout", "2h"])).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "remora-proxy wait-ready: --timeout must be 1s to 1h, not 2h\n"
    );
}
