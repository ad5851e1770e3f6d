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
        Arc::new(Pool {
            settings,
            breaker,
            h1_idle: Mutex::default(),
            h2: Mutex::default(),
        })
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
