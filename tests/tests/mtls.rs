//! Mesh mTLS end to end: a real `remora-cp` signs each pod's certificate,
//! and the sidecars speak TLS 1.3 to each other with SPIFFE identities.
//!
//! What a user would notice: the app sees the caller's identity in a
//! header and nothing readable crosses the wire; STRICT refuses plaintext
//! and PERMISSIVE counts it; a server with the wrong identity is refused;
//! authorization allows one caller and denies another, for HTTP and TCP;
//! a POST to a pod whose app died is retried on the other pod (REFUSED_STREAM);
//! HTTP/1.1 apps share one HTTP/2 connection between the sidecars.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use remora_api::{
    Authorization, AuthorizationPolicy, AuthzAction, AuthzRule, InboundMode, InboundPort,
    MeshConfig,
};
use remora_e2e::http_apps::{send_many, HttpClient, Req};
use remora_e2e::mesh_config::{
    backend, mesh, route, service, wait_version, ConfigFile, VIP, VIP_PORT,
};
use remora_e2e::{
    assert_closed_without_data, exchange, ControlPlane, Metrics, Pod, ProxyHandle, TestNet,
    TokenEntry, CLIENT as A, CLIENT_ID as A_ID, INTRUDER as C, INTRUDER_ID as C_ID, SERVER as B,
    SERVER_ID as B_ID, WAIT,
};

const APP_PORT: u16 = 8080;
const HANDSHAKES: &str = "remora_tls_handshakes_total";
const INBOUND_CONNECTIONS: &str = "remora_inbound_connections_total";
const DENIED: &str = "remora_authz_denied_total";

/// The CA, and what each meshed pod needs to reach it.
struct Mesh {
    net: TestNet,
    cp: ControlPlane,
}

impl Mesh {
    async fn new(test: &str) -> Mesh {
        let net = TestNet::new(test);
        let cp = net.pod("cp").start_control_plane(&[A, B, C], &[]).await;
        Mesh { net, cp }
    }

    /// Captures `pod`, starts its proxy with `token`'s identity and
    /// `config`, and waits until it holds a certificate and that config.
    async fn sidecar(
        &self,
        pod: &Pod,
        token: TokenEntry<'_>,
        config: &MeshConfig,
    ) -> (ProxyHandle, ConfigFile) {
        let file = ConfigFile::new(&format!("{}-{}", pod.name(), config.version));
        file.write(config);
        let identity = self.cp.proxy_identity_args(pod, token.token);
        let mut args: Vec<&str> = identity.iter().map(String::as_str).collect();
        args.extend_from_slice(&file.proxy_args());
        let proxy = pod.mesh_with(&[], &args).await;
        wait_version(&proxy, &config.version).await;
        (proxy, file)
    }
}

impl Mesh {
    /// The usual pair: `a` with A's identity calling the service at the
    /// VIP, which is `b`'s app; `b` with B's identity, in `mode`.
    async fn client_and_server(&self, a: &Pod, b: &Pod, mode: InboundMode) -> Sidecars {
        let client = client_config("c1", &[b.addr4(APP_PORT)], B_ID, false);
        let server = server_config(
            "s1",
            mode,
            vec![port(APP_PORT, None)],
            Authorization::default(),
        );
        let (client, client_file) = self.sidecar(a, A, &client).await;
        let (server, server_file) = self.sidecar(b, B, &server).await;
        Sidecars {
            server,
            _client: client,
            _files: [client_file, server_file],
        }
    }
}

/// Two running sidecars and their config files.
struct Sidecars {
    server: ProxyHandle,
    _client: ProxyHandle,
    _files: [ConfigFile; 2],
}

/// A client config: the service at VIP:80 goes to `endpoints`, each
/// expected to prove `identity`.
fn client_config(
    version: &str,
    endpoints: &[SocketAddr],
    identity: &str,
    retry: bool,
) -> MeshConfig {
    let mut config = mesh(version);
    let mut web = backend(endpoints);
    for endpoint in &mut web.endpoints {
        endpoint.identity = Some(identity.to_owned());
    }
    config.backends.insert("web".into(), web);
    let mut r = route().to("web");
    if retry {
        r = r.retry(2, &[], Duration::from_millis(1));
    }
    config
        .outbound
        .services
        .push(service("web.default", VIP, VIP_PORT, vec![r.build()]));
    config
}

fn server_config(
    version: &str,
    mode: InboundMode,
    ports: Vec<InboundPort>,
    authorization: Authorization,
) -> MeshConfig {
    let mut config = mesh(version);
    config.inbound.mode = mode;
    config.inbound.ports = ports;
    config.inbound.authorization = authorization;
    config
}

fn port(port: u16, mode: Option<InboundMode>) -> InboundPort {
    InboundPort {
        port,
        name: None,
        protocol: Default::default(),
        mode,
        plugins: Default::default(),
        routes: Vec::new(),
    }
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP, VIP_PORT)
}

/// `tcpdump` on a pod's eth0, writing a capture file until stopped.
struct Capture {
    child: Child,
    path: std::path::PathBuf,
}

impl Capture {
    fn start(pod: &Pod, name: &str) -> Capture {
        let path = std::env::temp_dir().join(format!("{}-{name}.pcap", pod.namespace()));
        let _ = std::fs::remove_file(&path);
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                pod.namespace(),
                "tcpdump",
                "--immediate-mode",
                "-Z",
                "root",
                "-i",
                "eth0",
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(&path)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump runs (scripts/deps.sh installs it)");
        // tcpdump says "listening on eth0" once it captures.
        let stderr = child.stderr.take().expect("piped stderr");
        let mut reader = std::io::BufReader::new(stderr);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("tcpdump's first line");
        assert!(line.contains("listening on"), "tcpdump: {line}");
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Capture { child, path }
    }

    /// Stops the capture once its file holds `needle` (tcpdump writes each
    /// packet as it gets it, `-U`, but gets it a moment after it crossed),
    /// at most [`WAIT`], and returns every byte it wrote.
    fn stop_once_it_holds(mut self, needle: &[u8]) -> Vec<u8> {
        let deadline = std::time::Instant::now() + WAIT;
        while !std::fs::read(&self.path).is_ok_and(|wire| contains(&wire, needle))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        // What is in flight in the kernel's capture buffer gets written.
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        std::fs::read(&self.path).expect("the capture file")
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_app_sees_the_callers_identity_and_the_wire_carries_no_plaintext() {
    let m = Mesh::new("mtls_identity").await;
    let (a, b, plain) = (m.net.pod("a"), m.net.pod("b"), m.net.pod("plain"));
    let app = b.spawn_http_app(APP_PORT, "secret-response-body");
    let pair = m.client_and_server(&a, &b, InboundMode::Permissive).await;
    let pb = &pair.server;

    // Meshed: A's app → A's sidecar → mTLS → B's sidecar → B's app.
    let capture = Capture::start(&b, "mesh");
    let mut client = HttpClient::new(&a, vip());
    for i in 0..5 {
        let reply = client
            .send(&Req::get(&format!("/secret-path-{i}")).header("x-secret", "secret-header-value"))
            .await
            .expect("meshed request");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "secret-response-body")
        );
    }
    let wire = capture.stop_once_it_holds(b"\x17\x03\x03");
    let seen = app.last_request().expect("the app got the request");
    assert_eq!(
        seen.header_values("x-remora-client-id"),
        vec![A_ID.to_owned()]
    );
    assert_eq!(seen.path, "/secret-path-4");
    assert!(
        !contains(&wire, b"secret-path"),
        "the request path crossed the wire in plaintext"
    );
    assert!(
        !contains(&wire, b"secret-header-value"),
        "a request header crossed in plaintext"
    );
    assert!(
        !contains(&wire, b"secret-response-body"),
        "the response crossed in plaintext"
    );
    assert!(
        contains(&wire, b"\x17\x03\x03"),
        "the capture saw TLS application data ({} bytes captured)",
        wire.len()
    );

    // The hop between the sidecars is one HTTP/2 connection, though both
    // apps speak HTTP/1.1; B's metrics count the requests with A's identity.
    let metrics = pb.metrics().await;
    let inbound_h2 = [("direction", "inbound"), ("protocol", "h2")];
    assert_eq!(
        metrics.get(remora_e2e::metrics::OPENED, &inbound_h2),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metrics.get(
            "remora_requests_total",
            &[("direction", "inbound"), ("client_id", A_ID)]
        ),
        5.0,
        "{metrics}"
    );
    assert_eq!(
        metrics.get(HANDSHAKES, &[("direction", "inbound"), ("result", "ok")]),
        1.0
    );
    assert_eq!(
        metrics.get(
            INBOUND_CONNECTIONS,
            &[
                ("security", "mtls"),
                ("port", "8080"),
                ("result", "accepted")
            ]
        ),
        1.0
    );

    // The control: the same capture sees a plaintext client's bytes, and
    // PERMISSIVE lets it in and counts it as plaintext, with no identity
    // (a forged header is removed).
    let capture = Capture::start(&b, "plain");
    let mut client = HttpClient::new(&plain, b.addr4(APP_PORT));
    let reply = client
        .send(&Req::get("/secret-path-plain").header("x-remora-client-id", C_ID))
        .await
        .expect("plaintext request");
    assert_eq!(reply.status, 200);
    let wire = capture.stop_once_it_holds(b"secret-path-plain");
    assert!(
        contains(&wire, b"secret-path-plain"),
        "the capture sees plaintext when there is some"
    );
    let seen = app
        .last_request()
        .expect("the app got the plaintext request");
    assert_eq!(
        seen.header_values("x-remora-client-id"),
        Vec::<String>::new()
    );
    let metrics = pb.metrics().await;
    assert_eq!(
        metrics.get(
            INBOUND_CONNECTIONS,
            &[
                ("security", "plaintext"),
                ("port", "8080"),
                ("result", "accepted")
            ]
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn strict_refuses_plaintext_and_a_port_can_stay_permissive() {
    let m = Mesh::new("mtls_strict").await;
    let (a, b, plain) = (m.net.pod("a"), m.net.pod("b"), m.net.pod("plain"));
    let strict_app = b.spawn_http_app(APP_PORT, "strict");
    let open_app = b.spawn_http_app(8081, "open");
    let (_pa, _fa) = m
        .sidecar(
            &a,
            A,
            &client_config("c1", &[b.addr4(APP_PORT)], B_ID, false),
        )
        .await;
    let config = server_config(
        "s1",
        InboundMode::Strict,
        vec![
            port(APP_PORT, None),
            port(8081, Some(InboundMode::Permissive)),
        ],
        Authorization::default(),
    );
    let (pb, _fb) = m.sidecar(&b, B, &config).await;

    let mut refused = plain
        .connect(b.addr4(APP_PORT))
        .await
        .expect("TCP connects (the proxy accepts, then closes)");
    let _ = tokio::io::AsyncWriteExt::write_all(&mut refused, b"GET / HTTP/1.1\r\nhost: b\r\n\r\n")
        .await;
    assert_closed_without_data(&mut refused, "a plaintext client on a STRICT port").await;
    let reply = HttpClient::new(&plain, b.addr4(8081))
        .get("/")
        .await
        .expect("the permissive port");
    assert_eq!((reply.status, reply.body.as_str()), (200, "open"));
    let reply = HttpClient::new(&a, vip())
        .get("/")
        .await
        .expect("a meshed client");
    assert_eq!((reply.status, reply.body.as_str()), (200, "strict"));
    assert_eq!(
        strict_app.received(),
        1,
        "only the meshed request reached the STRICT app"
    );
    assert_eq!(open_app.received(), 1);

    let metrics = pb.metrics().await;
    let count = |security, port, result| {
        metrics.get(
            INBOUND_CONNECTIONS,
            &[("security", security), ("port", port), ("result", result)],
        )
    };
    assert_eq!(count("plaintext", "8080", "refused"), 1.0, "{metrics}");
    assert_eq!(count("plaintext", "8081", "accepted"), 1.0, "{metrics}");
    assert_eq!(count("mtls", "8080", "accepted"), 1.0, "{metrics}");
}

#[tokio::test]
async fn a_server_proving_another_identity_is_refused_and_counted() {
    let m = Mesh::new("mtls_mismatch").await;
    let (a, c) = (m.net.pod("a"), m.net.pod("c"));
    let app = c.spawn_http_app(APP_PORT, "impostor");
    // A expects B at c's address; c's sidecar holds C's certificate.
    let (pa, _fa) = m
        .sidecar(
            &a,
            A,
            &client_config("c1", &[c.addr4(APP_PORT)], B_ID, true),
        )
        .await;
    let (_pc, _fc) = m
        .sidecar(
            &c,
            C,
            &server_config(
                "s1",
                InboundMode::Permissive,
                vec![],
                Authorization::default(),
            ),
        )
        .await;

    let reply = HttpClient::new(&a, vip())
        .get("/")
        .await
        .expect("an answer from A's sidecar");
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body.contains(C_ID) || reply.body.contains("wrong identity"),
        "{}",
        reply.body
    );
    assert_eq!(app.received(), 0, "nothing reached the impostor's app");
    let metrics: Metrics = pa.metrics().await;
    assert_eq!(
        metrics.get(
            HANDSHAKES,
            &[("direction", "outbound"), ("result", "identity_mismatch")]
        ),
        1.0,
        "one handshake, never retried onto the same endpoint\n{metrics}"
    );
}

#[tokio::test]
async fn authorization_allows_a_and_denies_c_over_http_and_tcp() {
    let m = Mesh::new("mtls_authz").await;
    let (a, b, c) = (m.net.pod("a"), m.net.pod("b"), m.net.pod("c"));
    let app = b.spawn_http_app(APP_PORT, "guarded");
    let _echo = b.spawn_echo_server(9000);
    let authorization = Authorization {
        default_action: AuthzAction::Deny,
        policies: vec![AuthorizationPolicy {
            name: "clients".into(),
            action: AuthzAction::Allow,
            rules: vec![AuthzRule {
                identities: vec![A_ID.into()],
                ..AuthzRule::default()
            }],
        }],
    };
    let mut opaque = port(9000, None);
    opaque.protocol = remora_api::Protocol::Tcp;
    let (pb, _fb) = m
        .sidecar(
            &b,
            B,
            &server_config(
                "s1",
                InboundMode::Strict,
                vec![port(APP_PORT, None), opaque],
                authorization,
            ),
        )
        .await;
    let mut client_a = client_config("c1", &[b.addr4(APP_PORT)], B_ID, false);
    let mut client_c = client_a.clone();
    client_c.version = "c2".into();
    for config in [&mut client_a, &mut client_c] {
        let mut echo = backend(&[b.addr4(9000)]);
        echo.endpoints[0].identity = Some(B_ID.into());
        config.backends.insert("echo".into(), echo);
        let mut svc = service("echo.default", VIP, 9000, vec![]);
        svc.ports[0].protocol = remora_api::Protocol::Tcp;
        svc.ports[0].backend_refs = vec![serde_json::from_value(
            serde_json::json!({"name": "echo"}),
        )
        .expect("a backendRef")];
        config.outbound.services.push(svc);
    }
    let (_pa, _fa) = m.sidecar(&a, A, &client_a).await;
    let (_pc, _fc) = m.sidecar(&c, C, &client_c).await;

    let reply = HttpClient::new(&a, vip())
        .get("/orders")
        .await
        .expect("A's request");
    assert_eq!((reply.status, reply.body.as_str()), (200, "guarded"));
    let reply = HttpClient::new(&c, vip())
        .get("/orders")
        .await
        .expect("C's request");
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(
        reply.body.trim(),
        format!(
            "forbidden: {C_ID} may not GET /orders (authorization policy default, rule default)"
        )
    );
    assert_eq!(app.received(), 1, "only A's request reached the app");

    let mut stream = a
        .connect(SocketAddr::new(VIP, 9000))
        .await
        .expect("A connects");
    assert_eq!(
        exchange(&mut stream, b"ping from a").await.expect("echo"),
        b"ping from a"
    );
    let mut stream = c
        .connect(SocketAddr::new(VIP, 9000))
        .await
        .expect("C's TCP connect is accepted by its own sidecar");
    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, b"ping from c").await;
    assert_closed_without_data(&mut stream, "C's opaque connection").await;

    let metrics = pb.metrics().await;
    assert_eq!(
        metrics.get(DENIED, &[("policy", "default"), ("rule", "default")]),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metrics.get(
            INBOUND_CONNECTIONS,
            &[("security", "mtls"), ("port", "9000"), ("result", "denied")]
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_post_to_a_pod_whose_app_died_is_retried_on_the_other_pod_exactly_once() {
    let m = Mesh::new("mtls_refused").await;
    let (a, b1, b2) = (m.net.pod("a"), m.net.pod("b1"), m.net.pod("b2"));
    let mut dead = b1.spawn_http_app(APP_PORT, "b1");
    let alive = b2.spawn_http_app(APP_PORT, "b2");
    let server = server_config(
        "s1",
        InboundMode::Strict,
        vec![port(APP_PORT, None)],
        Authorization::default(),
    );
    let (pb1, _f1) = m.sidecar(&b1, B, &server).await;
    let (_pb2, _f2) = m.sidecar(&b2, B, &server).await;
    // No retry policy on the route: a refused stream is retried anyway.
    let config = client_config("c1", &[b1.addr4(APP_PORT), b2.addr4(APP_PORT)], B_ID, false);
    let (pa, _fa) = m.sidecar(&a, A, &config).await;
    dead.stop().await;

    const POSTS: usize = 40;
    let results = send_many(&a, vip(), POSTS, 4, |i| {
        Req::new(Method::POST, &format!("/orders/{i}")).body("{\"item\": 1}")
    })
    .await;
    for (i, outcome) in &results {
        let reply = outcome.as_ref().unwrap_or_else(|e| panic!("POST {i}: {e}"));
        assert_eq!((reply.status, reply.body.as_str()), (200, "b2"), "POST {i}");
    }
    let mut paths: Vec<String> = alive.requests().into_iter().map(|r| r.path).collect();
    paths.sort();
    let mut expected: Vec<String> = (0..POSTS).map(|i| format!("/orders/{i}")).collect();
    expected.sort();
    assert_eq!(
        paths, expected,
        "the surviving app got each POST exactly once"
    );
    let refused = pb1.metrics().await;
    let refusals = refused.get(
        "remora_http_errors_total",
        &[("direction", "inbound"), ("reason", "refused")],
    );
    assert!(
        refusals > 0.0,
        "b1's sidecar refused the streams it could not deliver\n{refused}"
    );
    let metrics = pa.metrics().await;
    assert_eq!(
        metrics.get("remora_retries_total", &[]),
        refusals,
        "each refused stream was retried once\n{metrics}"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_http1_requests_share_one_http2_connection_between_sidecars() {
    let m = Mesh::new("mtls_h2hop").await;
    let (a, b) = (m.net.pod("a"), m.net.pod("b"));
    let app = b.spawn_http_app(APP_PORT, "b");
    app.set_delay(Duration::from_millis(50));
    let pair = m.client_and_server(&a, &b, InboundMode::Strict).await;
    let pb = &pair.server;
    let results = send_many(&a, vip(), 200, 200, |i| Req::get(&format!("/r/{i}"))).await;
    for (i, outcome) in &results {
        let reply = outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(reply.status, 200, "request {i}");
    }
    let metrics = pb.metrics().await;
    assert_eq!(
        metrics.get(remora_e2e::metrics::OPENED, &[("direction", "inbound")]),
        1.0,
        "200 concurrent HTTP/1.1 requests from A ride one HTTP/2 connection\n{metrics}"
    );
    assert_eq!(app.received(), 200);
}
