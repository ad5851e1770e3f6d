//! HTTP apps with identities, and a real HTTP client, for the end-to-end
//! tests of the proxy's HTTP layer (routing, splits, balancing, resilience).
//!
//! An [`HttpApp`] is a hyper HTTP/1.1 server in a pod that answers every
//! request with its own name (body and `x-pod` header), records what it
//! received (so tests see the headers and path a backend saw, and count
//! upstream attempts), and can be made slow, made to fail, or stopped so
//! that connections are refused. An [`HttpClient`] is a keep-alive hyper
//! client whose socket belongs to a pod, so the pod's capture rules apply.
//!
//! This module owns app and client plumbing only; what is asserted lives in
//! `tests/tests/*.rs`, and configs are built in `mesh_config`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};

use crate::netns::Pod;
use crate::WAIT;

/// `remora_requests_total{direction,service,route,backend,status}`
pub const REQUESTS: &str = "remora_requests_total";
/// `remora_request_duration_seconds{direction,service,route,backend}` (histogram)
pub const REQUEST_DURATION_COUNT: &str = "remora_request_duration_seconds_count";
/// `remora_http_errors_total{direction,reason}`
pub const HTTP_ERRORS: &str = "remora_http_errors_total";
/// `remora_retries_total{service,route,backend}`
pub const RETRIES: &str = "remora_retries_total";
/// `remora_outlier_ejections_total{backend}`
pub const OUTLIER_EJECTIONS: &str = "remora_outlier_ejections_total";
/// `remora_config_updates_total{result="applied"|"rejected"}`
pub const CONFIG_UPDATES: &str = "remora_config_updates_total";
/// The header an app names itself in (its body says the same).
pub const POD_HEADER: &str = "x-pod";
/// The header on responses the proxy made itself, naming the reason.
pub const ERROR_HEADER: &str = "remora-error";

/// What an app does with the next requests.
const BEHAVE_OK: u16 = 0;
/// Drop the connection without answering.
const BEHAVE_CLOSE: u16 = 1;

/// One request as an app received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: Method,
    /// Path and query, as on the request line.
    pub path: String,
    pub headers: HeaderMap,
}

impl SeenRequest {
    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

#[derive(Debug)]
struct AppState {
    name: String,
    received: AtomicUsize,
    in_flight: AtomicUsize,
    delay_ms: AtomicU64,
    behaviour: AtomicU16,
    seen: Mutex<Vec<SeenRequest>>,
    peers: Mutex<Vec<SocketAddr>>,
    connections: Mutex<Vec<AbortHandle>>,
}

/// An HTTP/1.1 app in a pod that answers with its name; stopped on drop.
#[derive(Debug)]
pub struct HttpApp {
    port: u16,
    addr: SocketAddr,
    state: Arc<AppState>,
    listeners: Vec<JoinHandle<()>>,
}

impl Pod {
    /// Starts an HTTP app called `name` on `port` (IPv4 and IPv6). It
    /// answers `200` with body `name` and header `x-pod: name`.
    pub fn spawn_http_app(&self, port: u16, name: &str) -> HttpApp {
        let state = Arc::new(AppState {
            name: name.to_owned(),
            received: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            behaviour: AtomicU16::new(BEHAVE_OK),
            seen: Mutex::new(Vec::new()),
            peers: Mutex::new(Vec::new()),
            connections: Mutex::new(Vec::new()),
        });
        let listeners = [self.listen_tcp(port), self.listen_tcp6(port)]
            .into_iter()
            .map(|listener| tokio::spawn(accept_loop(listener, state.clone())))
            .collect();
        HttpApp {
            port,
            addr: self.addr4(port),
            state,
            listeners,
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<AppState>) {
    while let Ok((stream, peer)) = listener.accept().await {
        state.peers.lock().expect("peers poisoned").push(peer);
        let conn_state = state.clone();
        let task = tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, conn_state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let mut connections = state.connections.lock().expect("connections poisoned");
        connections.retain(|c| !c.is_finished());
        connections.push(task.abort_handle());
    }
}

async fn handle(req: Request<Incoming>, state: Arc<AppState>) -> io::Result<Response<Full<Bytes>>> {
    let (parts, body) = req.into_parts();
    state.seen.lock().expect("seen poisoned").push(SeenRequest {
        method: parts.method.clone(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |p| p.as_str().to_owned()),
        headers: parts.headers.clone(),
    });
    // Counted once recorded: a test that waits for the count finds the
    // request in `requests()` too.
    state.received.fetch_add(1, Ordering::SeqCst);
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _ = body.collect().await;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let status = match state.behaviour.load(Ordering::SeqCst) {
        BEHAVE_OK => StatusCode::OK,
        // An error from the service makes hyper drop the connection unanswered.
        BEHAVE_CLOSE => return Err(io::Error::other("told to close")),
        code => StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    };
    Ok(Response::builder()
        .status(status)
        .header(POD_HEADER, state.name.as_str())
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(state.name.clone())))
        .expect("static response parts are valid"))
}

impl HttpApp {
    /// The app's name: its response body and `x-pod` header.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `pod-ip:port` over IPv4: what a backend endpoint names.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far (every upstream attempt counts once).
    pub fn received(&self) -> usize {
        self.state.received.load(Ordering::SeqCst)
    }

    /// Requests being handled right now (inside the delay).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The peer address of every connection accepted so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.state.peers.lock().expect("peers poisoned").clone()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.seen.lock().expect("seen poisoned").clone()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<SeenRequest> {
        self.state
            .seen
            .lock()
            .expect("seen poisoned")
            .last()
            .cloned()
    }

    /// Sleep this long before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Answer every request with `status` (and the usual body).
    pub fn fail_with(&self, status: u16) {
        assert!(
            (200..=599).contains(&status),
            "status {status} out of range"
        );
        self.state.behaviour.store(status, Ordering::SeqCst);
    }

    /// Drop each connection on its next request without answering.
    pub fn close_on_request(&self) {
        self.state.behaviour.store(BEHAVE_CLOSE, Ordering::SeqCst);
    }

    /// Answer `200` again.
    pub fn recover(&self) {
        self.state.behaviour.store(BEHAVE_OK, Ordering::SeqCst);
    }

    /// Kills the app as a crash would: the listeners close (new connections
    /// are refused) and every open connection is dropped, mid-request or not.
    pub async fn stop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
        for listener in self.listeners.drain(..) {
            let _ = listener.await;
        }
        let connections =
            std::mem::take(&mut *self.state.connections.lock().expect("connections poisoned"));
        for connection in connections {
            connection.abort();
        }
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
        let connections = std::mem::take(
            &mut *self
                .state
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for connection in connections {
            connection.abort();
        }
    }
}

/// A request to send: method, origin-form path, extra headers, `Host`.
#[derive(Debug, Clone)]
pub struct Req {
    method: Method,
    path: String,
    host: Option<String>,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Req {
    /// `GET path`.
    pub fn get(path: &str) -> Req {
        Req::new(Method::GET, path)
    }

    /// `method path`.
    pub fn new(method: Method, path: &str) -> Req {
        Req {
            method,
            path: path.to_owned(),
            host: None,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Sets the request body (sent with its `Content-Length`).
    pub fn body(mut self, body: &str) -> Req {
        self.body = Bytes::from(body.to_owned());
        self
    }

    /// Adds a request header (repeat for several values).
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets `Host` (default: the address connected to).
    pub fn host(mut self, host: &str) -> Req {
        self.host = Some(host.to_owned());
        self
    }

    fn build(&self, default_host: &str) -> io::Result<Request<Full<Bytes>>> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(self.path.as_str())
            .header("host", self.host.as_deref().unwrap_or(default_host));
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder
            .body(Full::new(self.body.clone()))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Reply {
    /// The first value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The app that answered: the `x-pod` header, or "" for a response the
    /// proxy made itself.
    pub fn pod(&self) -> &str {
        self.header(POD_HEADER).unwrap_or("")
    }

    /// The proxy's `remora-error` header, or "" if it has none.
    pub fn remora_error(&self) -> &str {
        self.header(ERROR_HEADER).unwrap_or("")
    }
}

/// An HTTP/1.1 keep-alive client whose connection belongs to a pod.
///
/// Like a real client it opens a new connection when the previous one was
/// closed before a request was written to it, but a request that was sent
/// and then failed is returned as an error, never retried.
#[derive(Debug)]
pub struct HttpClient {
    pod: Pod,
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    connects: usize,
}

impl HttpClient {
    /// A client in `pod` for `addr`; it connects on the first request.
    pub fn new(pod: &Pod, addr: SocketAddr) -> HttpClient {
        HttpClient {
            pod: pod.clone(),
            addr,
            sender: None,
            connects: 0,
        }
    }

    /// How many connections the client opened so far.
    pub fn connects(&self) -> usize {
        self.connects
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> io::Result<Reply> {
        self.send(&Req::get(path)).await
    }

    /// Sends `req` and reads the whole response, bounded by [`WAIT`].
    pub async fn send(&mut self, req: &Req) -> io::Result<Reply> {
        match tokio::time::timeout(WAIT, self.send_unbounded(req)).await {
            Ok(result) => result,
            Err(_) => {
                // The connection may be mid-response; never reuse it.
                self.sender = None;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} http://{}{} timed out after {WAIT:?}",
                        req.method, self.addr, req.path
                    ),
                ))
            }
        }
    }

    async fn send_unbounded(&mut self, req: &Req) -> io::Result<Reply> {
        let host = self.addr.to_string();
        for attempt in 0..2 {
            let sender = self.ready_sender().await?;
            let start = Instant::now();
            match sender.send_request(req.build(&host)?).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let close = response
                        .headers()
                        .get("connection")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await.map_err(|e| {
                        self.sender = None;
                        io::Error::other(format!("reading the response body: {e}"))
                    })?;
                    if close {
                        self.sender = None;
                    }
                    return Ok(Reply {
                        status,
                        headers: parts.headers,
                        body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                        elapsed: start.elapsed(),
                    });
                }
                // Canceled: the connection closed before the request was
                // written, so sending it on a new connection is safe.
                Err(e) if e.is_canceled() && attempt == 0 => self.sender = None,
                Err(e) => {
                    self.sender = None;
                    return Err(io::Error::other(format!(
                        "{} http://{}{}: {e}",
                        req.method, self.addr, req.path
                    )));
                }
            }
        }
        Err(io::Error::other("connection closed twice before sending"))
    }

    async fn ready_sender(&mut self) -> io::Result<&mut SendRequest<Full<Bytes>>> {
        let reusable = match self.sender.as_mut() {
            Some(sender) if !sender.is_closed() => sender.ready().await.is_ok(),
            _ => false,
        };
        if !reusable {
            let stream = self.pod.connect(self.addr).await?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(io::Error::other)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.connects += 1;
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("sender set above"))
    }
}

/// One request's index and what came of it.
pub type Outcome = (usize, io::Result<Reply>);

/// Sends `total` requests from `concurrency` clients in `pod` to `addr`;
/// request `i` is `make(i)`. Returns each request's index and outcome:
/// transport errors first, then by index.
///
/// HTTP error statuses are outcomes like any other, but after the first
/// transport error (refused, reset, timed out) no new request is started:
/// the rest are reported as not sent, so a broken proxy fails the test in
/// one [`WAIT`] rather than one per request.
pub async fn send_many(
    pod: &Pod,
    addr: SocketAddr,
    total: usize,
    concurrency: usize,
    make: impl Fn(usize) -> Req + Send + Sync + 'static,
) -> Vec<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(AtomicBool::new(false));
    let make = Arc::new(make);
    let workers: Vec<JoinHandle<Vec<Outcome>>> = (0..concurrency.max(1))
        .map(|_| {
            let mut client = HttpClient::new(pod, addr);
            let (next, broken, make) = (next.clone(), broken.clone(), make.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return out;
                    }
                    if broken.load(Ordering::SeqCst) {
                        let e = io::Error::other("not sent: an earlier request failed");
                        out.push((i, Err(e)));
                        continue;
                    }
                    let outcome = client.send(&make(i)).await;
                    if outcome.is_err() {
                        broken.store(true, Ordering::SeqCst);
                    }
                    out.push((i, outcome));
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(total);
    for worker in workers {
        results.extend(worker.await.expect("client worker panicked"));
    }
    // The first failure first, so that it is the one a test reports.
    results.sort_by_key(|(i, outcome)| (outcome.is_ok(), *i));
    results
}

/// Polls `check` every 20 ms until it returns `Ok`, failing the test with
/// `what` (and the last `Err` it gave) after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
