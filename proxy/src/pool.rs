//! Upstream HTTP connections: a pool per set of endpoints, HTTP/1.1 with
//! keep-alive reuse and HTTP/2 with one multiplexed connection per endpoint.
//!
//! Connections are keyed by endpoint, protocol and the identity the peer
//! must prove ([`PoolKey`]), so that a connection made for one identity is
//! never reused for another. Dialing goes through the transport seam's one
//! [`Connector`]. HTTP/2 dials are single-flight: requests that arrive
//! while the endpoint's connection is being made wait for it and share it,
//! rather than each dialing their own. The pool does not choose endpoints or
//! retry; callers do that with what `send` tells them.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;
use tracing::debug;

use crate::body::Body;
use crate::error::{BoxError, ErrorKind, ProxyError};
use crate::resilience::{BreakerOpen, CircuitBreaker, Permit};
#[cfg(test)]
use crate::transport::Identity;
use crate::transport::{Connection, Connector, Dial, Inner, Peer};
use crate::FastMap;

/// The protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Upstream {
    Http1,
    Http2,
}

/// What a pooled connection is for: only a request for the same endpoint,
/// protocol and identity may reuse it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) peer: Peer,
    pub(crate) upstream: Upstream,
}

/// How a pool dials.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    /// Source addresses to bind, by family (the inbound proxy binds its
    /// loopback source; the outbound proxy binds nothing).
    pub(crate) source_v4: Option<IpAddr>,
    pub(crate) source_v6: Option<IpAddr>,
    pub(crate) connect_timeout: Duration,
    /// Idle HTTP/1 connections older than this are closed, not reused.
    pub(crate) idle_timeout: Duration,
    /// Most idle HTTP/1 connections kept per endpoint.
    pub(crate) max_idle_per_endpoint: usize,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// The outcome of an HTTP/2 dial, as the requests waiting for it see it.
type Dialed = Option<Result<http2::SendRequest<Body>, (ErrorKind, Arc<str>)>>;

/// An endpoint's HTTP/2 connection: up, or being made.
#[derive(Debug)]
enum H2Slot {
    Ready(http2::SendRequest<Body>),
    /// A request is dialing; the others wait for what it gets.
    Connecting(watch::Receiver<Dialed>),
}

impl H2Slot {
    /// Whether the slot still stands for something: an open connection, or
    /// a dial whose request has not gone away.
    fn is_live(&self) -> bool {
        match self {
            H2Slot::Ready(sender) => !sender.is_closed(),
            H2Slot::Connecting(rx) => rx.has_changed().is_ok(),
        }
    }
}

/// What a request does about an endpoint's HTTP/2 connection.
enum H2Step {
    Use(http2::SendRequest<Body>),
    Wait(watch::Receiver<Dialed>),
    Dial(watch::Sender<Dialed>),
}

/// Pooled connections to any number of endpoints.
#[derive(Debug)]
pub(crate) struct Pool {
    settings: PoolSettings,
    connector: Arc<Connector>,
    /// A backend's pool counts its connections, and the requests waiting
    /// for one, against the backend's circuit breaker.
    breaker: Option<Arc<CircuitBreaker>>,
    h1_idle: Mutex<FastMap<PoolKey, Vec<Idle>>>,
    h2: Mutex<FastMap<PoolKey, H2Slot>>,
}

impl Pool {
    pub(crate) fn new(
        settings: PoolSettings,
        connector: Arc<Connector>,
        breaker: Option<Arc<CircuitBreaker>>,
    ) -> Arc<Self> {
        let pool = Arc::new(Pool {
            settings,
            connector,
            breaker,
            h1_idle: Mutex::default(),
            h2: Mutex::default(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Closes idle connections past the idle timeout and forgets closed
    /// ones and endpoints with none left, so a pool does not grow with
    /// every endpoint it ever reached.
    fn sweep_once(&self) {
        let idle_timeout = self.settings.idle_timeout;
        self.lock_h1().retain(|_, list| {
            list.retain(|idle| idle.since.elapsed() < idle_timeout && !idle.sender.is_closed());
            !list.is_empty()
        });
        self.lock_h2().retain(|_, slot| slot.is_live());
    }

    /// Sends `req` to `peer`. A `Connect` error means nothing was sent.
    pub(crate) async fn send(
        self: &Arc<Self>,
        peer: &Peer,
        upstream: Upstream,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let key = PoolKey {
            peer: peer.clone(),
            upstream,
        };
        match upstream {
            Upstream::Http1 => self.send_h1(key, req).await,
            Upstream::Http2 => Ok(self.send_h2(&key, req).await?.map(crate::body::incoming)),
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        key: PoolKey,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        // Counted as pending until a connection takes the request.
        let mut pending = self.permit(CircuitBreaker::try_acquire_pending)?;
        // A reused connection may have been closed by the server while idle;
        // the request then comes back unsent and goes on a fresh connection.
        while let Some(mut sender) = self.take_idle(&key) {
            if sender.ready().await.is_err() {
                continue;
            }
            pending = None;
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.recycle(key, sender, response)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(upstream_error(&key.peer, e.into_error())),
                },
            }
        }
        // Boxed, like the HTTP/2 dial: a dial's state (TLS, handshake) is
        // large and rare, and would otherwise sit in every request's future.
        let mut sender = Box::pin(self.connect_h1(&key.peer)).await?;
        drop(pending);
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| upstream_error(&key.peer, e))?;
        Ok(self.recycle(key, sender, response))
    }

    async fn send_h2(
        self: &Arc<Self>,
        key: &PoolKey,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let pending = self.permit(CircuitBreaker::try_acquire_pending)?;
        let mut sender = self.h2_sender(key).await?;
        sender
            .ready()
            .await
            .map_err(|e| upstream_error(&key.peer, e))?;
        drop(pending);
        sender
            .send_request(req)
            .await
            .map_err(|e| upstream_error(&key.peer, e))
    }

    /// The endpoint's HTTP/2 connection: the open one, the one being made
    /// (waited for), or a new one that this request dials for everyone.
    async fn h2_sender(&self, key: &PoolKey) -> Result<http2::SendRequest<Body>, ProxyError> {
        loop {
            let step = {
                let mut slots = self.lock_h2();
                match slots.get(key) {
                    Some(H2Slot::Ready(sender)) if !sender.is_closed() => {
                        H2Step::Use(sender.clone())
                    }
                    Some(slot @ H2Slot::Connecting(rx)) if slot.is_live() => {
                        H2Step::Wait(rx.clone())
                    }
                    _ => {
                        let (tx, rx) = watch::channel(None);
                        slots.insert(key.clone(), H2Slot::Connecting(rx));
                        H2Step::Dial(tx)
                    }
                }
            };
            match step {
                H2Step::Use(sender) => return Ok(sender),
                H2Step::Wait(mut rx) => {
                    let dialed = match rx.wait_for(Option::is_some).await {
                        Ok(dialed) => dialed.clone(),
                        // The dialing request went away before it finished:
                        // the next one in line dials.
                        Err(_) => continue,
                    };
                    match dialed {
                        Some(Ok(sender)) => return Ok(sender),
                        Some(Err((kind, detail))) => return Err(ProxyError::new(kind, &*detail)),
                        None => continue,
                    }
                }
                H2Step::Dial(tx) => {
                    // Boxed: see send_h1.
                    let dialed = Box::pin(self.connect_h2(&key.peer)).await;
                    let mut slots = self.lock_h2();
                    match &dialed {
                        Ok(sender) => {
                            slots.insert(key.clone(), H2Slot::Ready(sender.clone()));
                            let _ = tx.send(Some(Ok(sender.clone())));
                        }
                        Err(e) => {
                            slots.remove(key);
                            let _ = tx.send(Some(Err((e.kind, Arc::from(e.detail())))));
                        }
                    }
                    return dialed;
                }
            }
        }
    }

    async fn dial(&self, peer: &Peer, inner: Inner) -> Result<TokioIo<Connection>, ProxyError> {
        let source = match peer.addr {
            SocketAddr::V4(_) => self.settings.source_v4,
            SocketAddr::V6(_) => self.settings.source_v6,
        };
        let dial = Dial {
            addr: peer.addr,
            source,
            timeout: self.settings.connect_timeout,
            identity: peer.identity.clone(),
            inner,
        };
        self.connector
            .connect(&dial)
            .await
            .map(TokioIo::new)
            .map_err(|e| ProxyError::connect(format!("{peer}: {e}"), e.is_identity_mismatch()))
    }

    async fn connect_h1(&self, peer: &Peer) -> Result<http1::SendRequest<Body>, ProxyError> {
        let permit = self.permit(CircuitBreaker::try_acquire_connection)?;
        let io = self.dial(peer, Inner::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ProxyError::new(ErrorKind::Connect, format!("{peer}: {e}")))?;
        let endpoint = peer.addr;
        tokio::spawn(async move {
            // The connection counts against the breaker while it lives.
            let _permit = permit;
            if let Err(e) = conn.with_upgrades().await {
                debug!(%endpoint, error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(&self, peer: &Peer) -> Result<http2::SendRequest<Body>, ProxyError> {
        let permit = self.permit(CircuitBreaker::try_acquire_connection)?;
        let io = self.dial(peer, Inner::H2).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .handshake(io)
            .await
            .map_err(|e| ProxyError::new(ErrorKind::Connect, format!("{peer}: {e}")))?;
        let endpoint = peer.addr;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(sender)
    }

    /// A permit from the backend's circuit breaker, if it has one.
    fn permit(
        &self,
        acquire: fn(&CircuitBreaker) -> Result<Permit, BreakerOpen>,
    ) -> Result<Option<Permit>, ProxyError> {
        match &self.breaker {
            Some(breaker) => acquire(breaker)
                .map(Some)
                .map_err(|open| ProxyError::new(ErrorKind::CircuitOpen, open.to_string())),
            None => Ok(None),
        }
    }

    fn take_idle(&self, key: &PoolKey) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.lock_h1();
        let list = idle.get_mut(key)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < self.settings.idle_timeout && !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Hands the connection back to the pool once the response body has
    /// been read to its end, so the next request can reuse it. A body that
    /// is dropped half-read takes its connection with it.
    fn recycle(
        self: &Arc<Self>,
        key: PoolKey,
        sender: http1::SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        let ret = Recycle {
            pool: Arc::downgrade(self),
            key,
            sender,
        };
        response.map(|body| {
            PooledBody {
                inner: body,
                ret: Some(ret),
            }
            .boxed_unsync()
        })
    }

    fn put_idle(&self, key: PoolKey, sender: http1::SendRequest<Body>) {
        let max = self.settings.max_idle_per_endpoint;
        let mut idle = self.lock_h1();
        let list = idle.entry(key).or_default();
        if list.len() < max {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn lock_h1(&self) -> std::sync::MutexGuard<'_, FastMap<PoolKey, Vec<Idle>>> {
        self.h1_idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, FastMap<PoolKey, H2Slot>> {
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sweeps `pool` until it is dropped.
async fn sweep(pool: Weak<Pool>) {
    let every = match pool.upgrade() {
        Some(pool) => {
            (pool.settings.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
        }
        None => return,
    };
    // The first sweep comes a random part of a period from now, so that the
    // pools of a large config, all made at once, never sweep at once.
    let first = every.mul_f64(rand::random_range(0.5..1.5));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + first, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_once(),
            None => return,
        }
    }
}

/// A connection waiting for its response body to end.
#[derive(Debug)]
struct Recycle {
    pool: Weak<Pool>,
    key: PoolKey,
    sender: http1::SendRequest<Body>,
}

impl Recycle {
    fn put(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put_idle(self.key, self.sender);
        }
    }
}

/// An upstream HTTP/1 response body that returns its connection to the
/// pool when it ends.
#[derive(Debug)]
struct PooledBody {
    inner: Incoming,
    ret: Option<Recycle>,
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = poll {
            if let Some(ret) = self.ret.take() {
                ret.put();
            }
        }
        poll.map(|frame| frame.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Servers stop polling a body whose length says it is complete, so
        // a fully read body may end here rather than with `None`.
        if http_body::Body::is_end_stream(&self.inner) {
            if let Some(ret) = self.ret.take() {
                ret.put();
            }
        }
    }
}

/// Classifies a failed exchange. hyper reports a failure of the request
/// body it was sending (the downstream client cut its upload short) as a
/// "user" error: that is the client's doing, not the endpoint's.
fn upstream_error(endpoint: &Peer, e: hyper::Error) -> ProxyError {
    if is_refused_stream(&e) {
        return ProxyError::new(
            ErrorKind::Refused,
            format!(
                "{endpoint}: its sidecar could not reach the app; the request was not processed"
            ),
        );
    }
    if e.is_user() {
        return ProxyError::new(
            ErrorKind::BadRequest,
            format!("the request body failed while it was sent to {endpoint}: {e}"),
        );
    }
    ProxyError::new(ErrorKind::Upstream, format!("{endpoint}: {e}"))
}

/// Whether the peer reset the stream with REFUSED_STREAM: RFC 9113
/// section 8.7 says such a request was not processed.
fn is_refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server on loopback that counts the connections it accepts and
    /// answers "ok" to every request after `delay`, over HTTP/1 or HTTP/2.
    async fn counting_server(http2: bool, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(Response::new(crate::body::full("ok")))
                    });
                    let io = TokioIo::new(stream);
                    let _ = if http2 {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    };
                });
            }
        });
        (addr, accepted)
    }

    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        counting_server(false, Duration::ZERO).await
    }

    async fn h2_server(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        counting_server(true, delay).await
    }

    fn pool(idle_timeout: Duration) -> Arc<Pool> {
        Pool::new(
            PoolSettings {
                source_v4: None,
                source_v6: None,
                connect_timeout: Duration::from_secs(1),
                idle_timeout,
                max_idle_per_endpoint: 4,
            },
            Arc::new(Connector::plaintext()),
            None,
        )
    }

    fn get(addr: SocketAddr) -> Request<Body> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, addr.to_string())
            .body(crate::body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_read_response_returns_its_connection_for_reuse() {
        let (addr, accepted) = server().await;
        let pool = pool(Duration::from_secs(60));
        for _ in 0..5 {
            let response = pool
                .send(&Peer::plaintext(addr), Upstream::Http1, get(addr))
                .await
                .unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection served all five"
        );
    }

    #[tokio::test]
    async fn expired_idle_connections_are_swept() {
        let (addr, accepted) = server().await;
        let pool = pool(Duration::from_millis(50));
        let response = pool
            .send(&Peer::plaintext(addr), Upstream::Http1, get(addr))
            .await
            .unwrap();
        drop(response.into_body().collect().await.unwrap());
        let key = PoolKey {
            peer: Peer::plaintext(addr),
            upstream: Upstream::Http1,
        };
        assert_eq!(pool.lock_h1().get(&key).map_or(0, Vec::len), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        pool.sweep_once();
        assert!(
            pool.lock_h1().is_empty(),
            "the expired connection and its endpoint are gone"
        );
        // The next request dials afresh.
        let response = pool
            .send(&Peer::plaintext(addr), Upstream::Http1, get(addr))
            .await
            .unwrap();
        drop(response.into_body().collect().await.unwrap());
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    fn h2_get(addr: SocketAddr) -> Request<Body> {
        Request::builder()
            .uri(format!("http://{addr}/"))
            .version(http::Version::HTTP_2)
            .body(crate::body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn concurrent_first_http2_requests_share_one_dial() {
        let (addr, accepted) = h2_server(Duration::from_millis(20)).await;
        let pool = pool(Duration::from_secs(60));
        let peer = Peer::plaintext(addr);
        let sends = (0..50).map(|_| {
            let (pool, peer) = (pool.clone(), peer.clone());
            async move {
                let response = pool.send(&peer, Upstream::Http2, h2_get(addr)).await?;
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| ProxyError::new(ErrorKind::Upstream, e.to_string()))?;
                Ok::<_, ProxyError>(body.to_bytes())
            }
        });
        let results = futures_util::future::join_all(sends).await;
        for result in results {
            assert_eq!(result.expect("every request is answered"), "ok");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "50 requests, one connection"
        );
    }

    #[tokio::test]
    async fn a_failed_http2_dial_fails_its_waiters_and_the_next_request_dials_again() {
        // Nothing listens here.
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let pool = pool(Duration::from_secs(60));
        let peer = Peer::plaintext(addr);
        let sends = (0..10).map(|_| {
            let (pool, peer) = (pool.clone(), peer.clone());
            async move {
                pool.send(&peer, Upstream::Http2, h2_get(addr))
                    .await
                    .map(|_| ())
            }
        });
        for result in futures_util::future::join_all(sends).await {
            let err = result.expect_err("nothing listens");
            assert_eq!(err.kind, ErrorKind::Connect, "{err}");
        }
        assert!(pool.lock_h2().is_empty(), "a failed dial leaves no slot");
    }

    #[tokio::test]
    async fn connections_are_not_shared_across_identities() {
        let (addr, accepted) = h2_server(Duration::ZERO).await;
        let pool = pool(Duration::from_secs(60));
        let plain = Peer::plaintext(addr);
        let meshed = Peer {
            addr,
            identity: Some(Identity::new("spiffe://cluster.local/ns/a/sa/x")),
        };
        let response = pool
            .send(&plain, Upstream::Http2, h2_get(addr))
            .await
            .unwrap();
        drop(response.into_body().collect().await.unwrap());
        // The open plaintext connection is not the meshed peer's: it dials
        // its own, which this plaintext connector refuses.
        let err = pool
            .send(&meshed, Upstream::Http2, h2_get(addr))
            .await
            .expect_err("a meshed peer never reuses a plaintext connection");
        assert_eq!(err.kind, ErrorKind::Connect, "{err}");
        let response = pool
            .send(&plain, Upstream::Http2, h2_get(addr))
            .await
            .unwrap();
        drop(response.into_body().collect().await.unwrap());
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the plaintext one is reused"
        );
    }
}
