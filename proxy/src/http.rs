//! HTTP proxying for connections detected as HTTP/1 or HTTP/2.
//!
//! This module serves the downstream side with hyper (keep-alive, HTTP/2
//! multiplexing, upgrades, header limits, graceful drain) and forwards each
//! request: outbound through a route to a balanced backend endpoint
//! (`outbound`), or to an unknown destination unchanged; inbound to the app
//! (`inbound`). Connections and their reuse live in `crate::pool`. Every request
//! is first refused or normalised (`admit`); a connection's start on a
//! declared HTTP port is `head`'s.

mod admit;
mod head;
mod headers;
mod idle_body;
mod inbound;
mod normalize;
mod outbound;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

pub(crate) use crate::body::{empty, full, incoming, Body};
pub(crate) use crate::error::{BoxError, ErrorKind, ProxyError};
pub(crate) use crate::pool::{Pool, Upstream};
use crate::transport::Identity;
pub(crate) use crate::transport::Peer;
pub(crate) use head::sniff;

/// Admission, for the `http1_head` fuzz target.
#[cfg(fuzzing)]
pub(crate) fn admit_for_fuzzing<B>(
    req: &mut Request<B>,
    settings: &remora_api::HttpSettings,
) -> Result<(), ProxyError> {
    admit::admit(req, settings)
}

use crate::direction::Direction;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::state::State;
use crate::transport::detect::Protocol;

/// What the request handlers know about the downstream connection.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) direction: Direction,
    pub(crate) peer: SocketAddr,
    pub(crate) orig_dst: SocketAddr,
    pub(crate) version: Version,
    /// The identity the client proved (mesh mTLS), if any.
    pub(crate) peer_identity: Option<Identity>,
    /// What the inbound proxy tells the app of the peer, made once for
    /// all of the connection's requests: its address for
    /// `x-forwarded-for` (inbound only), and its identity for
    /// `x-remora-client-id`.
    pub(crate) forwarded_for: Option<HeaderValue>,
    pub(crate) client_id: Option<HeaderValue>,
}

/// What a mesh peer's sidecar said about a request, read before admission
/// strips the header it came in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MeshHop {
    /// The client's app spoke HTTP/1.x; the hop is HTTP/2.
    pub(crate) app_http1: bool,
}

/// A request the server's sidecar refuses on the HTTP/2 hop between
/// sidecars because it could not reach its app: the stream is reset with
/// REFUSED_STREAM (RFC 9113 8.7: not processed), and the client's sidecar
/// may retry it elsewhere whatever its method.
#[derive(Debug)]
pub(crate) struct Refuse;

/// Who is on the other end of a downstream connection, as the listener and
/// the acceptor step found out.
#[derive(Debug)]
pub(crate) struct Downstream {
    pub(crate) direction: Direction,
    pub(crate) peer: SocketAddr,
    pub(crate) orig_dst: SocketAddr,
    /// The identity the client proved (mesh mTLS), if any.
    pub(crate) peer_identity: Option<Identity>,
}

/// The HTTP layer shared by every HTTP connection.
#[derive(Debug)]
pub(crate) struct HttpProxy {
    pub(crate) metrics: Metrics,
    pub(crate) state: Arc<State>,
    /// Outbound requests to destinations the mesh config doesn't know.
    pub(crate) passthrough: Arc<Pool>,
    /// Inbound requests to the app in this pod.
    pub(crate) inbound: Arc<Pool>,
    /// Upgraded connections (WebSocket) are drained like connections.
    pub(crate) drain: Drain,
}

impl HttpProxy {
    /// Serves one downstream HTTP connection until it closes, or until the
    /// drain asks it to finish gracefully.
    pub(crate) async fn serve<I>(
        self: Arc<Self>,
        io: I,
        protocol: Protocol,
        downstream: Downstream,
        drain: &Drain,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let version = match protocol {
            Protocol::H2 => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        // Header limits come from the config in force when the connection
        // starts.
        let limits = self.state.load().http.clone();
        let max_header_bytes = limits.max_header_bytes as usize;
        let max_headers = limits.max_headers as usize;
        let Downstream {
            direction,
            peer,
            orig_dst,
            peer_identity,
        } = downstream;
        let forwarded_for =
            (direction == Direction::Inbound).then(|| headers::forwarded_for_value(peer.ip()));
        let client_id = peer_identity
            .as_ref()
            .and_then(|id| HeaderValue::from_str(id.as_str()).ok());
        let conn = Arc::new(ConnInfo {
            direction,
            peer,
            orig_dst,
            version,
            peer_identity,
            forwarded_for,
            client_id,
        });
        let handler = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let proxy = handler.clone();
            let conn = conn.clone();
            // Boxed: the request's future is several KiB, and HTTP/2 spawns
            // it as a task, which moves it at spawn and at each stage.
            Box::pin(async move {
                proxy
                    .handle(&conn, req)
                    .await
                    .map_err(|Refuse| h2::Error::from(h2::Reason::REFUSED_STREAM))
            })
        });
        let io = TokioIo::new(io);
        let started = drain.started();
        tokio::pin!(started);
        let result = match protocol {
            Protocol::H2 => {
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_header_list_size(limits.max_header_bytes)
                    .serve_connection(io, service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => r,
                    () = &mut started => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
            _ => {
                let mut conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .max_buf_size(max_header_bytes.max(8192))
                    .max_headers(max_headers)
                    .header_read_timeout(limits.request_headers_timeout)
                    .serve_connection(io, service)
                    .with_upgrades();
                let result = tokio::select! {
                    r = &mut conn => r,
                    () = &mut started => {
                        std::pin::Pin::new(&mut conn).graceful_shutdown();
                        (&mut conn).await
                    }
                };
                // hyper closes a connection whose head is cut off by its
                // timer without a word: say 408 on its behalf. An idle
                // keep-alive connection (nothing read) just closes.
                if let Err(e) = &result {
                    if e.is_timeout() {
                        if let Some(parts) = conn.into_parts() {
                            if !parts.read_buf.is_empty() {
                                self.metrics.http_error(direction, ErrorKind::HeaderTimeout);
                                head::write_timeout(&mut parts.io.into_inner()).await;
                            }
                        }
                    }
                }
                result
            }
        };
        if let Err(e) = result {
            debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
    }

    /// Answers a client on a declared HTTP port that sent no request head
    /// in time (see `head`).
    pub(crate) async fn late_head<I>(&self, mut io: I, direction: Direction)
    where
        I: AsyncWrite + Unpin,
    {
        self.metrics.http_error(direction, ErrorKind::HeaderTimeout);
        head::write_timeout(&mut io).await;
    }

    /// Handles one request; every failure becomes a response, except a
    /// request from a mesh peer that never reached the app ([`Refuse`]).
    async fn handle(
        &self,
        conn: &ConnInfo,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Refuse> {
        let start = Instant::now();
        let method = req.method().clone();
        let mut req = req.map(incoming);
        if conn.peer_identity.is_some() {
            let app_http1 = req
                .headers()
                .get(&headers::ORIG_PROTO)
                .is_some_and(|v| v.as_bytes().starts_with(b"HTTP/1"));
            req.extensions_mut().insert(MeshHop { app_http1 });
        }
        let snapshot = self.state.load();
        let settings = &snapshot.http;
        let mut plugins = crate::plugins::Ctx::new(conn.direction, conn.peer, &snapshot.plugins);
        let (result, labels) = match admit::admit(&mut req, settings) {
            Ok(()) => {
                let timeout = settings.request_body_idle_timeout;
                let (parts, body) = req.into_parts();
                let (body, stall) = idle_body::watch(body, timeout);
                let req = Request::from_parts(parts, body);
                // The request is admitted, routed and sent on one snapshot.
                let snapshot = snapshot.clone();
                let dispatch = async {
                    match conn.direction {
                        Direction::Outbound => {
                            self.outbound(conn, req, snapshot, &mut plugins).await
                        }
                        Direction::Inbound => self.inbound(conn, req, snapshot, &mut plugins).await,
                    }
                };
                match stall {
                    None => dispatch.await,
                    // A body that stalls before the response has started
                    // ends the request (dropping the upstream attempt); the
                    // upstream failure it caused may come back first.
                    Some(stall) => {
                        let stalled = || {
                            let e = idle_body::BodyIdle(timeout);
                            Err(ProxyError::new(ErrorKind::BodyTimeout, e.to_string()))
                        };
                        tokio::select! {
                            biased;
                            () = stall.stalled() => (stalled(), Default::default()),
                            (result, labels) = dispatch => match result {
                                Err(_) if stall.has_fired() => (stalled(), labels),
                                other => (other, labels),
                            },
                        }
                    }
                }
            }
            Err(e) => (Err(e), Default::default()),
        };
        let response = match result {
            Ok(response) => response,
            Err(e)
                if e.kind == ErrorKind::Refused
                    && conn.peer_identity.is_some()
                    && conn.version == Version::HTTP_2 =>
            {
                debug!(peer = %conn.peer, dst = %conn.orig_dst, error = %e, "refusing the stream: the app is not reachable");
                self.metrics.http_error(conn.direction, e.kind);
                return Err(Refuse);
            }
            Err(e) => {
                debug!(
                    peer = %conn.peer,
                    dst = %conn.orig_dst,
                    source = ?e.kind.source(),
                    error = %e,
                    "request failed"
                );
                self.metrics.http_error(conn.direction, e.kind);
                error_response(&e, &method)
            }
        };
        // The response phases and `log`, for every request.
        let response = plugins.respond(response);
        self.metrics
            .request(conn.direction, &labels, response.status(), start.elapsed());
        Ok(response)
    }
}

/// The response for a request the proxy could not forward: a short body
/// that says why, and a `remora-error` header for tools. A response to
/// `HEAD` has the same headers, `Content-Length` included, and no body
/// (RFC 9110 9.3.2): an HTTP/2 client resets a HEAD response with data.
pub(crate) fn error_response(e: &ProxyError, method: &Method) -> Response<Body> {
    let text = format!("{e}\n");
    let length = HeaderValue::from(text.len());
    let body = if method == Method::HEAD {
        empty()
    } else {
        full(text)
    };
    let mut response = Response::new(body);
    *response.status_mut() = e.kind.status();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CONTENT_LENGTH, length);
    headers.insert("remora-error", HeaderValue::from_static(e.kind.as_str()));
    response
}

/// The authority the client addressed: `:authority`, else `Host`, else the
/// original destination.
pub(crate) fn authority_of(uri: &Uri, headers: &http::HeaderMap, orig_dst: SocketAddr) -> String {
    if let Some(authority) = uri.authority() {
        return authority.as_str().to_owned();
    }
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| orig_dst.to_string())
}

/// Forwards `req` to `endpoint` over `upstream`, preserving the client's
/// authority, cleaning hop-by-hop headers and splicing protocol upgrades
/// (WebSocket) once the upstream agrees to them.
pub(crate) async fn forward(
    tunnels: &Drain,
    pool: &Arc<Pool>,
    endpoint: &Peer,
    upstream: Upstream,
    authority: &str,
    mut req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let upgrade = match req.version() {
        Version::HTTP_2 => None,
        _ => headers::upgrade_requested(req.headers()),
    };
    let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    headers::strip_hop_by_hop(req.headers_mut(), upgrade.clone());
    prepare_uri(&mut req, upstream, authority)?;

    let mut response = pool.send(endpoint, upstream, req).await?;
    // Loggers say which endpoint answered.
    response
        .extensions_mut()
        .insert(crate::plugins::UpstreamAddr(endpoint.addr));

    if let (Some(downstream), StatusCode::SWITCHING_PROTOCOLS) =
        (downstream_upgrade, response.status())
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        // The tunnel outlives the HTTP connection that set it up; the drain
        // waits for it, and closes it at the deadline.
        let forced = tunnels.forced();
        let idle = tunnels.tcp_idle_timeout();
        tunnels.spawn(async move {
            let tunnel = async move {
                match tokio::try_join!(downstream, upstream_upgrade) {
                    Ok((down, up)) => {
                        let mut down = TokioIo::new(down);
                        let mut up = TokioIo::new(up);
                        if let Err(e) =
                            crate::io::copy_bidirectional(&mut down, &mut up, 16 * 1024, idle).await
                        {
                            debug!(error = %e, "upgraded connection ended with an error");
                        }
                    }
                    Err(e) => debug!(error = %e, "protocol upgrade failed"),
                }
            };
            tokio::select! {
                () = tunnel => {}
                () = forced => debug!("upgraded connection closed at the drain deadline"),
            }
        });
        let upgrade = response.headers().get(header::UPGRADE).cloned();
        headers::strip_hop_by_hop(response.headers_mut(), upgrade);
        return Ok(response);
    }
    headers::strip_hop_by_hop(response.headers_mut(), None);
    Ok(response)
}

/// HTTP/1 upstreams get origin-form with a `Host` header; HTTP/2 upstreams
/// get the scheme and `:authority`.
fn prepare_uri(
    req: &mut Request<Body>,
    upstream: Upstream,
    authority: &str,
) -> Result<(), ProxyError> {
    // The path and query are reused as they are (cheap clones, no parse).
    let path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let bad_uri = |e: http::uri::InvalidUriParts| {
        ProxyError::new(ErrorKind::BadRequest, format!("bad request target: {e}"))
    };
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path_and_query);
    match upstream {
        Upstream::Http1 => {
            if !req.headers().contains_key(header::HOST) {
                let host = HeaderValue::from_str(authority).map_err(|e| {
                    ProxyError::new(ErrorKind::BadRequest, format!("bad authority: {e}"))
                })?;
                req.headers_mut().insert(header::HOST, host);
            }
            *req.version_mut() = Version::HTTP_11;
        }
        Upstream::Http2 => {
            req.headers_mut().remove(header::HOST);
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some(authority.parse().map_err(|e| {
                ProxyError::new(ErrorKind::BadRequest, format!("bad authority: {e}"))
            })?);
            *req.version_mut() = Version::HTTP_2;
        }
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(bad_uri)?;
    Ok(())
}
