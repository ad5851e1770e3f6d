//! HTTP/2 with prior knowledge through the mesh: a client in pod `a` talks
//! h2c to a service virtual address from a's mesh config; a's proxy routes
//! each request to the app in pod `b`, through b's inbound proxy. One client
//! connection carries 100 concurrent streams, 10 MiB bodies stream intact
//! both ways, and `curl --http2-prior-knowledge` works.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_e2e::http_apps::{HttpClient, REQUESTS};
use remora_e2e::mesh_config::ConfigFile;
use remora_e2e::metrics::OPENED;
use remora_e2e::{within, App, Pod, ProxyHandle, TestNet, INBOUND, WAIT};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

type Body = BoxBody<Bytes, Infallible>;

const APP_PORT: u16 = 8080;
/// The service's virtual address: nothing owns it, so only a's capture and
/// mesh config can get a request there.
const VIP: &str = "10.96.0.30:80";
const SERVICE: &str = "h2.default";
const TEN_MIB: usize = 10 * 1024 * 1024;
/// How long the app holds each `/slow` request: 100 of them one after
/// another would take 20 s, far past the test's bound.
const SLOW: Duration = Duration::from_millis(200);

const H2_OUT: &[(&str, &str)] = &[("direction", "outbound"), ("protocol", "h2")];
const H2_IN: &[(&str, &str)] = &[("direction", "inbound"), ("protocol", "h2")];

/// `len` bytes of a fixed pseudo-random pattern (no long runs that would
/// hide a dropped or repeated chunk).
fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

/// A body sent as many 64 KiB DATA frames, so it streams rather than
/// arriving as one buffer.
fn chunked(data: Vec<u8>) -> Body {
    let data = Bytes::from(data);
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..data.len())
        .step_by(64 * 1024)
        .map(|start| {
            Ok(Frame::data(
                data.slice(start..(start + 64 * 1024).min(data.len())),
            ))
        })
        .collect();
    StreamBody::new(tokio_stream::iter(frames)).boxed()
}

/// The app in pod b: an HTTP/2-only (prior knowledge) server.
/// - `GET /hello`: `hello over h2`
/// - `GET /slow/<n>`: waits [`SLOW`], then answers `<n>`; counts how many
///   are in flight at once
/// - `POST /sha256`: the SHA-256 of the request body, in hex
/// - `GET /download`: [`TEN_MIB`] bytes of [`pattern`], in many frames
struct H2App {
    _app: App,
    most_in_flight: Arc<AtomicUsize>,
}

fn spawn_h2_app(pod: &Pod) -> H2App {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let counters = (in_flight, most_in_flight.clone());
    let app = pod.spawn_server(APP_PORT, move |stream: TcpStream| {
        let counters = counters.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let counters = counters.clone();
                async move { Ok::<_, Infallible>(h2_app(req, &counters.0, &counters.1).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
    H2App {
        _app: app,
        most_in_flight,
    }
}

async fn h2_app(
    req: Request<Incoming>,
    in_flight: &AtomicUsize,
    most_in_flight: &AtomicUsize,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/hello") => Response::new(full("hello over h2")),
        (Method::GET, slow) if slow.starts_with("/slow/") => {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(SLOW).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Response::new(full(slow["/slow/".len()..].to_string()))
        }
        (Method::POST, "/sha256") => match req.into_body().collect().await {
            Ok(body) => Response::new(full(sha256_hex(&body.to_bytes()))),
            Err(e) => Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full(format!("reading the body failed: {e}")))
                .expect("valid response"),
        },
        (Method::GET, "/download") => Response::new(chunked(pattern(TEN_MIB))),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("no such path"))
            .expect("valid response"),
    }
}

/// One HTTP/2 prior-knowledge client connection from `pod` to `addr`.
async fn h2_connect(pod: &Pod, addr: SocketAddr) -> SendRequest<Body> {
    let stream = pod.connect(addr).await.expect("connect from the pod");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake through the proxies");
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("client HTTP/2 connection ended: {e}");
        }
    });
    sender
}

/// Sends `req` on `sender` and returns the status and the whole body.
async fn send(sender: &SendRequest<Body>, req: Request<Body>) -> (StatusCode, Bytes) {
    let mut sender = sender.clone();
    let response = sender
        .send_request(req)
        .await
        .expect("a response through the proxies");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the whole response body")
        .to_bytes();
    (status, body)
}

fn request(method: Method, addr: SocketAddr, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(body)
        .expect("valid request")
}

fn vip() -> SocketAddr {
    VIP.parse().expect("VIP")
}

/// Pod `a` (client, meshed with a config naming the service at [`VIP`],
/// `protocol: http` so its proxy detects HTTP/2) and pod `b` (the app,
/// meshed with defaults).
struct H2Mesh {
    a: Pod,
    app: H2App,
    proxy_a: ProxyHandle,
    proxy_b: ProxyHandle,
    _config: ConfigFile,
    _net: TestNet,
}

async fn h2_mesh(test: &str) -> H2Mesh {
    let net = TestNet::new(test);
    let a = net.pod("a");
    let b = net.pod("b");
    let app = spawn_h2_app(&b);
    let config = ConfigFile::new(test);
    config.write_json(&json!({
        "version": "http2-e2e",
        "outbound": { "services": [{
            "name": SERVICE,
            "addresses": [vip().ip().to_string()],
            "ports": [{
                "port": vip().port(),
                "protocol": "http",
                "backendRefs": [{ "name": "h2-app" }],
            }],
        }]},
        "backends": {
            "h2-app": { "endpoints": [{ "address": b.addr4(APP_PORT).to_string() }] },
        },
    }));
    let proxy_a = a.mesh_with(&[], &config.proxy_args()).await;
    // One worker (current-thread runtime) on the server side.
    let proxy_b = b.mesh_with(&[], &["--workers", "1"]).await;
    H2Mesh {
        a,
        app,
        proxy_a,
        proxy_b,
        _config: config,
        _net: net,
    }
}

#[tokio::test]
async fn one_client_connection_carries_100_concurrent_streams() {
    let mesh = h2_mesh("h2_streams").await;
    let (a0, b0) = (mesh.proxy_a.metrics().await, mesh.proxy_b.metrics().await);
    let target = vip();
    let sender = h2_connect(&mesh.a, target).await;

    let calls = (0..100).map(|i| {
        let sender = sender.clone();
        async move {
            let (status, body) = send(
                &sender,
                request(Method::GET, target, &format!("/slow/{i}"), full("")),
            )
            .await;
            (i, status, body)
        }
    });
    // Bounded well below 100 x SLOW: the streams must run side by side.
    let results = within(
        Duration::from_secs(5),
        "100 concurrent streams",
        futures_util::future::join_all(calls),
    )
    .await;
    for (i, status, body) in results {
        assert_eq!(status, StatusCode::OK, "stream {i}: status");
        assert_eq!(body, i.to_string(), "stream {i}: its own body");
    }
    let most = mesh.app.most_in_flight.load(Ordering::SeqCst);
    assert!(
        most >= 50,
        "the app saw at most {most} requests at once: the proxies serialize streams"
    );

    let a1 = mesh.proxy_a.metrics().await;
    let b1 = mesh.proxy_b.metrics().await;
    assert_eq!(
        a1.since(&a0, OPENED, H2_OUT),
        1.0,
        "a's proxy: the client's one connection, detected as h2\n{a1}"
    );
    assert_eq!(
        b1.since(&b0, OPENED, H2_IN),
        1.0,
        "b's proxy: one inbound h2 connection from a's proxy, however many streams \
         arrive at once (its HTTP/2 dials are single-flight)\n{b1}"
    );
    let outbound_ok = &[
        ("direction", "outbound"),
        ("service", SERVICE),
        ("status", "200"),
    ];
    assert_eq!(
        a1.since(&a0, REQUESTS, outbound_ok),
        100.0,
        "a's proxy: 100 requests to {SERVICE}, each its own request\n{a1}"
    );
    assert_eq!(
        b1.since(&b0, REQUESTS, INBOUND),
        100.0,
        "b's proxy: 100 inbound requests\n{b1}"
    );
}

#[tokio::test]
async fn ten_mib_request_and_response_bodies_stream_intact() {
    let mesh = h2_mesh("h2_bodies").await;
    let target = vip();
    let sender = h2_connect(&mesh.a, target).await;

    // Upload: the app hashes what it received.
    let upload = pattern(TEN_MIB);
    let expected = sha256_hex(&upload);
    let (status, digest) = within(
        WAIT,
        "the 10 MiB upload",
        send(
            &sender,
            request(Method::POST, target, "/sha256", chunked(upload)),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "upload status");
    assert_eq!(
        digest, expected,
        "SHA-256 of the 10 MiB request body as the app received it"
    );

    // Download: we hash what arrives.
    let (status, body) = within(
        WAIT,
        "the 10 MiB download",
        send(&sender, request(Method::GET, target, "/download", full(""))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "download status");
    assert_eq!(body.len(), TEN_MIB, "10 MiB response body length");
    assert_eq!(
        sha256_hex(&body),
        sha256_hex(&pattern(TEN_MIB)),
        "SHA-256 of the 10 MiB response body"
    );
}

#[tokio::test]
async fn curl_with_http2_prior_knowledge_works_through_the_mesh() {
    let mesh = h2_mesh("h2_curl").await;
    let a0 = mesh.proxy_a.metrics().await;
    let url = format!("http://{VIP}/hello");
    let a = mesh.a.clone();
    // curl blocks: run it off the runtime that serves the app.
    let output = within(
        WAIT + Duration::from_secs(2),
        "curl",
        tokio::task::spawn_blocking(move || {
            a.exec(
                "curl",
                &[
                    "--http2-prior-knowledge",
                    "-sS",
                    "--max-time",
                    "10",
                    "-w",
                    "\n%{http_code} %{http_version}",
                    &url,
                ],
            )
        }),
    )
    .await
    .expect("curl finished");
    assert_eq!(
        output, "hello over h2\n200 2",
        "curl's body, status and HTTP version"
    );
    let a1 = mesh.proxy_a.metrics().await;
    assert_eq!(
        a1.since(&a0, OPENED, H2_OUT),
        1.0,
        "curl's connection detected as h2\n{a1}"
    );
    assert_eq!(
        a1.since(&a0, REQUESTS, &[("service", SERVICE), ("status", "200")]),
        1.0,
        "curl's request routed to {SERVICE}\n{a1}"
    );
}

/// What an app saw of one request: its HTTP version, the URI's authority
/// (HTTP/2's `:authority`) and its `Host` headers.
#[derive(Debug, Clone)]
struct SeenHost {
    version: http::Version,
    authority: Option<String>,
    host: Vec<String>,
}

impl SeenHost {
    /// The host the request is for: `:authority` over HTTP/2, `Host` over
    /// HTTP/1.1. A request carrying both with different values fails the
    /// test, as it would confuse an app.
    fn effective(&self) -> String {
        let host = self.host.first().cloned();
        match (&self.authority, &host) {
            (Some(a), Some(h)) => {
                assert_eq!(a, h, ":authority and Host disagree: {self:?}");
                a.clone()
            }
            (Some(a), None) => a.clone(),
            (None, Some(h)) => h.clone(),
            (None, None) => panic!("a request with neither :authority nor Host: {self:?}"),
        }
    }
}

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An app on `port` that records the host of every request and answers
/// `200 host-recorder`. With `http1` it also speaks HTTP/1.1, choosing by
/// the connection's first bytes; without, it speaks only HTTP/2.
fn spawn_host_recorder(pod: &Pod, port: u16, http1: bool) -> (App, Arc<Mutex<Vec<SeenHost>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = pod.spawn_server(port, move |stream: TcpStream| {
        let record = record.clone();
        async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let record = record.clone();
                async move {
                    record.lock().expect("seen poisoned").push(SeenHost {
                        version: req.version(),
                        authority: req.uri().authority().map(|a| a.to_string()),
                        host: req
                            .headers()
                            .get_all(http::header::HOST)
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .collect(),
                    });
                    Ok::<_, Infallible>(Response::new(full("host-recorder")))
                }
            });
            if http1 && !starts_with_h2_preface(&stream).await {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            } else {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        }
    });
    (app, seen)
}

/// Peeks at the first bytes until they show whether they are the HTTP/2
/// preface (bounded by [`WAIT`]).
async fn starts_with_h2_preface(stream: &TcpStream) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `URLRewrite` with `hostname` is what the backend sees as its host,
/// whichever HTTP version each side speaks: an HTTP/2 client on an `http2`
/// port (HTTP/2 on both sides: the rewrite must reach `:authority`), and an
/// HTTP/1.1 client and an HTTP/2 client on an `http` port (each forwarded
/// in its own version: `Host`, then `:authority`).
///
/// An HTTP/1.1 client cannot use an `http2` port at all (it is declared
/// prior-knowledge HTTP/2, so its bytes are not detected), which is why the
/// HTTP/1.1 client talks to the `http` port.
#[tokio::test]
async fn url_rewrite_hostname_reaches_the_backend_over_http2_and_http1() {
    const H2_VIP: &str = "10.96.0.30:80";
    const MIXED_VIP: &str = "10.96.0.31:80";
    const H2_PORT: u16 = 8081;
    const MIXED_PORT: u16 = 8082;
    let net = TestNet::new("h2_rewrite_host");
    let a = net.pod("a");
    let b = net.pod("b");
    let (_h2_app, h2_seen) = spawn_host_recorder(&b, H2_PORT, false);
    let (_mixed_app, mixed_seen) = spawn_host_recorder(&b, MIXED_PORT, true);
    let rewrite_route = |backend: &str| {
        json!([{
            "name": "rewrite-host",
            "filters": [{ "type": "URLRewrite", "urlRewrite": { "hostname": "rewritten.example" } }],
            "backendRefs": [{ "name": backend }],
        }])
    };
    let config = ConfigFile::new("h2_rewrite_host");
    config.write_json(&json!({
        "version": "rewrite-host",
        "outbound": { "services": [
            {
                "name": "h2only.default",
                "addresses": ["10.96.0.30"],
                "ports": [{ "port": 80, "protocol": "http2", "routes": rewrite_route("h2only") }],
            },
            {
                "name": "mixed.default",
                "addresses": ["10.96.0.31"],
                "ports": [{ "port": 80, "protocol": "http", "routes": rewrite_route("mixed") }],
            },
        ]},
        "backends": {
            "h2only": { "endpoints": [{ "address": b.addr4(H2_PORT).to_string() }] },
            "mixed": { "endpoints": [{ "address": b.addr4(MIXED_PORT).to_string() }] },
        },
    }));
    let _proxy_a = a.mesh_with(&[], &config.proxy_args()).await;

    // HTTP/2 client, `http2` port: HTTP/2 on both sides.
    let h2_vip: SocketAddr = H2_VIP.parse().unwrap();
    let sender = within(WAIT, "the h2 connection", h2_connect(&a, h2_vip)).await;
    let (status, body) = within(
        WAIT,
        "GET over h2 to the http2 port",
        send(&sender, request(Method::GET, h2_vip, "/h2", full(""))),
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"host-recorder"[..]));
    let seen = h2_seen.lock().expect("seen poisoned").clone();
    assert_eq!(seen.len(), 1, "one request at the h2 app: {seen:?}");
    assert_eq!(seen[0].version, http::Version::HTTP_2, "{seen:?}");
    assert_eq!(
        seen[0].effective(),
        "rewritten.example",
        "the host the backend saw, HTTP/2 client -> http2 port: {seen:?}"
    );

    // HTTP/1.1 client, `http` port: HTTP/1.1 on both sides.
    let mixed_vip: SocketAddr = MIXED_VIP.parse().unwrap();
    let reply = HttpClient::new(&a, mixed_vip)
        .get("/h1")
        .await
        .expect("GET over HTTP/1.1 to the http port");
    assert_eq!((reply.status, reply.body.as_str()), (200, "host-recorder"));
    // HTTP/2 client, `http` port: detected, forwarded over HTTP/2.
    let sender = within(WAIT, "the h2 connection", h2_connect(&a, mixed_vip)).await;
    let (status, _) = within(
        WAIT,
        "GET over h2 to the http port",
        send(&sender, request(Method::GET, mixed_vip, "/h2", full(""))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = mixed_seen.lock().expect("seen poisoned").clone();
    assert_eq!(seen.len(), 2, "two requests at the mixed app: {seen:?}");
    assert_eq!(
        (seen[0].version, seen[0].effective().as_str()),
        (http::Version::HTTP_11, "rewritten.example"),
        "the host the backend saw, HTTP/1.1 client -> http port: {seen:?}"
    );
    assert_eq!(
        (seen[1].version, seen[1].effective().as_str()),
        (http::Version::HTTP_2, "rewritten.example"),
        "the host the backend saw, HTTP/2 client -> http port: {seen:?}"
    );
}
