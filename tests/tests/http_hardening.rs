//! HTTP input the proxy must refuse or normalise, on the wire: raw TCP
//! clients (so nothing between the test and the proxy tidies the bytes), an
//! HTTP/2 client, and apps that record what reached them.
//!
//! Outbound cases run from meshed pod `a` to a service virtual address in
//! its config, with the apps in unmeshed pod `srv`. Inbound cases run from
//! unmeshed pod `c` to the app port of meshed pod `b`. Each case asserts the
//! status the client sees, what the app saw (or that it saw nothing), and
//! where it matters the exact metric delta.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_e2e::http_apps::{HttpApp, HTTP_ERRORS, POD_HEADER};
use remora_e2e::mesh_config::ConfigFile;
use remora_e2e::{App, Metrics, Pod, ProxyHandle, TestNet};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The service a's config routes; nothing owns the address.
const VIP: &str = "10.96.0.50:80";
/// An address no service has: requests there are routed by `Host`.
const BY_HOST: &str = "10.96.0.99:80";
const APP_PORT: u16 = 8080;
/// How long any one answer may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A response read off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn body(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Fails, naming `what`, unless the status is `status` and, when
    /// given, `remora-error` is `reason`.
    fn expect(&self, what: &str, status: u16, reason: Option<&str>) -> anyhow::Result<()> {
        let got_reason = self.header("remora-error");
        if self.status != status || (reason.is_some() && got_reason != reason) {
            bail!(
                "{what}: want {status} {}, got {} {} {:?}",
                reason.unwrap_or(""),
                self.status,
                got_reason.unwrap_or(""),
                self.body()
            );
        }
        Ok(())
    }
}

/// Reads one response head and its `Content-Length` body (none for 1xx);
/// an error if the connection ends first or nothing comes in time.
async fn read_response(stream: &mut TcpStream) -> anyhow::Result<Raw> {
    let mut buf = Vec::new();
    let read = async {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "connection closed after {} bytes: {:?}",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let length = if status < 200 { 0 } else { length };
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("body cut short");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(Raw {
            status,
            headers,
            body: buf[head_end..head_end + length].to_vec(),
        })
    };
    tokio::time::timeout(ANSWER_WITHIN, read)
        .await
        .map_err(|_| anyhow::anyhow!("no response within {ANSWER_WITHIN:?}"))?
}

/// Sends `request` on a new connection from `pod` and reads the answer.
async fn raw(pod: &Pod, addr: SocketAddr, request: &str) -> anyhow::Result<Raw> {
    let mut stream = pod.connect(addr).await.context("connect")?;
    stream.write_all(request.as_bytes()).await?;
    read_response(&mut stream).await
}

/// The next response on `stream` is a 408 with `reason`, about 1 s (the
/// configured timeout) after `start`.
async fn expect_408_after_1s(
    stream: &mut TcpStream,
    start: Instant,
    reason: &str,
) -> anyhow::Result<()> {
    let reply = read_response(stream).await?;
    let waited = start.elapsed();
    reply.expect("the answer", 408, Some(reason))?;
    if !(Duration::from_millis(900)..Duration::from_secs(3)).contains(&waited) {
        bail!("408 after {waited:?}, want about 1 s");
    }
    Ok(())
}

/// Whether a connection's peer closes it (EOF or reset) within `limit`.
async fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(limit, stream.read_to_end(&mut rest)).await,
        Ok(Ok(_) | Err(_))
    )
}

/// An app that records each request head as it arrived, puts a forged
/// `remora-error` on its answers, and agrees to any `h2c` upgrade (then
/// writes `tunnel open` and holds the connection), as an HTTP/2 server
/// accepting h2c would.
fn spawn_raw_app(pod: &Pod, port: u16) -> (App, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let app = pod.spawn_server(port, move |mut stream: TcpStream| {
        let heads = seen.clone();
        async move {
            let mut buf = Vec::new();
            loop {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                let h2c = head.to_ascii_lowercase().contains("\r\nupgrade: h2c");
                heads.lock().expect("heads poisoned").push(head);
                if h2c {
                    let _ = stream
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\ntunnel open")
                        .await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                let reply = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nremora-error: forged-by-app\r\n\r\nraw";
                if stream.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    });
    (app, heads)
}

/// The header lines of `head` named `name` (case-insensitive), as values.
fn head_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// A config with `http` settings, the service at [`VIP`] sending everything
/// to backend `app` at `endpoint`, and `extra` merged in at the top.
fn config(version: &str, http: Value, endpoint: SocketAddr, extra: Value) -> Value {
    let vip: SocketAddr = VIP.parse().expect("VIP");
    let mut config = json!({
        "version": version,
        "http": http,
        "outbound": { "services": [{
            "name": "web.hardening",
            "addresses": [vip.ip().to_string()],
            "ports": [{ "port": vip.port(), "backendRefs": [{ "name": "app" }] }],
        }]},
        "backends": { "app": { "endpoints": [{ "address": endpoint.to_string() }] } },
    });
    if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
        config.extend(extra);
    }
    config
}

/// A meshed pod whose proxy runs on `config`.
async fn meshed(pod: &Pod, test: &str, config: &Value) -> (ProxyHandle, ConfigFile) {
    let file = ConfigFile::new(test);
    file.write_json(config);
    let proxy = pod.mesh_with(&[], &file.proxy_args()).await;
    (proxy, file)
}

/// Outbound (a → VIP → srv) and inbound (c → b) setups around one app kind.
struct Sides {
    _net: TestNet,
    a: Pod,
    c: Pod,
    b: Pod,
    proxy_a: ProxyHandle,
    proxy_b: ProxyHandle,
    _files: [ConfigFile; 2],
}

impl Sides {
    fn vip(&self) -> SocketAddr {
        VIP.parse().expect("VIP")
    }

    fn inbound(&self) -> SocketAddr {
        self.b.addr4(APP_PORT)
    }

    /// Both proxies' metrics, by direction.
    async fn scrape(&self) -> BTreeMap<&'static str, Metrics> {
        BTreeMap::from([
            ("outbound", self.proxy_a.metrics().await),
            ("inbound", self.proxy_b.metrics().await),
        ])
    }

    /// Each proxy counted exactly `n` more `remora_http_errors_total` with
    /// `reason` in its direction since `before`.
    async fn assert_http_errors(&self, before: &BTreeMap<&str, Metrics>, reason: &str, n: f64) {
        for (side, after) in self.scrape().await {
            let labels = [("direction", side), ("reason", reason)];
            let counted = after.since(&before[side], HTTP_ERRORS, &labels);
            assert_eq!(counted, n, "{side}: {reason} errors counted");
        }
    }
}

/// Pods a (meshed), srv (unmeshed, app on APP_PORT), b (meshed, app on
/// APP_PORT) and c (unmeshed); `app` starts the app in srv and in b.
async fn sides<T>(test: &str, http: Value, mut app: impl FnMut(&Pod) -> T) -> (Sides, T, T) {
    let net = TestNet::new(test);
    let a = net.pod("a");
    let srv = net.pod("srv");
    let b = net.pod("b");
    let c = net.pod("c");
    let out_app = app(&srv);
    let in_app = app(&b);
    let inbound = json!({ "inbound": { "ports": [{ "port": APP_PORT, "protocol": "http" }] } });
    let cfg_a = config(test, http.clone(), srv.addr4(APP_PORT), json!({}));
    let cfg_b = config(test, http, b.addr4(APP_PORT), inbound);
    let (proxy_a, file_a) = meshed(&a, &format!("{test}_a"), &cfg_a).await;
    let (proxy_b, file_b) = meshed(&b, &format!("{test}_b"), &cfg_b).await;
    let sides = Sides {
        _net: net,
        a,
        c,
        b,
        proxy_a,
        proxy_b,
        _files: [file_a, file_b],
    };
    // `srv` lives as long as the net; its app is returned to the test.
    (sides, out_app, in_app)
}

/// Runs `check` for the outbound then the inbound side, and fails with
/// every failure listed.
macro_rules! both_sides {
    ($s:expr, |$client:ident, $addr:ident, $app:ident, $side:ident| $body:block, $out:expr, $in:expr) => {{
        let mut failures = Vec::new();
        for ($side, $client, $addr, $app) in [
            ("outbound", &$s.a, $s.vip(), $out),
            ("inbound", &$s.c, $s.inbound(), $in),
        ] {
            let result: anyhow::Result<()> = async { $body }.await;
            if let Err(e) = result {
                failures.push(format!("{}: {e:#}", $side));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }};
}

#[tokio::test]
async fn h2c_never_reaches_the_app_and_unlisted_upgrades_are_dropped() {
    let (s, (_out, out_heads), (_in, in_heads)) =
        sides("hard_h2c", json!({}), |pod| spawn_raw_app(pod, APP_PORT)).await;
    both_sides!(
        s,
        |client, addr, heads, side| {
            let before = heads.lock().expect("heads").len();
            let h2c =
                "GET /secret HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                       Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
            let reply = raw(client, addr, h2c).await?;
            reply.expect("h2c upgrade (must go on as a plain request)", 200, None)?;
            if reply.body() != "raw" {
                bail!("h2c upgrade: the app's answer was {:?}", reply.body());
            }
            let other = "GET /other HTTP/1.1\r\nHost: web\r\nConnection: keep-alive, Upgrade\r\nUpgrade: foo/1\r\n\r\n";
            raw(client, addr, other)
                .await?
                .expect("an unlisted upgrade", 200, None)?;
            let heads = heads.lock().expect("heads")[before..].to_vec();
            if heads.len() != 2 {
                bail!("the app saw {} requests, want 2: {heads:?}", heads.len());
            }
            for head in &heads {
                for name in ["upgrade", "http2-settings"] {
                    let values = head_values(head, name);
                    if !values.is_empty() {
                        bail!("{side}: the app saw {name}: {values:?} in\n{head}");
                    }
                }
                let connection = head_values(head, "connection")
                    .join(",")
                    .to_ascii_lowercase();
                if connection.contains("upgrade") {
                    bail!("the app saw Connection: {connection}");
                }
            }
            Ok(())
        },
        out_heads.clone(),
        in_heads.clone()
    );
}

#[tokio::test]
async fn websocket_upgrades_still_work_and_config_can_allow_more() {
    // The control for the test above: an allowed upgrade passes, in full.
    let http = json!({ "allowedUpgrades": ["websocket", "foo"] });
    let (s, (_out, out_heads), (_in, in_heads)) =
        sides("hard_upgrade_ok", http, |pod| spawn_raw_app(pod, APP_PORT)).await;
    both_sides!(
        s,
        |client, addr, heads, side| {
            let request = "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: h2c, foo/1\r\n\r\n";
            raw(client, addr, request)
                .await?
                .expect("allowed upgrade", 200, None)?;
            let head = heads
                .lock()
                .expect("heads")
                .last()
                .cloned()
                .unwrap_or_default();
            if head_values(&head, "upgrade") != ["foo/1"] {
                bail!("{side}: the app should see Upgrade: foo/1 only, saw\n{head}");
            }
            Ok(())
        },
        out_heads.clone(),
        in_heads.clone()
    );
}

#[tokio::test]
async fn absolute_form_is_routed_on_its_authority_and_sent_as_host() {
    let net = TestNet::new("hard_absolute");
    let a = net.pod("a");
    let srv = net.pod("srv");
    let api = srv.spawn_http_app(8081, "api");
    let web = srv.spawn_http_app(8082, "web");
    let service = |name: &str, host: &str| {
        json!({ "name": name, "hostnames": [host],
                "ports": [{ "port": 80, "backendRefs": [{ "name": name }] }] })
    };
    let backend = |app: &HttpApp| json!({ "endpoints": [{ "address": app.addr().to_string() }] });
    let cfg = json!({
        "version": "absolute",
        "outbound": { "services": [service("api", "api.internal"), service("web", "web.internal")] },
        "backends": { "api": backend(&api), "web": backend(&web) },
    });
    let (_proxy, _file) = meshed(&a, "hard_absolute", &cfg).await;
    let addr: SocketAddr = BY_HOST.parse().expect("addr");

    // The control: origin-form goes by Host.
    let reply = raw(&a, addr, "GET /x HTTP/1.1\r\nHost: web.internal\r\n\r\n")
        .await
        .expect("origin-form");
    assert_eq!((reply.status, reply.header(POD_HEADER)), (200, Some("web")));

    let reply = raw(
        &a,
        addr,
        "GET http://api.internal/x?q=1 HTTP/1.1\r\nHost: web.internal\r\n\r\n",
    )
    .await
    .expect("absolute-form");
    assert_eq!(
        (reply.status, reply.header(POD_HEADER)),
        (200, Some("api")),
        "routed on the target's authority"
    );
    let seen = api.last_request().expect("api saw the request");
    assert_eq!(seen.path, "/x?q=1", "sent in origin-form");
    assert_eq!(
        seen.header_values("host"),
        ["api.internal"],
        "the app must see the authority the request was routed on"
    );
}

#[tokio::test]
async fn dot_segments_route_to_the_normalised_path() {
    let net = TestNet::new("hard_dots");
    let a = net.pod("a");
    let srv = net.pod("srv");
    let b = net.pod("b");
    let c = net.pod("c");
    let public = srv.spawn_http_app(8081, "public");
    let admin = srv.spawn_http_app(8082, "admin");
    let app_b = b.spawn_http_app(APP_PORT, "b");
    let vip: SocketAddr = VIP.parse().expect("VIP");
    let prefix = |path: &str, to: &str| {
        json!({ "matches": [{ "path": { "type": "PathPrefix", "value": path } }],
                "backendRefs": [{ "name": to }] })
    };
    let endpoint = |app: &HttpApp| json!({ "endpoints": [{ "address": app.addr().to_string() }] });
    let cfg = json!({
        "version": "dots",
        "outbound": { "services": [{
            "name": "web.hardening", "addresses": [vip.ip().to_string()],
            "ports": [{ "port": 80, "routes": [prefix("/public", "public"), prefix("/admin", "admin")] }],
        }]},
        "backends": { "public": endpoint(&public), "admin": endpoint(&admin) },
    });
    let (_proxy_a, _file_a) = meshed(&a, "hard_dots_a", &cfg).await;
    let (_proxy_b, _file_b) = meshed(&b, "hard_dots_b", &json!({ "version": "dots-b" })).await;

    let cases = [
        ("/public/../admin", Some(("admin", "/admin"))),
        ("/public/%2e%2e/admin", Some(("admin", "/admin"))),
        (
            "/public/./x/../../admin/%70anel",
            Some(("admin", "/admin/panel")),
        ),
        ("/../../admin", Some(("admin", "/admin"))),
        // An encoded slash is data inside its segment, as sent.
        ("/public/..%2fadmin", Some(("public", "/public/..%2Fadmin"))),
        ("/public/%zz", None),
        ("/public/a\\..\\..\\admin", None),
    ];
    let mut failures = Vec::new();
    for (path, expected) in cases {
        let request = format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n");
        let reply = match raw(&a, vip, &request).await {
            Ok(reply) => reply,
            Err(e) => {
                failures.push(format!("{path}: {e:#}"));
                continue;
            }
        };
        let got = (reply.status, reply.header(POD_HEADER).unwrap_or(""));
        match expected {
            Some((pod, seen_path)) => {
                let app = if pod == "admin" { &admin } else { &public };
                let seen = app.last_request().map(|r| r.path).unwrap_or_default();
                if got != (200, pod) || seen != seen_path {
                    failures.push(format!(
                        "{path}: want 200 from {pod} seeing {seen_path}, got {got:?}, {pod} last saw {seen:?}"
                    ));
                }
            }
            None if got.0 != 400 => failures.push(format!("{path}: want 400, got {got:?}")),
            None => {}
        }
    }
    // Inbound normalises too: the app sees the path the proxy would route.
    let reply = raw(
        &c,
        b.addr4(APP_PORT),
        "GET /public/%2E%2E/admin HTTP/1.1\r\nHost: b\r\n\r\n",
    )
    .await
    .expect("inbound");
    let seen = app_b.last_request().map(|r| r.path).unwrap_or_default();
    if (reply.status, seen.as_str()) != (200, "/admin") {
        failures.push(format!(
            "inbound: want 200 with the app seeing /admin, got {} {seen:?}",
            reply.status
        ));
    }
    assert_eq!(
        public
            .requests()
            .iter()
            .filter(|r| r.path.contains("admin") && !r.path.contains("%2F"))
            .count(),
        0,
        "an admin path reached the public backend"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn hosts_that_are_not_one_authority_get_400() {
    let (s, out_app, in_app) = sides("hard_host", json!({}), |pod| {
        pod.spawn_http_app(APP_PORT, "app")
    })
    .await;
    let cases = [
        (
            "two Host headers",
            "GET /two HTTP/1.1\r\nHost: web\r\nHost: admin\r\n\r\n",
        ),
        (
            "a path in Host",
            "GET /path HTTP/1.1\r\nHost: web/admin\r\n\r\n",
        ),
        (
            "user info in Host",
            "GET /user HTTP/1.1\r\nHost: evil@web\r\n\r\n",
        ),
        ("an empty Host", "GET /empty HTTP/1.1\r\nHost:\r\n\r\n"),
        (
            "a bad port",
            "GET /port HTTP/1.1\r\nHost: web:99999\r\n\r\n",
        ),
        ("no Host in HTTP/1.1", "GET /none HTTP/1.1\r\n\r\n"),
        (
            "user info in the target",
            "GET http://evil@web/target HTTP/1.1\r\nHost: web\r\n\r\n",
        ),
    ];
    both_sides!(
        s,
        |client, addr, app, _side| {
            let mut wrong = Vec::new();
            for (what, request) in cases {
                match raw(client, addr, request).await {
                    Ok(reply)
                        if reply.status == 400
                            && reply.header("remora-error") == Some("bad_request") => {}
                    Ok(reply) => wrong.push(format!(
                        "{what}: want 400 bad_request, got {} {:?}",
                        reply.status,
                        reply.body()
                    )),
                    Err(e) => wrong.push(format!("{what}: {e:#}")),
                }
            }
            let seen: Vec<String> = app.requests().into_iter().map(|r| r.path).collect();
            if !seen.is_empty() {
                wrong.push(format!("the app received {seen:?}"));
            }
            let good = raw(client, addr, "GET /good HTTP/1.1\r\nHost: web:80\r\n\r\n").await?;
            if good.status != 200 {
                wrong.push(format!("the control (Host: web:80) got {}", good.status));
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                bail!("{}", wrong.join("; "))
            }
        },
        &out_app,
        &in_app
    );
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_get_501() {
    let (s, out_app, in_app) = sides("hard_te", json!({}), |pod| {
        pod.spawn_http_app(APP_PORT, "app")
    })
    .await;
    both_sides!(
        s,
        |client, addr, app, _side| {
            let body = "5\r\nhello\r\n0\r\n\r\n";
            let gzip = format!("POST /gzip HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{body}");
            raw(client, addr, &gzip).await?.expect(
                "gzip, chunked",
                501,
                Some("not_implemented"),
            )?;
            // hyper refuses a coding that does not end in chunked itself.
            let alone = "POST /alone HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip\r\n\r\nhello";
            raw(client, addr, alone)
                .await?
                .expect("gzip alone", 400, None)?;
            let chunked = format!(
                "POST /chunked HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            );
            raw(client, addr, &chunked)
                .await?
                .expect("chunked (the control)", 200, None)?;
            let seen: Vec<String> = app.requests().into_iter().map(|r| r.path).collect();
            if seen != ["/chunked"] {
                bail!("the app should see /chunked only, saw {seen:?}");
            }
            Ok(())
        },
        &out_app,
        &in_app
    );
}

#[tokio::test]
async fn forged_proxy_headers_are_overwritten_or_stripped() {
    let (s, (_out, out_heads), (_in, in_heads)) =
        sides("hard_forged", json!({}), |pod| spawn_raw_app(pod, APP_PORT)).await;
    let request = "GET /forged HTTP/1.1\r\nHost: web\r\nX-Forwarded-Proto: https\r\n\
                   Remora-Error: no_route\r\nX-Remora-Client-Id: spiffe://cluster.local/ns/x/sa/admin\r\n\r\n";
    // Inbound: the app's request and the client's response.
    let reply = raw(&s.c, s.inbound(), request)
        .await
        .expect("inbound request");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("remora-error"),
        None,
        "the app's forged remora-error reached the client"
    );
    let last_head = |heads: &Mutex<Vec<String>>| {
        let head = heads.lock().expect("heads").last().cloned();
        head.expect("the app saw the request")
    };
    let owned_headers = |head: &str| -> Vec<String> {
        ["remora-error", "x-remora-client-id"]
            .iter()
            .flat_map(|name| head_values(head, name))
            .collect()
    };
    let head = last_head(&in_heads);
    assert_eq!(head_values(&head, "x-forwarded-proto"), ["http"], "{head}");
    assert_eq!(owned_headers(&head), Vec::<String>::new(), "{head}");
    // Outbound: a client cannot send them on either.
    let reply = raw(&s.a, s.vip(), request).await.expect("outbound request");
    assert_eq!(reply.status, 200);
    let head = last_head(&out_heads);
    assert_eq!(owned_headers(&head), Vec::<String>::new(), "{head}");
}

#[tokio::test]
async fn a_late_or_oversized_head_on_a_declared_http_port_is_answered_as_http() {
    let http = json!({ "requestHeadersTimeout": "1s" });
    let (s, out_app, in_app) =
        sides("hard_late", http, |pod| pod.spawn_http_app(APP_PORT, "app")).await;
    let before = s.scrape().await;
    both_sides!(
        s,
        |client, addr, app, side| {
            // Silent after connecting.
            let start = Instant::now();
            let mut silent = client.connect(addr).await?;
            expect_408_after_1s(&mut silent, start, "header_timeout")
                .await
                .context("a silent client")?;
            if !closes_within(&mut silent, Duration::from_secs(2)).await {
                bail!("the connection stayed open after the 408");
            }
            // Half a head, then nothing: hyper's own timer, answered by us.
            let mut partial = client.connect(addr).await?;
            partial
                .write_all(b"GET /partial HTTP/1.1\r\nHost: web\r\n")
                .await?;
            let reply = read_response(&mut partial)
                .await
                .context("a partial head")?;
            reply.expect("partial head", 408, Some("header_timeout"))?;
            // A head longer than maxHeaderBytes (64 KiB): 431, not opaque bytes.
            let long = format!(
                "GET /{} HTTP/1.1\r\nHost: web\r\n\r\n",
                "a".repeat(70 * 1024)
            );
            let reply = raw(client, addr, &long)
                .await
                .context("a 70 KiB request line")?;
            reply.expect("70 KiB request line", 431, None)?;
            if !app.requests().is_empty() {
                bail!(
                    "{side}: the app received {} request(s)",
                    app.requests().len()
                );
            }
            Ok(())
        },
        &out_app,
        &in_app
    );
    s.assert_http_errors(&before, "header_timeout", 2.0).await;
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_within_the_timeout() {
    let http = json!({ "requestBodyIdleTimeout": "1s" });
    let (s, out_app, in_app) =
        sides("hard_body", http, |pod| pod.spawn_http_app(APP_PORT, "app")).await;
    let before = s.scrape().await;
    both_sides!(
        s,
        |client, addr, _app, _side| {
            // The control: 3 pieces 600 ms apart (1.2 s in all) are not idle.
            let mut slow = client.connect(addr).await?;
            slow.write_all(b"POST /slow HTTP/1.1\r\nHost: web\r\nContent-Length: 15\r\n\r\n")
                .await?;
            for piece in ["aaaaa", "bbbbb", "ccccc"] {
                tokio::time::sleep(Duration::from_millis(600)).await;
                slow.write_all(piece.as_bytes()).await?;
            }
            let reply = read_response(&mut slow).await.context("a slow body")?;
            if reply.status != 200 {
                bail!(
                    "a body with 600 ms pauses: want 200, got {} {:?}",
                    reply.status,
                    reply.body()
                );
            }
            // 5 of 100 bytes, then nothing.
            let start = Instant::now();
            let mut stalled = client.connect(addr).await?;
            stalled
                .write_all(
                    b"POST /stalled HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\nhello",
                )
                .await?;
            expect_408_after_1s(&mut stalled, start, "body_timeout")
                .await
                .context("a stalled body")?;
            Ok(())
        },
        &out_app,
        &in_app
    );
    s.assert_http_errors(&before, "body_timeout", 1.0).await;
    // The app saw the stalled request start and then lose its body.
    for app in [&out_app, &in_app] {
        let paths: Vec<String> = app.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/slow", "/stalled"]);
    }
}

#[tokio::test]
async fn a_head_request_the_proxy_answers_itself_has_no_body_over_http2() {
    let net = TestNet::new("hard_head");
    let a = net.pod("a");
    let srv = net.pod("srv");
    // Nothing listens at the endpoint: every request gets the proxy's 502.
    let (_proxy, _file) = meshed(
        &a,
        "hard_head",
        &config("head", json!({}), srv.addr4(9), json!({})),
    )
    .await;
    let stream = a.connect(VIP.parse().expect("VIP")).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake with the proxy");
    tokio::spawn(connection);
    let mut exchange = |method: Method| {
        let req = Request::builder()
            .method(method)
            .uri("http://web.hardening/x")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let sent = sender.send_request(req);
        async move {
            let response = sent.await.map_err(|e| format!("reset or failed: {e}"))?;
            let status = response.status();
            let length = response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, length, body.len()))
        }
    };
    let (status, length, body) = exchange(Method::GET).await.expect("GET");
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        length,
        Some(body),
        "GET: content-length is the body's length"
    );
    let head = exchange(Method::HEAD).await;
    assert_eq!(
        head,
        Ok((StatusCode::BAD_GATEWAY, Some(body), 0)),
        "HEAD: the same status and content-length as GET, and no body"
    );
}
