//! Bad HTTP input at the proxy's HTTP layer, inbound (raw sockets from an
//! unmeshed pod `c` at the app port of meshed pod `b`) and outbound (raw
//! sockets from meshed pod `a` to a service virtual address in its mesh
//! config). Every bad request is answered with 400/431 or a closed
//! connection within a bound, never a hang; the app never receives it, or
//! bytes smuggled after a body; and the proxy keeps serving: `/live`, a new
//! good request, and a keep-alive connection opened before all of it.
//!
//! Each side runs all its cases and reports every failure at once, so one
//! misbehaviour does not hide the next.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use remora_e2e::http_apps::HTTP_ERRORS;
use remora_e2e::mesh_config::ConfigFile;
use remora_e2e::{App, Pod, ProxyHandle, TestNet};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

const APP_PORT: u16 = 8080;
/// The service a's mesh config routes to b's app; nothing owns the address.
const VIP: &str = "10.96.0.40:80";
/// The limits both proxies are configured with (`http` in the mesh config).
/// Far below the defaults, so passing these cases proves the configured
/// values are in force.
const MAX_HEADER_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 20;
/// How long a bad request may take to be answered or closed.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Every byte the app read on one connection, and each request it parsed.
#[derive(Debug, Default)]
struct AppLog {
    raw: Vec<u8>,
    requests: Vec<SeenRequest>,
}

#[derive(Debug, Clone)]
struct SeenRequest {
    path: String,
    /// The whole body, or why reading it failed (e.g. the proxy aborted it).
    body: Result<Vec<u8>, String>,
}

/// The app in pod b: HTTP/1.1 with keep-alive, `200 ok` to every request
/// after reading its body, and a log of what arrived.
fn spawn_recording_app(pod: &Pod) -> (App, Arc<Mutex<AppLog>>) {
    let log = Arc::new(Mutex::new(AppLog::default()));
    let app_log = log.clone();
    let app = pod.spawn_server(APP_PORT, move |stream: TcpStream| {
        let log = app_log.clone();
        async move {
            let service_log = log.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let log = service_log.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let body = match req.into_body().collect().await {
                        Ok(body) => Ok(body.to_bytes().to_vec()),
                        Err(e) => Err(e.to_string()),
                    };
                    let ok = body.is_ok();
                    log.lock()
                        .expect("app log poisoned")
                        .requests
                        .push(SeenRequest { path, body });
                    let reply = if ok { "ok" } else { "body failed" };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        reply.as_bytes(),
                    ))))
                }
            });
            let io = TokioIo::new(Recording { inner: stream, log });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        }
    });
    (app, log)
}

/// A stream that appends everything read from it to the app's log.
struct Recording {
    inner: TcpStream,
    log: Arc<Mutex<AppLog>>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let new = &buf.filled()[before..];
            self.log
                .lock()
                .expect("app log poisoned")
                .raw
                .extend_from_slice(new);
        }
        poll
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How the other end answered a raw request.
#[derive(PartialEq)]
enum Answer {
    /// A whole response: status and body.
    Response(u16, Vec<u8>),
    /// EOF or reset before a whole response head.
    Closed(String),
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Response(status, body) => {
                write!(f, "{status} {:?}", String::from_utf8_lossy(body))
            }
            Answer::Closed(how) => write!(f, "closed ({how})"),
        }
    }
}

/// A raw client connection that keeps unread bytes between responses.
struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    async fn open(pod: &Pod, addr: SocketAddr) -> anyhow::Result<RawConn> {
        let stream = pod
            .connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        Ok(RawConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Reads more bytes; `Ok(false)` on EOF.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next response (head and `Content-Length` body), or how the
    /// connection ended; an error if nothing happens within `limit`.
    async fn answer(&mut self, limit: Duration) -> anyhow::Result<Answer> {
        tokio::time::timeout(limit, self.read_answer())
            .await
            .map_err(|_| anyhow!("no response and no close within {limit:?}: the proxy hangs"))
    }

    async fn read_answer(&mut self) -> Answer {
        let head_end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => return Answer::Closed(format!("EOF after {} bytes", self.buf.len())),
                Err(e) => return Answer::Closed(format!("{e}")),
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < head_end + length {
            match self.fill().await {
                Ok(true) => {}
                _ => break,
            }
        }
        let body_end = (head_end + length).min(self.buf.len());
        let body = self.buf[head_end..body_end].to_vec();
        self.buf.drain(..body_end);
        Answer::Response(status, body)
    }

    /// Writes `bytes`, reading the answer at the same time: a proxy may
    /// answer (and close) before a large request is fully written.
    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<Answer> {
        let (mut read, mut write) = self.stream.split();
        let writer = async {
            // A failed write is fine: the proxy may close early.
            let _ = write.write_all(bytes).await;
        };
        let mut buf = std::mem::take(&mut self.buf);
        let reader = async {
            let mut chunk = [0; 16 * 1024];
            // Wait for the first bytes (or the end) while writing.
            match tokio::time::timeout(ANSWER_WITHIN, read.read(&mut chunk)).await {
                Ok(Ok(n)) => {
                    buf.extend_from_slice(&chunk[..n]);
                    Ok(n)
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Ok(usize::MAX),
            }
        };
        let ((), first) = tokio::join!(writer, reader);
        self.buf = buf;
        match first {
            Ok(usize::MAX) => {
                bail!("no response and no close within {ANSWER_WITHIN:?}: the proxy hangs")
            }
            Ok(0) if self.buf.is_empty() => Ok(Answer::Closed("EOF".into())),
            Ok(_) => self.answer(ANSWER_WITHIN).await,
            Err(e) => Ok(Answer::Closed(e.to_string())),
        }
    }
}

/// 400 or 431 (as `allowed`), or a closed connection: anything else fails.
fn rejected(answer: &Answer, allowed: &[u16]) -> anyhow::Result<()> {
    match answer {
        Answer::Closed(_) => Ok(()),
        Answer::Response(status, _) if allowed.contains(status) => Ok(()),
        Answer::Response(status, body) => bail!(
            "expected {allowed:?} or a close, got {status}: {:?}",
            String::from_utf8_lossy(body)
        ),
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").into_bytes()
}

/// One side under test: where the raw client runs, where it connects, and
/// the proxy that parses what it sends.
struct Side<'a> {
    name: &'static str,
    client: &'a Pod,
    target: SocketAddr,
    proxy: &'a mut ProxyHandle,
    app: Arc<Mutex<AppLog>>,
}

impl Side<'_> {
    fn seen(&self) -> Vec<SeenRequest> {
        self.app.lock().expect("app log poisoned").requests.clone()
    }

    fn raw_seen(&self) -> Vec<u8> {
        self.app.lock().expect("app log poisoned").raw.clone()
    }

    fn ensure_app_never_saw(&self, path: &str) -> anyhow::Result<()> {
        let seen: Vec<String> = self.seen().into_iter().map(|r| r.path).collect();
        ensure!(
            !seen.iter().any(|p| p == path),
            "the app received the rejected request {path}; it saw {seen:?}"
        );
        Ok(())
    }

    /// A good request on a fresh connection is answered `200 ok`.
    async fn good_request(&self, path: &str) -> anyhow::Result<()> {
        let mut conn = RawConn::open(self.client, self.target).await?;
        let answer = conn.send(&get(path)).await?;
        ensure!(
            answer == Answer::Response(200, b"ok".to_vec()),
            "good request {path}: expected 200 ok, got {answer:?}"
        );
        Ok(())
    }

    /// The proxy is alive and still serves a new good request.
    async fn still_serving(&mut self, after: &str) -> anyhow::Result<()> {
        if let Some(status) = self.proxy.try_wait() {
            bail!("the proxy exited with {status} after {after}");
        }
        let live = self
            .proxy
            .get("/live")
            .await
            .with_context(|| format!("GET /live after {after}"))?;
        ensure!(
            live.status == 200,
            "GET /live after {after}: {}",
            live.status
        );
        self.good_request(&format!("/good-after-{after}"))
            .await
            .with_context(|| format!("a new request after {after}"))
    }

    async fn malformed_request_line(&self) -> anyhow::Result<()> {
        // Starts like HTTP/1.1 (so the proxy takes it as HTTP), but the
        // target has a space in it: no valid request line.
        let mut conn = RawConn::open(self.client, self.target).await?;
        let answer = conn
            .send(b"GET /bad target HTTP/1.1\r\nHost: app\r\n\r\n")
            .await?;
        rejected(&answer, &[400])?;
        self.ensure_app_never_saw("/bad")
    }

    async fn malformed_header_line(&self) -> anyhow::Result<()> {
        let mut conn = RawConn::open(self.client, self.target).await?;
        let answer = conn
            .send(b"GET /bad-header HTTP/1.1\r\nHost: app\r\nthis line has no colon\r\n\r\n")
            .await?;
        rejected(&answer, &[400])?;
        self.ensure_app_never_saw("/bad-header")
    }

    async fn headers_within_limits_pass(&self) -> anyhow::Result<()> {
        // The control for the two limit cases: close to both limits, fine.
        let mut request = b"GET /near-limits HTTP/1.1\r\nHost: app\r\n".to_vec();
        for i in 0..MAX_HEADERS - 5 {
            request.extend_from_slice(format!("x-pad-{i}: {}\r\n", "p".repeat(500)).as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        let mut conn = RawConn::open(self.client, self.target).await?;
        let answer = conn.send(&request).await?;
        ensure!(
            answer == Answer::Response(200, b"ok".to_vec()),
            "{} headers in {} bytes (within both limits): expected 200 ok, got {answer:?}",
            MAX_HEADERS - 5,
            request.len()
        );
        Ok(())
    }

    async fn oversized_headers(&self) -> anyhow::Result<()> {
        // 100 KiB of headers in 10 fields: only the byte limit is exceeded.
        let mut request = b"GET /oversized HTTP/1.1\r\nHost: app\r\n".to_vec();
        for i in 0..10 {
            request
                .extend_from_slice(format!("x-big-{i}: {}\r\n", "b".repeat(10 * 1024)).as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        let mut conn = RawConn::open(self.client, self.target).await?;
        let answer = conn.send(&request).await?;
        rejected(&answer, &[431])
            .with_context(|| format!("100 KiB of headers, limit {MAX_HEADER_BYTES}"))?;
        self.ensure_app_never_saw("/oversized")
    }

    async fn too_many_headers(&self) -> anyhow::Result<()> {
        // 3 x the field limit, but only ~1 KiB: only the count is exceeded.
        let mut request = b"GET /too-many HTTP/1.1\r\nHost: app\r\n".to_vec();
        for i in 0..MAX_HEADERS * 3 {
            request.extend_from_slice(format!("x-n-{i}: {i}\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        let mut conn = RawConn::open(self.client, self.target).await?;
        let answer = conn.send(&request).await?;
        rejected(&answer, &[431])
            .with_context(|| format!("{} header fields, limit {MAX_HEADERS}", MAX_HEADERS * 3))?;
        self.ensure_app_never_saw("/too-many")
    }

    async fn body_longer_than_content_length(&self) -> anyhow::Result<()> {
        const EXTRA: &str = "SMUGGLED-EXTRA-BYTES";
        let mut conn = RawConn::open(self.client, self.target).await?;
        let request = format!(
            "POST /cl-extra HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello{EXTRA}\r\n\r\n"
        );
        let first = conn.send(request.as_bytes()).await?;
        ensure!(
            first == Answer::Response(200, b"ok".to_vec()),
            "the request with Content-Length 5: expected 200 ok, got {first:?}"
        );
        // The extra bytes are no request: 400 or close, never a hang.
        let next = conn.answer(ANSWER_WITHIN).await?;
        rejected(&next, &[400]).context("the bytes after the body")?;

        let bodies: Vec<_> = self
            .seen()
            .into_iter()
            .filter(|r| r.path == "/cl-extra")
            .map(|r| r.body)
            .collect();
        ensure!(
            bodies == [Ok(b"hello".to_vec())],
            "the app must get exactly the 5 declared bytes once; it got {bodies:?}"
        );
        let raw = self.raw_seen();
        ensure!(
            !raw.windows(EXTRA.len()).any(|w| w == EXTRA.as_bytes()),
            "the bytes after the body reached the app:\n{}",
            String::from_utf8_lossy(&raw)
        );
        Ok(())
    }

    async fn body_shorter_than_content_length(&self) -> anyhow::Result<()> {
        let mut conn = RawConn::open(self.client, self.target).await?;
        conn.stream
            .write_all(
                b"POST /cl-short HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\nonly 13 bytes",
            )
            .await?;
        // The client gives up: it will never send the other 87 bytes.
        conn.stream.shutdown().await?;
        let answer = conn.answer(ANSWER_WITHIN).await?;
        if let Answer::Response(status, body) = &answer {
            ensure!(
                !(200..300).contains(status),
                "an incomplete request must not succeed, got {status}: {:?}",
                String::from_utf8_lossy(body)
            );
        }
        // Give an aborted upstream request time to reach the app.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let complete: Vec<_> = self
            .seen()
            .into_iter()
            .filter(|r| r.path == "/cl-short" && r.body.is_ok())
            .collect();
        ensure!(
            complete.is_empty(),
            "the app got the truncated request as a complete one: {complete:?}"
        );
        Ok(())
    }

    async fn truncated_body_is_not_blamed_on_the_upstream(&self) -> anyhow::Result<()> {
        // The client broke its own request. Counting that as an upstream
        // failure (502, `reason="upstream"`) misleads operators, and on the
        // outbound side it feeds outlier detection: a few such clients would
        // eject a healthy endpoint.
        let upstream_errors = &[("direction", self.name), ("reason", "upstream")];
        let before = self.proxy.metrics().await;
        let mut conn = RawConn::open(self.client, self.target).await?;
        conn.stream
            .write_all(b"POST /cl-short-2 HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\nonly 13 bytes")
            .await?;
        conn.stream.shutdown().await?;
        let answer = conn.answer(ANSWER_WITHIN).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = self.proxy.metrics().await;
        let blamed = after.since(&before, HTTP_ERRORS, upstream_errors);
        ensure!(
            blamed == 0.0,
            "a client's truncated body was counted as {blamed} upstream error(s) \
             (client got {answer:?})"
        );
        if let Answer::Response(status, body) = &answer {
            ensure!(
                !(500..600).contains(status),
                "a client's truncated body was answered as a server-side failure, {status}: {:?}",
                String::from_utf8_lossy(body)
            );
        }
        Ok(())
    }

    async fn garbage_http2_frame(&self) -> anyhow::Result<()> {
        let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // An empty SETTINGS frame, as clients send after the preface...
        request.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        // ...then a frame header claiming a 16 MiB frame of an unknown type
        // with every flag set: larger than any allowed frame size.
        request.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]);
        request.extend_from_slice(&[0xaa; 64]);
        let mut conn = RawConn::open(self.client, self.target).await?;
        conn.stream.write_all(&request).await?;
        // The connection must end (after a GOAWAY, ideally) within the bound.
        let ended = tokio::time::timeout(ANSWER_WITHIN, async {
            loop {
                match conn.fill().await {
                    Ok(true) => continue,
                    Ok(false) | Err(_) => return,
                }
            }
        })
        .await;
        ensure!(
            ended.is_ok(),
            "connection still open {ANSWER_WITHIN:?} after a garbage HTTP/2 frame; got {} bytes: {:02x?}",
            conn.buf.len(),
            &conn.buf[..conn.buf.len().min(64)]
        );
        Ok(())
    }
}

/// Runs every case on `side`, with a keep-alive connection opened before
/// and used after all of them, and fails with every failed case listed.
async fn run_all_cases(mut side: Side<'_>) {
    let mut keep_alive = RawConn::open(side.client, side.target)
        .await
        .expect("open the keep-alive connection");
    let first = keep_alive.send(&get("/keep-alive-1")).await;
    assert_eq!(
        first.ok(),
        Some(Answer::Response(200, b"ok".to_vec())),
        "{}: the first request on the keep-alive connection",
        side.name
    );

    let mut failures = Vec::new();
    macro_rules! case {
        ($name:literal, $case:ident) => {
            if let Err(e) = side.$case().await {
                failures.push(format!("{}: {}: {e:#}", side.name, $name));
            }
            if let Err(e) = side.still_serving(stringify!($case)).await {
                failures.push(format!(
                    "{}: proxy not serving after {}: {e:#}",
                    side.name, $name
                ));
            }
        };
    }
    case!("malformed request line", malformed_request_line);
    case!("malformed header line", malformed_header_line);
    case!("headers within the limits", headers_within_limits_pass);
    case!("headers over maxHeaderBytes", oversized_headers);
    case!("more fields than maxHeaders", too_many_headers);
    case!(
        "body longer than Content-Length",
        body_longer_than_content_length
    );
    case!(
        "body shorter than Content-Length, then close",
        body_shorter_than_content_length
    );
    case!(
        "truncated body is the client's fault",
        truncated_body_is_not_blamed_on_the_upstream
    );
    case!(
        "garbage HTTP/2 frame after the preface",
        garbage_http2_frame
    );

    // The connection opened before all of that still works.
    let last = keep_alive.send(&get("/keep-alive-2")).await;
    if last.as_ref().ok() != Some(&Answer::Response(200, b"ok".to_vec())) {
        failures.push(format!(
            "{}: the keep-alive connection opened before the bad input: expected 200 ok, got {last:?}",
            side.name
        ));
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// The mesh config both proxies get: tight HTTP limits and, for a's
/// outbound, the service at [`VIP`] routed to b's app.
fn write_config(test: &str, app: SocketAddr) -> ConfigFile {
    let vip: SocketAddr = VIP.parse().expect("VIP");
    let config = ConfigFile::new(test);
    config.write_json(&json!({
        "version": "bad-input-e2e",
        "http": { "maxHeaderBytes": MAX_HEADER_BYTES, "maxHeaders": MAX_HEADERS },
        "outbound": { "services": [{
            "name": "web.bad-input",
            "addresses": [vip.ip().to_string()],
            "ports": [{ "port": vip.port(), "backendRefs": [{ "name": "app" }] }],
        }]},
        "backends": { "app": { "endpoints": [{ "address": app.to_string() }] } },
    }));
    config
}

#[tokio::test]
async fn inbound_bad_http_is_rejected_and_the_proxy_keeps_serving() {
    let net = TestNet::new("httpbad_inbound");
    let b = net.pod("b");
    let c = net.pod("c");
    let (_app, log) = spawn_recording_app(&b);
    let config = write_config("httpbad_inbound", b.addr4(APP_PORT));
    let mut proxy_b = b.mesh_with(&[], &config.proxy_args()).await;
    run_all_cases(Side {
        name: "inbound",
        client: &c,
        target: b.addr4(APP_PORT),
        proxy: &mut proxy_b,
        app: log,
    })
    .await;
}

#[tokio::test]
async fn outbound_bad_http_is_rejected_and_the_proxy_keeps_serving() {
    let net = TestNet::new("httpbad_outbound");
    let a = net.pod("a");
    let b = net.pod("b");
    let (_app, log) = spawn_recording_app(&b);
    let config = write_config("httpbad_outbound", b.addr4(APP_PORT));
    let mut proxy_a = a.mesh_with(&[], &config.proxy_args()).await;
    let mut proxy_b = b.mesh_with(&[], &config.proxy_args()).await;
    run_all_cases(Side {
        name: "outbound",
        client: &a,
        target: VIP.parse().expect("VIP"),
        proxy: &mut proxy_a,
        app: log,
    })
    .await;
    // b's proxy only ever saw well-formed requests from a's proxy.
    proxy_b.assert_up().await;
}
