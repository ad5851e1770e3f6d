//! The discovery client (`--discovery-addr`): one gRPC stream over TLS 1.3
//! to remora-cp, on a thread of its own (`remora-discovery`), never on the
//! threads that carry requests.
//!
//! A stream says Hello (pod and namespace; with a workload certificate, it
//! is shown as the client certificate and remora-cp takes the identity from
//! it), which subscribes it to the globals and this pod's inbound config,
//! then subscribes again to every destination asked for so far. Each push
//! goes through the [`Assembly`] into `State::apply`; it is ACKed, or NACKed
//! with the reason, and the last good config stays.
//!
//! While a stream is open, destinations unused for
//! `--discovery-idle-unsubscribe` are unsubscribed and dropped from the
//! config (their pools and metric series go with the compile that drops
//! them; connections in flight keep the snapshot they hold). While
//! remora-cp is away nothing is dropped: the config in force stays.
//!
//! When the stream breaks, or cannot be opened, the client waits (back-off
//! 250 ms doubling to 10 s, ±10 %; reset once a stream delivered a push) and
//! tries the next address, round robin. The config in force stays while
//! remora-cp is away. Every step of opening a stream is bounded, so an
//! address that accepts and never answers, or answers garbage, costs one
//! timeout before the next address is tried.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use remora_api::ParseLimits;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::on_demand::Dest;
use super::proto::{self as pb, discovery_client::DiscoveryClient};
use super::{Assembly, Discovery, Part};
use crate::config::DiscoveryConfig;
use crate::identity::{Backoff, Http2, IdentityState};
use crate::source::Retired;
use crate::state::State;

/// The first reconnect waits this long, doubling to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Dial and TLS handshake together get this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Opening the stream (HTTP/2 handshake and response headers) gets this long.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// remora-cp pushes the globals at once: a stream with no push within this
/// is given up.
const FIRST_PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a remora-cp that vanished without closing.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The first stream waits at most this long for the workload certificate.
const FIRST_CERTIFICATE_WAIT: Duration = Duration::from_secs(5);
/// remora-cp keeps this much of a NACK's message; so do we.
pub(crate) const MAX_NACK_MESSAGE: usize = 4096;
/// remora-cp sends pushes up to this size.
const MAX_PUSH: usize = 4 * 1024 * 1024;
/// Replaced snapshots are looked at this often, to drop them here.
const RETIRE_CHECK: Duration = Duration::from_millis(500);

/// Why a stream ended or could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr}: {status}")]
    Status { addr: String, status: tonic::Status },
    #[error("{addr} sent no push within {timeout:?}")]
    NoPush { addr: String, timeout: Duration },
    #[error("{addr} ended the stream")]
    Ended { addr: String },
    #[error("{addr} is not reading what the proxy sends")]
    NotReading { addr: String },
}

/// A client that could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("--ca-server-name: {0}")]
    ServerName(#[from] rustls::pki_types::InvalidDnsNameError),
    #[error("registering the discovery metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting the discovery thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// `remora_discovery_*`.
#[derive(Debug, Clone)]
pub(crate) struct DiscoveryMetrics {
    pub(crate) applied: IntCounter,
    pub(crate) rejected: IntCounter,
    /// 1 while a stream is open.
    pub(crate) connected: IntGauge,
    pub(crate) reconnects: IntCounter,
    /// Destinations unsubscribed for being idle.
    pub(crate) unsubscribes: IntCounter,
}

impl DiscoveryMetrics {
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let pushes = IntCounterVec::new(
            Opts::new(
                "remora_discovery_pushes_total",
                "Pushes from remora-cp, by result (applied, rejected: NACKed)",
            ),
            &["result"],
        )?;
        let connected = IntGauge::new(
            "remora_discovery_connected",
            "1 while a discovery stream to remora-cp is open, else 0",
        )?;
        let reconnects = IntCounter::new(
            "remora_discovery_reconnects_total",
            "Discovery streams that ended or failed to open, each followed by a new try",
        )?;
        let unsubscribes = IntCounter::new(
            "remora_discovery_unsubscribes_total",
            "Destinations unsubscribed and dropped from the config after no connection or request for --discovery-idle-unsubscribe",
        )?;
        registry.register(Box::new(unsubscribes.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        Ok(DiscoveryMetrics {
            applied: pushes.with_label_values(&["applied"]),
            rejected: pushes.with_label_values(&["rejected"]),
            connected,
            reconnects,
            unsubscribes,
        })
    }
}

/// Round robin over the addresses: each failure moves to the next.
#[derive(Debug, Clone)]
pub(crate) struct Failover {
    len: usize,
    current: usize,
}

impl Failover {
    pub(crate) fn new(len: usize) -> Self {
        Failover {
            len: len.max(1),
            current: 0,
        }
    }

    pub(crate) fn current(&self) -> usize {
        self.current
    }

    pub(crate) fn advance(&mut self) {
        self.current = (self.current + 1) % self.len;
    }
}

/// A NACK's message: the reason, cut to what remora-cp keeps.
pub(crate) fn nack_message(reason: &str) -> String {
    let mut message = reason.to_owned();
    if message.len() > MAX_NACK_MESSAGE {
        let mut cut = MAX_NACK_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    message
}

fn request(kind: pb::discovery_request::Kind) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest { kind: Some(kind) }
}

/// A destination as the protocol names it.
pub(crate) fn resource(dest: &Dest) -> pb::Resource {
    use pb::resource::Kind;
    let kind = match dest {
        Dest::Addr(a) => Kind::Address(pb::Address {
            ip: a.ip().to_string(),
            port: u32::from(a.port()),
        }),
        Dest::Host(h, p) => Kind::Host(pb::Host {
            name: h.clone(),
            port: u32::from(*p),
        }),
    };
    pb::Resource { kind: Some(kind) }
}

fn unsubscribe(dest: &Dest) -> pb::DiscoveryRequest {
    request(pb::discovery_request::Kind::Unsubscribe(pb::Unsubscribe {
        resource: Some(resource(dest)),
    }))
}

/// How often idle destinations are looked for: a tenth of the idle time,
/// 1 s to 1 min, so one is dropped at most 10 % late.
pub(crate) fn sweep_period(idle: Duration) -> Duration {
    (idle / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

fn subscribe(dest: &Dest) -> pb::DiscoveryRequest {
    request(pb::discovery_request::Kind::Subscribe(pb::Subscribe {
        resource: Some(resource(dest)),
    }))
}

/// What a new stream sends first: Hello (globals and inbound come with
/// it), then a subscribe for every destination held.
pub(crate) fn opening(pod: &str, namespace: &str, held: &[Dest]) -> Vec<pb::DiscoveryRequest> {
    let hello = request(pb::discovery_request::Kind::Hello(pb::Hello {
        pod: pod.to_owned(),
        namespace: namespace.to_owned(),
    }));
    std::iter::once(hello)
        .chain(held.iter().map(subscribe))
        .collect()
}

/// The part a push is for, and its destination if it is one.
pub(crate) fn part_of(resource: Option<&pb::Resource>) -> Option<(Part, Option<Dest>)> {
    use pb::resource::Kind;
    match resource?.kind.as_ref()? {
        Kind::Globals(_) => Some((Part::Globals, None)),
        Kind::Inbound(_) => Some((Part::Inbound, None)),
        Kind::Address(a) => {
            let ip: std::net::IpAddr = a.ip.parse().ok()?;
            let port = u16::try_from(a.port).ok()?;
            let dest = Dest::Addr(std::net::SocketAddr::new(ip, port));
            Some((Part::Destination(dest.to_string()), Some(dest)))
        }
        Kind::Host(h) => {
            let port = u16::try_from(h.port).ok()?;
            let dest = Dest::Host(h.name.to_ascii_lowercase(), port);
            Some((Part::Destination(dest.to_string()), Some(dest)))
        }
    }
}

/// Presents the workload certificate held when the connection was made.
#[derive(Debug)]
struct OwnCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client's half of the work; runs on the discovery thread.
struct Client {
    config: DiscoveryConfig,
    server_name: ServerName<'static>,
    roots: Vec<CertificateDer<'static>>,
    identity: Option<watch::Receiver<Arc<IdentityState>>>,
    state: Arc<State>,
    shared: Arc<Discovery>,
    requests: mpsc::Receiver<Dest>,
    metrics: DiscoveryMetrics,
    assembly: Assembly,
    limits: ParseLimits,
    retired: Retired,
    data_plane: tokio::runtime::Handle,
    /// The newest view version applied: the version of a config that only
    /// drops destinations.
    version: u64,
}

/// Starts the discovery thread. `identity` is the certificate client's
/// channel, with `--ca-addr`.
pub(crate) fn spawn(
    config: &DiscoveryConfig,
    roots: Vec<CertificateDer<'static>>,
    identity: Option<watch::Receiver<Arc<IdentityState>>>,
    state: Arc<State>,
    metrics: &crate::metrics::Metrics,
) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Thread)?;
    let client = Client::new(config, roots, identity, state, metrics)?;
    std::thread::Builder::new()
        .name("remora-discovery".into())
        .spawn(move || {
            // `/ready` tells if this thread ever ends (a panic included).
            let _stopped = crate::source::StoppedOnDrop(client.state.clone());
            runtime.block_on(client.run())
        })
        .map_err(StartError::Thread)?;
    Ok(())
}

impl Client {
    /// A client that has not connected yet, registered as the state's
    /// discovery; its pushes compile on the current runtime (the data
    /// plane's).
    fn new(
        config: &DiscoveryConfig,
        roots: Vec<CertificateDer<'static>>,
        identity: Option<watch::Receiver<Arc<IdentityState>>>,
        state: Arc<State>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, StartError> {
        let server_name = ServerName::try_from(config.server_name.clone())?;
        let metrics = DiscoveryMetrics::register(metrics.registry())?;
        let (shared, requests) = Discovery::new(config.wait, config.max_destinations);
        let shared = Arc::new(shared);
        state.set_discovery(shared.clone());
        Ok(Client {
            config: config.clone(),
            server_name,
            roots,
            identity,
            state,
            shared,
            requests,
            metrics,
            assembly: Assembly::default(),
            limits: ParseLimits {
                max_bytes: super::super::MAX_CONFIG_BYTES as usize,
                ..ParseLimits::DEFAULT
            },
            retired: Retired::default(),
            data_plane: tokio::runtime::Handle::current(),
            version: 0,
        })
    }

    async fn run(mut self) {
        // With `--ca-addr`, the first stream waits a little for the first
        // certificate, so that remora-cp learns the identity from it.
        if let Some(identity) = &mut self.identity {
            let first = identity.wait_for(|s| s.credentials.is_some());
            if tokio::time::timeout(FIRST_CERTIFICATE_WAIT, first)
                .await
                .is_err()
            {
                info!("no workload certificate yet; connecting to remora-cp without one");
            }
        }
        let mut failover = Failover::new(self.config.addrs.len());
        let mut backoff = Backoff::between(BACKOFF_START, BACKOFF_MAX);
        loop {
            let (host, port) = self.config.addrs[failover.current()].clone();
            let addr = format!("{host}:{port}");
            let mut delivered = false;
            let result = self.stream(&host, port, &addr, &mut delivered).await;
            self.metrics.connected.set(0);
            if delivered {
                backoff.reset();
            }
            let wait = backoff.next_delay(crate::identity::draw_jitter());
            let error = match result {
                Ok(()) => StreamError::Ended { addr: addr.clone() }.to_string(),
                Err(e) => e.to_string(),
            };
            warn!(error = %error, retry_in = ?wait, "discovery stream to remora-cp lost; keeping the config in force");
            self.shared.status(|s| {
                s.control_plane = None;
                s.last_error = Some(error);
            });
            self.metrics.reconnects.inc();
            failover.advance();
            self.sleep(wait).await;
        }
    }

    /// Sleeps, collecting retired snapshots; new destinations keep waiting
    /// in their channel until a stream is open (their wait bounds them).
    async fn sleep(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + RETIRE_CHECK))
                .await;
            self.retired.collect();
        }
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(self.roots.iter().cloned());
        let identity = self.identity.as_ref().map(|rx| rx.borrow().clone());
        if let Some(state) = &identity {
            for root in state.roots.roots.iter() {
                roots.roots.push(root.clone());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots);
        let key = identity
            .and_then(|s| s.credentials.clone())
            .filter(|c| c.not_after > std::time::SystemTime::now())
            .map(|c| c.certified_key.clone());
        let mut config = match key {
            Some(key) => builder.with_client_cert_resolver(Arc::new(OwnCertificate(key))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    async fn connect(
        &self,
        host: &str,
        port: u16,
        addr: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, StreamError> {
        let failed = |reason: String| StreamError::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let tls = self.tls_config().map_err(|e| failed(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let dial = crate::identity::client::dial_tls(&connector, &self.server_name, (host, port));
        match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!(
                "no TLS connection within {CONNECT_TIMEOUT:?}"
            ))),
        }
    }

    /// One stream, from dial to its end.
    async fn stream(
        &mut self,
        host: &str,
        port: u16,
        addr: &str,
        delivered: &mut bool,
    ) -> Result<(), StreamError> {
        let failed = |reason: String| StreamError::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let tls = self.connect(host, port, addr).await?;
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake::<_, tonic::body::Body>(TokioIo::new(tls));
        let (send, connection) = tokio::time::timeout(OPEN_TIMEOUT, handshake)
            .await
            .map_err(|_| failed(format!("no HTTP/2 handshake within {OPEN_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        // The connection ends with this stream.
        let _connection = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "the connection to remora-cp ended");
            }
        }));
        let origin = http::Uri::try_from(format!("https://{}", self.config.server_name))
            .map_err(|e| failed(e.to_string()))?;
        let mut client = DiscoveryClient::with_origin(Http2(send), origin)
            .max_decoding_message_size(MAX_PUSH)
            .max_encoding_message_size(64 * 1024);
        // Room for the opening (every destination) and the acks after it.
        let (tx, rx) = mpsc::channel(self.config.max_destinations + 64);
        let held = self.shared.on_demand.destinations();
        for message in opening(&self.config.pod_name, &self.config.pod_namespace, &held) {
            if tx.try_send(message).is_err() {
                return Err(StreamError::NotReading {
                    addr: addr.to_owned(),
                });
            }
        }
        let call = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut pushes = tokio::time::timeout(OPEN_TIMEOUT, call)
            .await
            .map_err(|_| failed(format!("no answer within {OPEN_TIMEOUT:?}")))?
            .map_err(|status| StreamError::Status {
                addr: addr.to_owned(),
                status,
            })?
            .into_inner();
        let first = tokio::time::timeout(FIRST_PUSH_TIMEOUT, pushes.message())
            .await
            .map_err(|_| StreamError::NoPush {
                addr: addr.to_owned(),
                timeout: FIRST_PUSH_TIMEOUT,
            })?;
        info!(
            control_plane = addr,
            resubscribed = held.len(),
            "discovery stream open"
        );
        self.metrics.connected.set(1);
        self.shared.status(|s| {
            s.control_plane = Some(addr.to_owned());
            s.last_error = None;
        });
        let mut message = first;
        let mut retire = tokio::time::interval(RETIRE_CHECK);
        let mut sweep = tokio::time::interval(sweep_period(self.config.idle_unsubscribe));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match message {
                Ok(Some(response)) => {
                    if let Some(pb::discovery_response::Kind::Push(push)) = response.kind {
                        *delivered = true;
                        let ack = self.push(push);
                        if tx.try_send(ack).is_err() {
                            return Err(StreamError::NotReading {
                                addr: addr.to_owned(),
                            });
                        }
                    }
                }
                Ok(None) => return Ok(()),
                Err(status) => {
                    return Err(StreamError::Status {
                        addr: addr.to_owned(),
                        status,
                    })
                }
            }
            message = loop {
                tokio::select! {
                    m = pushes.message() => break m,
                    Some(dest) = self.requests.recv() => {
                        debug!(destination = %dest, "subscribing on demand");
                        if tx.try_send(subscribe(&dest)).is_err() {
                            return Err(StreamError::NotReading { addr: addr.to_owned() });
                        }
                    }
                    _ = retire.tick() => self.retired.collect(),
                    _ = sweep.tick() => {
                        for message in self.unsubscribe_idle() {
                            if tx.try_send(message).is_err() {
                                return Err(StreamError::NotReading { addr: addr.to_owned() });
                            }
                        }
                    }
                }
            };
        }
    }

    /// Takes out the destinations idle for `--discovery-idle-unsubscribe`,
    /// drops them from the config, and returns their Unsubscribes.
    fn unsubscribe_idle(&mut self) -> Vec<pb::DiscoveryRequest> {
        let idle = self
            .shared
            .on_demand
            .take_idle(self.config.idle_unsubscribe);
        if idle.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = idle.iter().map(Dest::to_string).collect();
        info!(destinations = ?keys, idle = ?self.config.idle_unsubscribe, "unsubscribing idle destinations");
        match self.assembly.remove(&keys, self.version, &self.limits) {
            Ok(Some(config)) => {
                let entered = self.data_plane.enter();
                let applied = self.state.apply_retiring(config);
                drop(entered);
                match applied {
                    Ok(previous) => self.retired.keep(previous),
                    Err(e) => {
                        warn!(error = %e, "the config without the idle destinations was refused; it stays in force")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "the config without the idle destinations does not assemble; it stays in force")
            }
        }
        // Their versions go, then the count, once the config is without
        // them: whoever sees either finds them gone from /config_dump too.
        self.shared.status(|s| {
            for key in &keys {
                s.versions.remove(key);
            }
        });
        self.metrics.unsubscribes.inc_by(idle.len() as u64);
        idle.iter().map(unsubscribe).collect()
    }

    /// Applies one push; returns its ACK or NACK.
    fn push(&mut self, push: pb::Push) -> pb::DiscoveryRequest {
        let nonce = push.nonce;
        // A destination not held: pushed before remora-cp read this
        // proxy's Unsubscribe. Nothing of it is kept (memory follows what
        // the app talks to), and it is no config problem to NACK.
        if let Some((_, Some(dest))) = part_of(push.resource.as_ref()) {
            if !self.shared.on_demand.holds(&dest) {
                debug!(destination = %dest, nonce, "push for a destination not subscribed; ignored");
                return request(pb::discovery_request::Kind::Ack(pb::Ack {
                    nonce,
                    accepted: true,
                    message: String::new(),
                }));
            }
        }
        let result = self.apply(&push);
        let (accepted, message) = match result {
            Ok(()) => {
                self.metrics.applied.inc();
                (true, String::new())
            }
            Err(reason) => {
                warn!(nonce, version = push.version, %reason, "push rejected (NACK); the last good config stays in force");
                self.metrics.rejected.inc();
                (false, nack_message(&reason))
            }
        };
        request(pb::discovery_request::Kind::Ack(pb::Ack {
            nonce,
            accepted,
            message,
        }))
    }

    fn apply(&mut self, push: &pb::Push) -> Result<(), String> {
        let (part, dest) = part_of(push.resource.as_ref())
            .ok_or_else(|| "the push names no resource the proxy knows".to_owned())?;
        let result = self.apply_part(part.clone(), push);
        let key = match &part {
            Part::Globals => "globals".to_owned(),
            Part::Inbound => "inbound".to_owned(),
            Part::Destination(d) => d.clone(),
        };
        self.shared.status(|s| {
            if result.is_ok() {
                s.versions.insert(key, push.version);
            }
            if matches!(part, Part::Globals) && result.is_ok() {
                s.globals = true;
            }
            if matches!(part, Part::Inbound) && result.is_ok() {
                s.inbound = true;
            }
        });
        // Answered either way: the waiters stop waiting, once /config_dump
        // shows what their connections go by (the config and its version).
        if let Some(dest) = &dest {
            self.shared.on_demand.answered(dest);
        }
        result
    }

    fn apply_part(&mut self, part: Part, push: &pb::Push) -> Result<(), String> {
        use pb::push::State as Pushed;
        let json = match &push.state {
            Some(Pushed::Json(json)) => Some(json.as_str()),
            Some(Pushed::NotFound(why)) => {
                debug!(resource = ?part, %why, "not found");
                None
            }
            None => return Err("the push carries no state".to_owned()),
        };
        let before = self.assembly.clone();
        let config = self
            .assembly
            .apply(part, json, push.version, &self.limits)
            .map_err(|e| e.to_string())?;
        // Compiling starts tasks (health checks, pool sweepers) on the data
        // plane's runtime, as the file source does.
        let entered = self.data_plane.enter();
        let applied = self.state.apply_retiring(config);
        drop(entered);
        match applied {
            Ok(previous) => {
                self.retired.keep(previous);
                self.version = self.version.max(push.version);
                Ok(())
            }
            Err(e) => {
                self.assembly = before;
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(nonce: u64) -> pb::DiscoveryRequest {
        request(pb::discovery_request::Kind::Ack(pb::Ack {
            nonce,
            accepted: true,
            message: String::new(),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_destination_is_unsubscribed_and_dropped_and_a_late_push_ignored() {
        let state = Arc::new(State::new(
            Arc::new(crate::config::defaults()),
            crate::metrics::Metrics::new(),
        ));
        let config = DiscoveryConfig {
            addrs: vec![("cp".into(), 15012)],
            server_name: "remora-cp.remora-system.svc".into(),
            ca_roots: "/r.pem".into(),
            pod_name: "web-1".into(),
            pod_namespace: "shop".into(),
            wait: Duration::from_secs(2),
            max_destinations: 8,
            idle_unsubscribe: Duration::from_secs(10),
        };
        let metrics = crate::metrics::Metrics::new();
        let mut client = Client::new(&config, Vec::new(), None, state.clone(), &metrics).unwrap();
        let vip: std::net::SocketAddr = "10.96.0.10:80".parse().unwrap();
        let dest = Dest::Addr(vip);
        let shared = client.shared.clone();
        let asking = {
            let (shared, dest) = (shared.clone(), dest.clone());
            tokio::spawn(async move { shared.on_demand.ask(dest).await })
        };
        assert_eq!(client.requests.recv().await, Some(dest.clone()));
        let json = serde_json::json!({
            "key": "shop/reviews",
            "service": {"name": "reviews", "addresses": ["10.96.0.10"],
                        "ports": [{"port": 80, "backendRefs": [{"name": "reviews"}]}]},
            "backends": {"reviews": {"endpoints": [{"address": "10.1.0.5:80"}]}},
        })
        .to_string();
        let push = |nonce, version| pb::Push {
            nonce,
            version,
            resource: Some(resource(&dest)),
            state: Some(pb::push::State::Json(json.clone())),
        };
        assert_eq!(client.push(push(1, 3)), accepted(1));
        assert_eq!(
            asking.await.unwrap(),
            super::super::on_demand::Asked::Answered
        );
        assert!(state.load().service_by_addr(vip).is_some());
        assert_eq!(shared.snapshot().versions.get(WEB), Some(&3));

        // In use for a minute: kept. Idle for 10 s after: unsubscribed.
        let connection = shared.on_demand.in_use(&dest).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(client.unsubscribe_idle(), []);
        drop(connection);
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(client.unsubscribe_idle(), []);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(client.unsubscribe_idle(), [unsubscribe(&dest)]);
        let snapshot = state.load();
        assert!(snapshot.service_by_addr(vip).is_none());
        assert_eq!(snapshot.version(), "3");
        assert_eq!(client.metrics.unsubscribes.get(), 1);
        assert_eq!(shared.snapshot().versions.get(WEB), None);
        assert!(!shared.on_demand.holds(&dest));

        // A push remora-cp sent before it read the Unsubscribe: ACKed,
        // not kept, not counted as applied or rejected.
        assert_eq!(client.push(push(2, 4)), accepted(2));
        assert!(state.load().service_by_addr(vip).is_none());
        assert_eq!(
            (client.metrics.applied.get(), client.metrics.rejected.get()),
            (1, 0)
        );
        assert_eq!(client.unsubscribe_idle(), []);
        assert_eq!(client.metrics.unsubscribes.get(), 1);
    }

    const WEB: &str = "address 10.96.0.10:80";

    #[test]
    fn failover_goes_round_robin() {
        let mut f = Failover::new(3);
        let mut seen = vec![f.current()];
        for _ in 0..6 {
            f.advance();
            seen.push(f.current());
        }
        assert_eq!(seen, [0, 1, 2, 0, 1, 2, 0]);
        let mut one = Failover::new(1);
        one.advance();
        assert_eq!(one.current(), 0);
    }

    #[test]
    fn reconnects_back_off_from_250ms_to_10s() {
        let mut b = Backoff::between(BACKOFF_START, BACKOFF_MAX);
        let waits: Vec<u128> = (0..8).map(|_| b.next_delay(0.0).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
        // Jitter moves a wait by 10 % at most, never past the bound.
        assert_eq!(b.next_delay(1.0), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(1.0).as_millis(), 275);
        assert_eq!(b.next_delay(-1.0).as_millis(), 450);
    }

    #[test]
    fn a_new_stream_says_hello_then_resubscribes_to_every_destination() {
        let held = [
            Dest::Addr("10.96.0.10:80".parse().unwrap()),
            Dest::Host("reviews.shop".into(), 9080),
        ];
        let messages = opening("web-1", "shop", &held);
        use pb::discovery_request::Kind;
        let kinds: Vec<String> = messages
            .iter()
            .map(|m| match m.kind.as_ref().unwrap() {
                Kind::Hello(h) => format!("hello {}/{}", h.namespace, h.pod),
                Kind::Subscribe(s) => {
                    let (part, _) = part_of(s.resource.as_ref()).unwrap();
                    format!("subscribe {part:?}")
                }
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "hello shop/web-1",
                "subscribe Destination(\"address 10.96.0.10:80\")",
                "subscribe Destination(\"host reviews.shop:9080\")",
            ]
        );
        assert_eq!(opening("web-1", "shop", &[]).len(), 1);
    }

    #[test]
    fn pushes_name_their_part() {
        use pb::resource::Kind;
        let r = |kind| pb::Resource { kind: Some(kind) };
        assert_eq!(
            part_of(Some(&r(Kind::Globals(pb::Empty {})))),
            Some((Part::Globals, None))
        );
        let v6 = r(Kind::Address(pb::Address {
            ip: "fd00::1".into(),
            port: 80,
        }));
        let dest = Dest::Addr("[fd00::1]:80".parse().unwrap());
        assert_eq!(
            part_of(Some(&v6)),
            Some((Part::Destination("address [fd00::1]:80".into()), Some(dest)))
        );
        let host = r(Kind::Host(pb::Host {
            name: "Reviews".into(),
            port: 80,
        }));
        assert_eq!(
            part_of(Some(&host)).unwrap().0,
            Part::Destination("host reviews:80".into())
        );
        let bad = r(Kind::Address(pb::Address {
            ip: "nope".into(),
            port: 80,
        }));
        assert_eq!(part_of(Some(&bad)), None);
        let big = r(Kind::Host(pb::Host {
            name: "a".into(),
            port: 70000,
        }));
        assert_eq!(part_of(Some(&big)), None);
        assert_eq!(part_of(None), None);
    }

    #[test]
    fn a_nack_carries_the_reason_cut_at_4_kib() {
        assert_eq!(nack_message("backend \"x\" clash"), "backend \"x\" clash");
        let long = "é".repeat(3000); // 6000 bytes
        let cut = nack_message(&long);
        assert_eq!(cut.len(), 4096);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = format!("a{}", "é".repeat(3000));
        assert_eq!(nack_message(&odd).len(), 4095, "cut at a char boundary");
    }
}
