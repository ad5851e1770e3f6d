//! Upstream HTTP connections: a pool per set of endpoints, HTTP/1.1 with
//! keep-alive reuse and HTTP/2 with one multiplexed connection per endpoint.
//!
//! The pool owns dialing (through `net::connect`, so the inbound source
//! address rule applies) and connection reuse. It does not choose endpoints
//! or retry; callers do that with what `send` tells them.

use std::collections::HashMap;
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
use tracing::debug;

use super::error::{ErrorKind, ProxyError};
use super::{Body, BoxError};
use crate::net;
use crate::resilience::{BreakerOpen, CircuitBreaker, Permit};

/// The protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Upstream {
    Http1,
    Http2,
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

/// Pooled connections to any number of endpoints.
#[derive(Debug)]
pub(crate) struct Pool {
    settings: PoolSettings,
    /// A backend's pool counts its connections, and the requests waiting
    /// for one, against the backend's circuit breaker.
    breaker: Option<Arc<CircuitBreaker>>,
    h1_idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

impl Pool {
    pub(crate) fn new(settings: PoolSettings, breaker: Option<Arc<CircuitBreaker>>) -> Arc<Self> {
        let pool = Arc::new(Pool {
            settings,
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
        self.lock_h2().retain(|_, sender| !sender.is_closed());
    }

    /// Sends `req` to `endpoint`. A `Connect` error means nothing was sent.
    pub(crate) async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        upstream: Upstream,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        match upstream {
            Upstream::Http1 => self.send_h1(endpoint, req).await,
            Upstream::Http2 => Ok(self.send_h2(endpoint, req).await?.map(super::incoming)),
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        // Counted as pending until a connection takes the request.
        let mut pending = self.permit(CircuitBreaker::try_acquire_pending)?;
        // A reused connection may have been closed by the server while idle;
        // the request then comes back unsent and goes on a fresh connection.
        while let Some(mut sender) = self.take_idle(endpoint) {
            if sender.ready().await.is_err() {
                continue;
            }
            pending = None;
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.recycle(endpoint, sender, response)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(upstream_error(endpoint, e.into_error())),
                },
            }
        }
        let mut sender = self.connect_h1(endpoint).await?;
        drop(pending);
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| upstream_error(endpoint, e))?;
        Ok(self.recycle(endpoint, sender, response))
    }

    async fn send_h2(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let pending = self.permit(CircuitBreaker::try_acquire_pending)?;
        let existing = self
            .lock_h2()
            .get(&endpoint)
            .filter(|s| !s.is_closed())
            .cloned();
        let mut sender = match existing {
            Some(sender) => sender,
            None => {
                let sender = self.connect_h2(endpoint).await?;
                self.lock_h2().insert(endpoint, sender.clone());
                sender
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| upstream_error(endpoint, e))?;
        drop(pending);
        sender
            .send_request(req)
            .await
            .map_err(|e| upstream_error(endpoint, e))
    }

    async fn dial(
        &self,
        endpoint: SocketAddr,
    ) -> Result<TokioIo<tokio::net::TcpStream>, ProxyError> {
        let source = match endpoint {
            SocketAddr::V4(_) => self.settings.source_v4,
            SocketAddr::V6(_) => self.settings.source_v6,
        };
        net::connect(endpoint, source, self.settings.connect_timeout)
            .await
            .map(TokioIo::new)
            .map_err(|e| ProxyError::new(ErrorKind::Connect, format!("{endpoint}: {e}")))
    }

    async fn connect_h1(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http1::SendRequest<Body>, ProxyError> {
        let permit = self.permit(CircuitBreaker::try_acquire_connection)?;
        let io = self.dial(endpoint).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ProxyError::new(ErrorKind::Connect, format!("{endpoint}: {e}")))?;
        tokio::spawn(async move {
            // The connection counts against the breaker while it lives.
            let _permit = permit;
            if let Err(e) = conn.with_upgrades().await {
                debug!(%endpoint, error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        let permit = self.permit(CircuitBreaker::try_acquire_connection)?;
        let io = self.dial(endpoint).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .handshake(io)
            .await
            .map_err(|e| ProxyError::new(ErrorKind::Connect, format!("{endpoint}: {e}")))?;
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

    fn take_idle(&self, endpoint: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.lock_h1();
        let list = idle.get_mut(&endpoint)?;
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
        endpoint: SocketAddr,
        sender: http1::SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        let ret = Recycle {
            pool: Arc::downgrade(self),
            endpoint,
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

    fn put_idle(&self, endpoint: SocketAddr, sender: http1::SendRequest<Body>) {
        let max = self.settings.max_idle_per_endpoint;
        let mut idle = self.lock_h1();
        let list = idle.entry(endpoint).or_default();
        if list.len() < max {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn lock_h1(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>>> {
        self.h1_idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, http2::SendRequest<Body>>> {
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Classifies a failed exchange. hyper reports a failure of the request
/// body it was sending (the downstream client cut its upload short) as a
/// "user" error: that is the client's doing, not the endpoint's.
/// Sweeps `pool` until it is dropped.
async fn sweep(pool: Weak<Pool>) {
    let every = match pool.upgrade() {
        Some(pool) => {
            (pool.settings.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
        }
        None => return,
    };
    let mut ticker = tokio::time::interval(every);
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
    endpoint: SocketAddr,
    sender: http1::SendRequest<Body>,
}

impl Recycle {
    fn put(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put_idle(self.endpoint, self.sender);
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

fn upstream_error(endpoint: SocketAddr, e: hyper::Error) -> ProxyError {
    if e.is_user() {
        return ProxyError::new(
            ErrorKind::BadRequest,
            format!("the request body failed while it was sent to {endpoint}: {e}"),
        );
    }
    ProxyError::new(ErrorKind::Upstream, format!("{endpoint}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP/1 server on loopback that counts the connections it accepts.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(super::super::full("ok")))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
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
            None,
        )
    }

    fn get(addr: SocketAddr) -> Request<Body> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, addr.to_string())
            .body(super::super::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_read_response_returns_its_connection_for_reuse() {
        let (addr, accepted) = server().await;
        let pool = pool(Duration::from_secs(60));
        for _ in 0..5 {
            let response = pool.send(addr, Upstream::Http1, get(addr)).await.unwrap();
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
        let response = pool.send(addr, Upstream::Http1, get(addr)).await.unwrap();
        drop(response.into_body().collect().await.unwrap());
        assert_eq!(pool.lock_h1().get(&addr).map_or(0, Vec::len), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        pool.sweep_once();
        assert!(
            pool.lock_h1().is_empty(),
            "the expired connection and its endpoint are gone"
        );
        // The next request dials afresh.
        let response = pool.send(addr, Upstream::Http1, get(addr)).await.unwrap();
        drop(response.into_body().collect().await.unwrap());
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
