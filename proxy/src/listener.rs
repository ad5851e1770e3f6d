//! The capture listeners. Each accepted connection is traced back to its
//! original destination, its protocol is detected, and it is forwarded:
//! outbound to the original destination, inbound to the app in this pod.
//!
//! This module owns the per-connection flow, and the accept loop's defence
//! against exhaustion: a listener at its connection limit resets new
//! connections at once, and accept errors back off. It does not own routing
//! or HTTP (later layers plug in where the protocol is known), nor sockets'
//! details (`net`), nor metrics' definitions (`metrics`), nor the counting
//! of limits (`limits`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::authz::{Decision, Subject};
use crate::balance::{EndpointState, Outcome};
use crate::config::{Config, INBOUND_SOURCE_V4, INBOUND_SOURCE_V6};
use crate::direction::Direction;
use crate::drain::Drain;
use crate::error::ErrorKind;
use crate::http::{Downstream, HttpProxy};
use crate::io::{CopyError, Counted, Rewind};
use crate::limits::{ConnectionLimit, Slot, Throttle};
use crate::metrics::{Metrics, RefusedReason};
use crate::net;
use crate::source::discovery::Dest;
use crate::state::{Snapshot, State};
use crate::transport::detect::{self, Protocol};
use crate::transport::{Accepted, Acceptor, Dial, Inner, Terminated};
use remora_api::{InboundMode, Protocol as ApiProtocol};

/// Buffer size for each direction of an opaque TCP copy.
const COPY_BUF: usize = 16 * 1024;

/// A warning repeated by a flood (refused connections, failed accepts) is
/// logged at most this often, with the count since the last one.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// After an accept error that is not the connection's own (out of file
/// descriptors or memory), the loop waits this long, doubling while the
/// errors go on, up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// What every connection handler shares.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Metrics,
    pub(crate) drain: Drain,
    pub(crate) state: Arc<State>,
    pub(crate) http: Arc<HttpProxy>,
    /// The acceptor step every captured connection goes through.
    pub(crate) acceptor: Acceptor,
}

impl Proxy {
    /// Accepts connections until the drain starts, then drops the listener
    /// so that new connections are refused.
    ///
    /// Each connection takes a slot in `limit` for as long as its socket is
    /// open. Past the limit a connection is accepted and reset at once: the
    /// kernel's backlog never fills, the client fails fast, and connections
    /// already open (and the admin server, on its own thread) carry on.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        direction: Direction,
        limit: ConnectionLimit,
    ) {
        let local = listener.local_addr().ok();
        let started = self.drain.started();
        tokio::pin!(started);
        let mut refusals = Throttle::new(WARN_EVERY);
        let mut failures = Throttle::new(WARN_EVERY);
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut started => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    let Some(slot) = limit.try_acquire() else {
                        self.refuse(stream, peer, direction, &limit, &mut refusals);
                        continue;
                    };
                    let proxy = self.clone();
                    let forced = self.drain.forced();
                    self.drain.spawn(async move {
                        tokio::select! {
                            () = proxy.handle(stream, slot, peer, direction) => {}
                            () = forced => {
                                proxy.metrics.tcp_error(direction, ErrorKind::Drain);
                            }
                        }
                    });
                }
                // The connection's own failure (reset while in the backlog):
                // nothing to wait for.
                Err(e) if is_connection_error(&e) => {
                    debug!(direction = direction.as_str(), error = %e, "connection failed before accept");
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off rather
                    // than spin (the listener stays readable), and keep serving.
                    if let Some(failed) = failures.note(Instant::now()) {
                        warn!(
                            direction = direction.as_str(),
                            error = %e,
                            failed,
                            backoff = ?backoff,
                            open = limit.open(),
                            "accept failed; backing off (if out of file descriptors, lower --max-connections or raise the open-file limit)"
                        );
                    }
                    tokio::select! {
                        biased;
                        () = &mut started => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
        info!(
            ?local,
            direction = direction.as_str(),
            "listener closed for drain"
        );
    }

    /// Closes a connection past the listener's limit with a reset (SO_LINGER
    /// 0), so the client fails at once rather than after sending a request.
    fn refuse(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        direction: Direction,
        limit: &ConnectionLimit,
        refusals: &mut Throttle,
    ) {
        if let Err(e) = stream.set_zero_linger() {
            debug!(%peer, error = %e, "cannot set SO_LINGER; closing the refused connection normally");
        }
        // Counted before the reset goes out: a client that sees it finds
        // it in /metrics.
        self.metrics
            .connection_refused(direction, RefusedReason::Limit);
        drop(stream);
        if let Some(refused) = refusals.note(Instant::now()) {
            warn!(
                direction = direction.as_str(),
                max_connections = limit.max(),
                refused,
                last_peer = %peer,
                "listener at its connection limit; resetting new connections (raise --max-connections, or find the client holding them open)"
            );
        }
    }

    async fn handle(&self, stream: TcpStream, slot: Slot, peer: SocketAddr, direction: Direction) {
        let _ = stream.set_nodelay(true);
        let Some(dst) = self.destination(&stream, direction) else {
            return;
        };
        if direction == Direction::Inbound && self.acceptor.is_mesh() {
            return self.handle_inbound(stream, slot, peer, dst).await;
        }
        let Accepted {
            io: stream,
            peer_identity,
        } = self.acceptor.accept(stream);
        self.handle_plain(stream, slot, peer, dst, direction, peer_identity)
            .await;
    }

    /// An inbound connection when this proxy takes part in mesh mTLS: a
    /// mesh ClientHello is terminated and the connection goes on with the
    /// identity its client proved; anything else is plaintext (the app's
    /// own TLS included), which the port's mode may refuse.
    async fn handle_inbound(
        &self,
        mut stream: TcpStream,
        slot: Slot,
        peer: SocketAddr,
        dst: SocketAddr,
    ) {
        let direction = Direction::Inbound;
        // Every port is looked at, even those that skip detection: a mesh
        // client always speaks first. A plaintext client of a server-first
        // port waits out the detect timeout (PERMISSIVE only).
        let detected = match detect::detect(&mut stream, self.config.detect_timeout).await {
            Ok(detected) => detected,
            Err(e) => {
                debug!(%peer, %dst, error = %e, "client failed before its protocol was known");
                self.metrics.tcp_error(direction, ErrorKind::Detect);
                return;
            }
        };
        if detected.protocol != Protocol::Tls {
            let stream = Rewind::new(detected.prefix, stream);
            return self
                .handle_plain(stream, slot, peer, dst, direction, None)
                .await;
        }
        match self
            .acceptor
            .terminate(stream, detected.prefix, MESH_HANDSHAKE_TIMEOUT)
            .await
        {
            Terminated::Mesh {
                io,
                identity,
                inner,
            } => {
                let snapshot = self.state.load();
                let port = port_label(&snapshot, dst.port());
                if inner == Inner::Tcp
                    && !self.tcp_authorized(&snapshot, Some(&identity), dst, &port)
                {
                    return;
                }
                self.metrics.inbound_connection(true, &port, "accepted");
                drop(snapshot);
                let protocol = match inner {
                    Inner::H2 => Protocol::H2,
                    Inner::Http1 => Protocol::Http1,
                    Inner::Tcp => Protocol::Opaque,
                };
                let conn = self.metrics.connection(direction, protocol);
                let client =
                    Counted::new(io, conn.received.clone(), conn.sent.clone()).holding(slot);
                match inner {
                    Inner::H2 | Inner::Http1 => {
                        let downstream = Downstream {
                            direction,
                            peer,
                            orig_dst: dst,
                            peer_identity: Some(identity),
                        };
                        self.http
                            .clone()
                            .serve(client, protocol, downstream, &self.drain)
                            .await;
                    }
                    Inner::Tcp => {
                        self.forward_tcp(client, peer, dst, direction, TcpTarget::Original)
                            .await
                    }
                }
            }
            Terminated::NotMesh { prefix, io } => {
                let stream = Rewind::new(prefix, io);
                self.handle_plain(stream, slot, peer, dst, direction, None)
                    .await;
            }
            Terminated::Failed(why) => {
                debug!(%peer, %dst, %why, "inbound mTLS failed");
                self.metrics.tcp_error(direction, ErrorKind::Tls);
            }
        }
    }

    /// Whether inbound authorization lets this TCP connection through;
    /// counts and logs a denial.
    fn tcp_authorized(
        &self,
        snapshot: &Snapshot,
        identity: Option<&crate::transport::Identity>,
        dst: SocketAddr,
        port: &str,
    ) -> bool {
        if snapshot.authorizer.is_open() {
            return true;
        }
        let subject = Subject {
            identity,
            port: dst.port(),
            http: None,
        };
        match snapshot.authorizer.decide(&subject) {
            Decision::Allow => true,
            Decision::Deny { policy, rule } => {
                debug!(%dst, client = ?identity, %policy, %rule, "connection denied by authorization");
                self.metrics.authz_denied(&policy, &rule);
                self.metrics
                    .inbound_connection(identity.is_some(), port, "denied");
                self.metrics
                    .tcp_error(Direction::Inbound, ErrorKind::Forbidden);
                false
            }
        }
    }

    /// A connection without mesh TLS: detection, then HTTP or opaque TCP.
    async fn handle_plain<S>(
        &self,
        mut stream: S,
        slot: Slot,
        peer: SocketAddr,
        dst: SocketAddr,
        direction: Direction,
        peer_identity: Option<crate::transport::Identity>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut snapshot = self.state.load();
        // Discovery mode: a destination the config does not know is asked
        // for once, and the first connections to it wait (bounded) for the
        // answer. A known one never gets here.
        let on_demand = self.state.discovery();
        if direction == Direction::Outbound && snapshot.service_by_addr(dst).is_none() {
            if let Some(discovery) = on_demand {
                drop(snapshot);
                let asked = discovery.on_demand.ask(Dest::Addr(dst)).await;
                debug!(%dst, ?asked, "destination asked for on demand");
                snapshot = self.state.load();
            }
        }
        // The destination stays subscribed while this connection lasts.
        let _in_use = match (direction, on_demand) {
            (Direction::Outbound, Some(discovery)) => discovery.on_demand.in_use(&Dest::Addr(dst)),
            _ => None,
        };
        if direction == Direction::Inbound {
            let port = port_label(&snapshot, dst.port());
            if snapshot.inbound.mode_for(dst.port()) == InboundMode::Strict {
                debug!(%peer, %dst, "plaintext connection refused: the port is STRICT");
                self.metrics.inbound_connection(false, &port, "refused");
                self.metrics
                    .tcp_error(direction, ErrorKind::PlaintextRefused);
                return;
            }
            self.metrics.inbound_connection(false, &port, "accepted");
        }
        let declared = match direction {
            Direction::Outbound => snapshot.service_by_addr(dst).map(|s| s.protocol),
            Direction::Inbound => Some(snapshot.inbound_protocol(dst.port())),
        };

        // Declared ports skip detection: opaque and tcp ones are bytes, and
        // http2 and grpc ones speak HTTP/2 with prior knowledge. A port
        // listed as http (a service port, or an inbound port) speaks HTTP,
        // so a late or bad request head is answered as HTTP, not opaque.
        let declared_http = match direction {
            Direction::Outbound => declared == Some(ApiProtocol::Http),
            Direction::Inbound => snapshot
                .inbound
                .ports
                .iter()
                .any(|p| p.port == dst.port() && p.protocol == ApiProtocol::Http),
        };
        let declared_protocol = match declared {
            Some(ApiProtocol::Opaque | ApiProtocol::Tcp) => Some(Protocol::Opaque),
            Some(ApiProtocol::Http2 | ApiProtocol::Grpc) => Some(Protocol::H2),
            _ if self.config.opaque_ports.contains(&dst.port()) => Some(Protocol::Opaque),
            _ => None,
        };
        let detected = if let Some(protocol) = declared_protocol {
            detect::Detected {
                protocol,
                prefix: bytes::Bytes::new(),
                timed_out: false,
            }
        } else if declared_http {
            match crate::http::sniff(&mut stream, snapshot.http.request_headers_timeout).await {
                Ok(detected) => detected,
                Err(e) => {
                    debug!(%peer, %dst, error = %e, "client failed before its request head");
                    self.metrics.tcp_error(direction, ErrorKind::Detect);
                    return;
                }
            }
        } else {
            match detect::detect(&mut stream, self.config.detect_timeout).await {
                Ok(detected) => detected,
                Err(e) => {
                    debug!(%peer, %dst, error = %e, "client failed before its protocol was known");
                    self.metrics.tcp_error(direction, ErrorKind::Detect);
                    return;
                }
            }
        };
        if detected.timed_out && !declared_http {
            self.metrics.detect_timeout(direction);
        }

        let conn = self.metrics.connection(direction, detected.protocol);
        let client = Counted::new(
            Rewind::new(detected.prefix, stream),
            conn.received.clone(),
            conn.sent.clone(),
        )
        .holding(slot);
        if declared_http && detected.timed_out {
            drop(snapshot);
            self.http.late_head(client, direction).await;
            return;
        }
        let is_http = matches!(detected.protocol, Protocol::Http1 | Protocol::H2);
        if is_http && wants_http(&snapshot, direction, dst, declared, on_demand.is_some()) {
            drop(snapshot);
            self.http
                .clone()
                .serve(
                    client,
                    detected.protocol,
                    Downstream {
                        direction,
                        peer,
                        orig_dst: dst,
                        peer_identity,
                    },
                    &self.drain,
                )
                .await;
            return;
        }
        let target = match direction {
            Direction::Outbound => tcp_target(&snapshot, dst),
            Direction::Inbound => {
                let port = port_label(&snapshot, dst.port());
                if !self.tcp_authorized(&snapshot, None, dst, &port) {
                    return;
                }
                TcpTarget::Original
            }
        };
        // A long-lived connection must not pin this config: dropping the
        // snapshot lets later configs' changes (and their clean-up) happen.
        drop(snapshot);
        self.forward_tcp(client, peer, dst, direction, target).await;
    }

    /// Forwards a connection as opaque bytes: to the original destination,
    /// or balanced over a `tcp` service port's backends.
    async fn forward_tcp<I>(
        &self,
        mut client: I,
        peer: SocketAddr,
        dst: SocketAddr,
        direction: Direction,
        target: TcpTarget,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (upstream_addr, identity, connect_timeout, guard) = match target {
            TcpTarget::Original => (dst, None, self.config.connect_timeout, None),
            TcpTarget::Endpoint {
                endpoint,
                connect_timeout,
            } => (
                endpoint.address(),
                endpoint.peer().identity,
                connect_timeout,
                Some(endpoint.start_request()),
            ),
            TcpTarget::Unavailable(reason) => {
                debug!(%peer, %dst, %reason, "no endpoint for TCP service");
                self.metrics.tcp_error(direction, ErrorKind::Connect);
                return;
            }
        };
        let dial = Dial {
            addr: upstream_addr,
            source: self.source_for(direction, upstream_addr),
            timeout: connect_timeout,
            identity: identity.clone(),
            inner: Inner::Tcp,
        };
        let connected = self.state.connector().connect(&dial).await;
        // The balancer learns whether the endpoint took the connection, so
        // outlier detection can eject one that refuses.
        if let Some(guard) = guard {
            guard.finish(match connected {
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::ConnectFailure,
            });
        }
        let mut upstream = match connected {
            Ok(upstream) => upstream,
            Err(e) => {
                debug!(%peer, dst = %upstream_addr, error = %e, "upstream connect failed");
                self.metrics.tcp_error(direction, ErrorKind::Connect);
                return;
            }
        };
        let idle_timeout = self.config.tcp_idle_timeout;
        match crate::io::copy_bidirectional(&mut client, &mut upstream, COPY_BUF, idle_timeout)
            .await
        {
            Ok(_) => {}
            Err(e @ CopyError::Idle(_)) => {
                debug!(%peer, %dst, error = %e, "idle connection closed");
                self.metrics.tcp_error(direction, ErrorKind::IdleTimeout);
            }
            Err(e @ CopyError::Io(_)) => {
                debug!(%peer, %dst, error = %e, "connection ended with an error");
                self.metrics.tcp_error(direction, ErrorKind::Io);
            }
        }
    }

    /// The original destination, unless there is none or it is this very
    /// listener (a connection made straight to the capture port: forwarding
    /// it would loop back here).
    fn destination(&self, stream: &TcpStream, direction: Direction) -> Option<SocketAddr> {
        let dst = match net::original_dst(stream) {
            Ok(dst) => dst,
            Err(e) => {
                debug!(error = %e, "no original destination");
                self.metrics.tcp_error(direction, ErrorKind::OriginalDst);
                return None;
            }
        };
        if is_loop(dst, stream.local_addr().ok(), &self.config) {
            debug!(%dst, "connection addressed to the proxy itself; refusing to loop");
            self.metrics.tcp_error(direction, ErrorKind::OriginalDst);
            return None;
        }
        Some(dst)
    }

    /// Inbound forwards leave from a fixed loopback source that the capture
    /// rules return untouched; outbound ones leave as the proxy's uid, which
    /// the rules never redirect.
    fn source_for(&self, direction: Direction, dst: SocketAddr) -> Option<IpAddr> {
        match (direction, dst) {
            (Direction::Outbound, _) => None,
            (Direction::Inbound, SocketAddr::V4(_)) => Some(INBOUND_SOURCE_V4.into()),
            (Direction::Inbound, SocketAddr::V6(_)) => Some(INBOUND_SOURCE_V6.into()),
        }
    }
}

/// How long a mesh client has for its ClientHello and the handshake.
const MESH_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `port` label of inbound connection metrics: a port the config
/// declares, or `other`, so that a port scan cannot grow the series.
fn port_label(snapshot: &Snapshot, port: u16) -> std::borrow::Cow<'static, str> {
    if snapshot.inbound.ports.iter().any(|p| p.port == port) {
        port.to_string().into()
    } else {
        "other".into()
    }
}

/// Accept errors that belong to one connection (it was reset or timed out
/// while waiting in the backlog), not to the listener or the process.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(
            nix::libc::EPROTO
                | nix::libc::ENETDOWN
                | nix::libc::EHOSTUNREACH
                | nix::libc::ENETUNREACH
        )
    )
}

/// Whether a detected-HTTP connection is proxied request by request.
/// Inbound: unless the port is declared otherwise. Outbound: when the mesh
/// config knows the destination (by address, or maybe by `Host`); unknown
/// destinations pass through as bytes, untouched, except in discovery mode
/// (`on_demand`), where each request's `Host` may name a destination to ask
/// remora-cp for.
fn wants_http(
    snapshot: &Snapshot,
    direction: Direction,
    dst: SocketAddr,
    declared: Option<ApiProtocol>,
    on_demand: bool,
) -> bool {
    match direction {
        Direction::Inbound => declared.is_none_or(ApiProtocol::is_http),
        Direction::Outbound => match declared {
            Some(protocol) => protocol.is_http(),
            None => on_demand || snapshot.has_hostnames_on(dst.port()),
        },
    }
}

/// Where an opaque connection goes.
#[derive(Debug)]
enum TcpTarget {
    Original,
    Endpoint {
        endpoint: Arc<EndpointState>,
        connect_timeout: Duration,
    },
    Unavailable(&'static str),
}

/// Where an outbound opaque connection goes: a `tcp` port's balanced
/// endpoint, or the original destination.
fn tcp_target(snapshot: &Snapshot, dst: SocketAddr) -> TcpTarget {
    let Some(port) = snapshot.service_by_addr(dst) else {
        return TcpTarget::Original;
    };
    if port.protocol != ApiProtocol::Tcp || port.tcp_backends.is_empty() {
        return TcpTarget::Original;
    }
    let Some(backend_ref) = port.routes.routes().first().and_then(|r| r.pick_backend()) else {
        return TcpTarget::Unavailable("no backend with weight");
    };
    let Some(backend) = snapshot.backends.get(backend_ref.name()) else {
        return TcpTarget::Unavailable("backend missing from config");
    };
    match backend.balancer.pick(None) {
        Some(endpoint) => TcpTarget::Endpoint {
            endpoint,
            connect_timeout: backend.config.connect_timeout,
        },
        None => TcpTarget::Unavailable("backend has no endpoints"),
    }
}

/// A connection whose original destination is the listener itself, or a
/// capture port on one of this pod's own addresses, was not redirected by
/// iptables: following it would connect the proxy to itself.
fn is_loop(dst: SocketAddr, local: Option<SocketAddr>, config: &Config) -> bool {
    if Some(dst) == local {
        return true;
    }
    let capture_port = dst.port() == config.outbound_port || dst.port() == config.inbound_port;
    capture_port && (dst.ip().is_loopback() || local.is_some_and(|l| l.ip() == dst.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::defaults()
    }

    #[test]
    fn a_connection_straight_to_a_capture_port_is_a_loop() {
        let config = config();
        let local: SocketAddr = "10.0.0.2:15001".parse().unwrap();
        assert!(is_loop(local, Some(local), &config));
        assert!(is_loop(
            "127.0.0.1:15006".parse().unwrap(),
            Some(local),
            &config
        ));
        assert!(is_loop(
            "10.0.0.2:15006".parse().unwrap(),
            Some(local),
            &config
        ));
        assert!(!is_loop(
            "10.0.0.3:15001".parse().unwrap(),
            Some(local),
            &config
        ));
        assert!(!is_loop(
            "10.0.0.2:8080".parse().unwrap(),
            Some(local),
            &config
        ));
    }
}
