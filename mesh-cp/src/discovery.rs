//! The discovery service (api/proto/remora/discovery/v1): one bidirectional
//! stream per proxy, on the gRPC port beside the certificate service.
//!
//! Owns the per-stream state: who the proxy is (the client certificate's
//! identity when it shows one), what it subscribed to, the pushes it has not
//! acknowledged yet, and when to push. It reads the `MeshView` that
//! translation publishes and never the object store; slicing the view is
//! the pure `slice` module. Each stream runs in its own task writing into
//! its own bounded channel, so a slow reader only ever waits for itself,
//! and a burst of view changes while it waits becomes one push per changed
//! subscription (the watch channel keeps only the newest view).

pub mod slice;
#[cfg(test)]
mod testing;
pub mod view_file;

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::proto::discovery as pb;
use crate::view::MeshView;
use slice::{Key, Resolved};

/// A pod or namespace name longer than this is refused.
const MAX_POD_NAME: usize = 253;
const MAX_NAMESPACE: usize = 63;
/// At most this much of a NACK's message is logged.
const MAX_NACK_MESSAGE: usize = 4096;
/// A fragment's JSON past this is not sent (the proxy gets "not found"
/// with the reason); below `MAX_DISCOVERY_PUSH` with room for the envelope.
const MAX_PUSH_JSON: usize = crate::MAX_DISCOVERY_PUSH - 4096;
/// Pushes in flight per stream; a proxy that stops reading fills this and
/// then only its own task waits.
const STREAM_BUFFER: usize = 16;

/// Per-stream limits and timings, fixed at start.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Subscriptions one stream may hold (besides globals and inbound);
    /// past it a subscribe gets "not found" with the reason.
    pub max_subscriptions: usize,
    /// After a view change, wait this long for more before pushing.
    pub coalesce: Duration,
    /// A push the proxy has not read within this closes its stream.
    pub send_timeout: Duration,
    /// The first message (Hello) must arrive within this.
    pub hello_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_subscriptions: 1024,
            coalesce: Duration::from_millis(20),
            send_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the first message of a stream must be a Hello")]
    NoHello,
    #[error("a stream says Hello once")]
    HelloTwice,
    #[error("pod {0:?} / namespace {1:?}: both are required Kubernetes names (pod up to 253 bytes, namespace up to 63)")]
    BadName(String, String),
    #[error("the client certificate is for namespace {cert:?}, but Hello says {hello:?}")]
    WrongNamespace { cert: String, hello: String },
    #[error("the client certificate carries no SPIFFE identity remora-cp accepts")]
    BadCertificate,
    #[error("an empty message")]
    Empty,
    #[error(transparent)]
    Key(#[from] slice::KeyError),
}

impl From<DiscoveryError> for Status {
    fn from(e: DiscoveryError) -> Self {
        match e {
            DiscoveryError::WrongNamespace { .. } => Status::permission_denied(e.to_string()),
            DiscoveryError::BadCertificate => Status::unauthenticated(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

/// The gRPC service; one per server, shared by every stream.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    view: watch::Receiver<Arc<MeshView>>,
    drain: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

impl DiscoveryService {
    /// Streams end (OK, so proxies move to another replica) when `drain`
    /// turns true.
    pub fn new(
        view: watch::Receiver<Arc<MeshView>>,
        drain: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        Self {
            view,
            drain,
            metrics,
            settings,
        }
    }
}

type PushStream = Pin<Box<dyn Stream<Item = Result<pb::DiscoveryResponse, Status>> + Send>>;

/// The identity in a verified client certificate's URI SAN. rustls has
/// already checked the chain against the trust bundle.
fn peer_identity(leaf: &[u8]) -> Result<Identity, DiscoveryError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|_| DiscoveryError::BadCertificate)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| DiscoveryError::BadCertificate)?
        .ok_or(DiscoveryError::BadCertificate)?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Identity::parse_uri(uri).ok(),
            _ => None,
        })
        .ok_or(DiscoveryError::BadCertificate)
}

fn kubernetes_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Who is on the other end, settled by its Hello and certificate.
#[derive(Debug, Clone)]
struct Peer {
    /// `<namespace>/<pod>`, the workload key.
    workload: String,
    identity: Option<Identity>,
}

fn hello(
    message: Option<pb::DiscoveryRequest>,
    cert: Option<Identity>,
) -> Result<Peer, DiscoveryError> {
    let Some(pb::DiscoveryRequest {
        kind: Some(pb::discovery_request::Kind::Hello(h)),
    }) = message
    else {
        return Err(DiscoveryError::NoHello);
    };
    if !kubernetes_name(&h.pod, MAX_POD_NAME) || !kubernetes_name(&h.namespace, MAX_NAMESPACE) {
        let cut = |s: &str| s.chars().take(64).collect::<String>();
        return Err(DiscoveryError::BadName(cut(&h.pod), cut(&h.namespace)));
    }
    if let Some(id) = &cert {
        if id.namespace() != h.namespace {
            return Err(DiscoveryError::WrongNamespace {
                cert: id.namespace().to_owned(),
                hello: h.namespace,
            });
        }
    }
    Ok(Peer {
        workload: format!("{}/{}", h.namespace, h.pod),
        identity: cert,
    })
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    type StreamStream = PushStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<PushStream>, Status> {
        let cert = match request.peer_certs() {
            Some(certs) => match certs.first() {
                Some(leaf) => Some(peer_identity(leaf)?),
                None => None,
            },
            None => None,
        };
        let mut requests = request.into_inner();
        let first = tokio::time::timeout(self.settings.hello_timeout, requests.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within the hello timeout"))??;
        let peer = hello(first, cert)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = StreamState::new(peer, self.view.clone(), self.metrics.clone(), self.settings);
        tokio::spawn(stream.run(requests, tx, self.drain.clone()));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Decrements the streams gauge however the stream ends.
struct Open(prometheus::IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One proxy's stream.
struct StreamState {
    peer: Peer,
    view_rx: watch::Receiver<Arc<MeshView>>,
    /// The view the proxy has been sent (for what it subscribed to).
    view: Arc<MeshView>,
    subscriptions: BTreeSet<Key>,
    /// Keys whose state must be pushed.
    due: BTreeSet<Key>,
    /// Pushes sent and not acknowledged yet, by nonce.
    unacked: BTreeMap<u64, Key>,
    /// Subscribes refused for the limit, answered at the next flush.
    over_limit: Vec<Key>,
    nonce: u64,
    metrics: Arc<Metrics>,
    settings: Settings,
}

/// Why a stream ended early.
enum End {
    /// The proxy went away or the channel closed.
    Gone,
    /// It stopped reading.
    Slow,
    Refused(Status),
}

impl StreamState {
    fn new(
        peer: Peer,
        mut view_rx: watch::Receiver<Arc<MeshView>>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        let view = view_rx.borrow_and_update().clone();
        // Every proxy gets its globals and its inbound config.
        let subscriptions: BTreeSet<Key> = [Key::Globals, Key::Inbound].into();
        Self {
            peer,
            view_rx,
            view,
            due: subscriptions.clone(),
            subscriptions,
            unacked: BTreeMap::new(),
            over_limit: Vec::new(),
            nonce: 0,
            metrics,
            settings,
        }
    }

    async fn run(
        mut self,
        mut requests: Streaming<pb::DiscoveryRequest>,
        tx: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
        mut drain: watch::Receiver<bool>,
    ) {
        self.metrics.discovery_streams.inc();
        let _open = Open(self.metrics.discovery_streams.clone());
        tracing::info!(workload = %self.peer.workload, identity = ?self.peer.identity.as_ref().map(Identity::uri), "discovery stream opened");
        let mut view_open = true;
        let end = loop {
            if let Err(end) = self.flush(&tx).await {
                break end;
            }
            tokio::select! {
                // The guard `wait_for` returns is not Send: drop it here.
                _ = async { drop(drain.wait_for(|d| *d).await) } => break End::Gone,
                message = requests.message() => match message {
                    Ok(Some(m)) => {
                        if let Err(e) = self.handle(m) {
                            break End::Refused(e.into());
                        }
                    }
                    Ok(None) => break End::Gone,
                    Err(status) => {
                        tracing::debug!(workload = %self.peer.workload, %status, "discovery stream broke");
                        break End::Gone;
                    }
                },
                changed = self.view_rx.changed(), if view_open => {
                    if changed.is_err() {
                        // The publisher is gone; keep serving what there is.
                        view_open = false;
                        continue;
                    }
                    // Let the rest of a burst arrive, then take the newest.
                    tokio::time::sleep(self.settings.coalesce).await;
                    let newest = self.view_rx.borrow_and_update().clone();
                    self.changed(newest);
                }
            }
        };
        match end {
            End::Gone => {}
            End::Slow => tracing::warn!(
                workload = %self.peer.workload,
                timeout = ?self.settings.send_timeout,
                "proxy did not read a push in time; closing its discovery stream"
            ),
            End::Refused(status) => {
                tracing::warn!(workload = %self.peer.workload, %status, "discovery stream refused");
                let _ = tx.try_send(Err(status));
            }
        }
        tracing::info!(workload = %self.peer.workload, "discovery stream closed");
    }

    /// Marks every subscription whose state differs between the sent view
    /// and `newest`.
    fn changed(&mut self, newest: Arc<MeshView>) {
        for key in &self.subscriptions {
            let before = slice::resolve(&self.view, &self.peer.workload, key);
            let after = slice::resolve(&newest, &self.peer.workload, key);
            if before != after {
                self.due.insert(key.clone());
            }
        }
        self.view = newest;
    }

    fn handle(&mut self, message: pb::DiscoveryRequest) -> Result<(), DiscoveryError> {
        use pb::discovery_request::Kind;
        match message.kind.ok_or(DiscoveryError::Empty)? {
            Kind::Hello(_) => return Err(DiscoveryError::HelloTwice),
            Kind::Subscribe(s) => {
                let key = Key::from_proto(s.resource.as_ref())?;
                // Globals and inbound are always held; counting them would
                // let a proxy lose them to the limit.
                let extra = self.subscriptions.len().saturating_sub(2);
                if !self.subscriptions.contains(&key) && extra >= self.settings.max_subscriptions {
                    self.due.remove(&key);
                    self.refuse_over_limit(key);
                    return Ok(());
                }
                // A subscribe to what it holds already asks for the full
                // state again (a proxy resyncing).
                self.subscriptions.insert(key.clone());
                self.due.insert(key);
            }
            Kind::Unsubscribe(u) => {
                let key = Key::from_proto(u.resource.as_ref())?;
                if !matches!(key, Key::Globals | Key::Inbound) {
                    if self.subscriptions.remove(&key) {
                        tracing::info!(workload = %self.peer.workload, resource = %key, "unsubscribed");
                        self.metrics.discovery_unsubscribes.inc();
                    }
                    self.due.remove(&key);
                }
            }
            Kind::Ack(ack) => self.ack(ack),
        }
        Ok(())
    }

    /// Over the limit: the proxy gets its answer at the next flush and
    /// passes the traffic through.
    fn refuse_over_limit(&mut self, key: Key) {
        tracing::warn!(
            workload = %self.peer.workload,
            resource = %key,
            limit = self.settings.max_subscriptions,
            "subscription limit reached"
        );
        self.over_limit.push(key);
    }

    fn ack(&mut self, ack: pb::Ack) {
        let Some(key) = self.unacked.remove(&ack.nonce) else {
            tracing::debug!(workload = %self.peer.workload, nonce = ack.nonce, "ack for no push in flight");
            return;
        };
        // An ack covers every earlier push of this stream too.
        self.unacked.retain(|n, _| *n > ack.nonce);
        if ack.accepted {
            tracing::debug!(workload = %self.peer.workload, nonce = ack.nonce, resource = %key, "push accepted");
            return;
        }
        let mut message = ack.message;
        if message.len() > MAX_NACK_MESSAGE {
            let mut cut = MAX_NACK_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        self.metrics
            .discovery_nacks
            .with_label_values(&[key.kind()])
            .inc();
        tracing::warn!(
            workload = %self.peer.workload,
            nonce = ack.nonce,
            resource = %key,
            version = self.view.version,
            %message,
            "proxy rejected a push (NACK); it keeps its last good config"
        );
    }

    /// Sends what is due, one push per subscription.
    async fn flush(
        &mut self,
        tx: &mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
    ) -> Result<(), End> {
        let over_limit = std::mem::take(&mut self.over_limit);
        let due = std::mem::take(&mut self.due);
        let pushes = due
            .into_iter()
            .map(|key| {
                let resolved = slice::resolve(&self.view, &self.peer.workload, &key);
                (key, resolved)
            })
            .chain(over_limit.into_iter().map(|key| {
                let why = format!(
                    "this stream holds {} subscriptions, the most remora-cp allows",
                    self.settings.max_subscriptions
                );
                (key, Resolved::NotFound(why))
            }))
            .map(|(key, resolved)| (key, slice::render(&resolved)))
            .collect::<Vec<_>>();
        for (key, state) in pushes {
            let state = match state {
                Ok(pb::push::State::Json(json)) if json.len() > MAX_PUSH_JSON => {
                    tracing::error!(resource = %key, bytes = json.len(), "a push is too large to send");
                    pb::push::State::NotFound(format!(
                        "{key} is {} bytes of config, more than the {MAX_PUSH_JSON} a push may carry",
                        json.len()
                    ))
                }
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(resource = %key, error = %e, "could not render a push");
                    continue;
                }
            };
            self.nonce += 1;
            let push = pb::Push {
                nonce: self.nonce,
                version: self.view.version,
                resource: Some(key.to_proto()),
                state: Some(state),
            };
            // Keep at most one unacked push per subscription's worth.
            if self.unacked.len() > 2 * (self.settings.max_subscriptions + 2) {
                self.unacked.pop_first();
            }
            self.unacked.insert(self.nonce, key);
            self.metrics.discovery_pushes.inc();
            let response = pb::DiscoveryResponse {
                kind: Some(pb::discovery_response::Kind::Push(push)),
            };
            match tokio::time::timeout(self.settings.send_timeout, tx.send(Ok(response))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(End::Gone),
                Err(_) => return Err(End::Slow),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_needs_names_and_the_certificates_namespace() {
        let h = |pod: &str, ns: &str| {
            Some(pb::DiscoveryRequest {
                kind: Some(pb::discovery_request::Kind::Hello(pb::Hello {
                    pod: pod.into(),
                    namespace: ns.into(),
                })),
            })
        };
        let web = Identity::parse_uri("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(
            hello(h("web-1", "shop"), Some(web.clone()))
                .unwrap()
                .workload,
            "shop/web-1"
        );
        assert_eq!(
            hello(h("web-1", "shop"), None).unwrap().workload,
            "shop/web-1"
        );
        assert!(matches!(
            hello(h("web-1", "prod"), Some(web)),
            Err(DiscoveryError::WrongNamespace { .. })
        ));
        assert!(matches!(
            hello(h("", "shop"), None),
            Err(DiscoveryError::BadName(..))
        ));
        assert!(matches!(
            hello(h("web/1", "shop"), None),
            Err(DiscoveryError::BadName(..))
        ));
        assert!(matches!(
            hello(h("web-1", &"a".repeat(64)), None),
            Err(DiscoveryError::BadName(..))
        ));
        assert!(matches!(hello(None, None), Err(DiscoveryError::NoHello)));
        let subscribe = pb::DiscoveryRequest {
            kind: Some(pb::discovery_request::Kind::Subscribe(pb::Subscribe {
                resource: None,
            })),
        };
        assert!(matches!(
            hello(Some(subscribe), None),
            Err(DiscoveryError::NoHello)
        ));
    }
}
