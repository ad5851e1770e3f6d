//! The workload's identity: its key, its certificate and the trust bundle.
//!
//! This module owns the certificate client. The private key is made here
//! (ECDSA P-256, rcgen) and never leaves the process. At start the proxy
//! sends remora-cp a CSR with its service-account token; it renews at half
//! the remaining lifetime (±10 %), retries with back-off (1 s doubling to
//! 30 s, with jitter) while the CA is away, keeps its current certificate
//! meanwhile, and fetches the trust bundle with every request. A
//! certificate is never kept past its notAfter: without a renewal by then,
//! the proxy holds none. Everything is published whole on a watch channel
//! as [`IdentityState`]; the TLS layer (`transport`) and the admin server
//! read it there. This module does no TLS with peers.
//!
//! `schedule` is the timing (pure), `material` turns keys, CSRs and PEM
//! into rustls types and checks what the CA sent, `client` is one request
//! to the CA, `metrics` the `remora_identity_*` metrics.

pub(crate) mod client;
mod material;
mod metrics;
mod schedule;

/// The generated client of the certificate service.
#[allow(
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    rust_2018_idioms
)]
mod proto {
    tonic::include_proto!("remora.identity.v1");
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{info, warn};

pub(crate) use self::client::Http2;
use self::client::{CaClient, RequestError};
use self::metrics::IdentityMetrics;
pub(crate) use self::schedule::{draw_jitter, Backoff};
use crate::config::IdentityConfig;

/// What the TLS layer needs, published on a watch channel; replaced whole
/// on every change.
#[derive(Debug, Clone)]
pub(crate) struct IdentityState {
    /// This workload's current credentials; None before the first
    /// certificate and after expiry.
    pub(crate) credentials: Option<Arc<Credentials>>,
    /// The roots peers must chain to (rustls type), never empty once fetched.
    pub(crate) roots: Arc<rustls::RootCertStore>,
    /// SHA-256 fingerprints (hex) of the roots, for /config_dump.
    pub(crate) root_fingerprints: Arc<[String]>,
    pub(crate) trust_domain: Arc<str>,
    /// How the last request to the CA went, for `/ready`.
    pub(crate) ca: CaStatus,
}

/// The workload's certificate and key.
pub(crate) struct Credentials {
    /// The SPIFFE ID the CA gave us.
    pub(crate) identity: crate::transport::Identity,
    /// Leaf + intermediates, and the signing key.
    pub(crate) certified_key: Arc<rustls::sign::CertifiedKey>,
    pub(crate) serial_hex: String,
    pub(crate) not_after: SystemTime,
}

impl std::fmt::Debug for Credentials {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// How the last request to the CA went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaStatus {
    /// Nothing asked yet.
    Starting,
    /// The last request got a certificate.
    Ok,
    /// The last request failed; `reachable` is false when the CA could not
    /// be reached at all.
    Failing { reachable: bool, error: Arc<str> },
}

impl IdentityState {
    fn empty() -> Self {
        IdentityState {
            credentials: None,
            roots: Arc::new(rustls::RootCertStore::empty()),
            root_fingerprints: Arc::from(Vec::new()),
            trust_domain: Arc::from(""),
            ca: CaStatus::Starting,
        }
    }

    /// `Err(detail)` while the proxy may not be ready (no valid
    /// certificate); `Ok(Some(note))` when it is ready but the CA is
    /// failing; `Ok(None)` when all is well.
    pub(crate) fn readiness(&self) -> Result<Option<String>, String> {
        match (&self.credentials, &self.ca) {
            (None, CaStatus::Failing { error, .. }) => {
                Err(format!("identity: no valid certificate: {error}"))
            }
            (None, _) => Err("identity: waiting for the first certificate".to_owned()),
            (Some(creds), CaStatus::Failing { error, .. }) => Ok(Some(format!(
                "identity: {error}; serving with the current certificate until {}",
                humantime::format_rfc3339_seconds(creds.not_after)
            ))),
            (Some(_), _) => Ok(None),
        }
    }
}

/// A certificate client that could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("cannot read --ca-roots {path}: {source}")]
    CaRoots {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--ca-roots {0} holds no PEM certificate")]
    NoCaRoots(PathBuf),
    #[error("--ca-server-name: {0}")]
    ServerName(#[from] rustls::pki_types::InvalidDnsNameError),
    #[error("registering the identity metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The certificates of a PEM file (other blocks are ignored).
pub(crate) fn read_roots(
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let io = |source| IdentityError::CaRoots {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read(path).map_err(io)?;
    let blocks = pem::parse_many(&text)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let roots: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if roots.is_empty() {
        return Err(IdentityError::NoCaRoots(path.to_owned()));
    }
    Ok(roots)
}

/// Started from lib.rs wiring when `--ca-addr` is set; runs on the current
/// runtime. Fails only on startup mistakes (an unreadable `--ca-roots`).
pub(crate) fn spawn(
    config: &IdentityConfig,
    metrics: &crate::metrics::Metrics,
) -> Result<watch::Receiver<Arc<IdentityState>>, IdentityError> {
    let roots = read_roots(&config.ca_roots)?;
    let client = CaClient::new(config.clone(), roots)?;
    let metrics = IdentityMetrics::register(metrics.registry())?;
    let (tx, rx) = watch::channel(Arc::new(IdentityState::empty()));
    tokio::spawn(run(client, tx, metrics));
    Ok(rx)
}

/// A draw for the jitter, in -1..=1.
fn draw() -> f64 {
    draw_jitter()
}

/// Requests, renews and expires, forever (the task ends with the runtime).
///
/// The metrics change inside `send_modify`, under the channel's write lock:
/// `/ready` and `/config_dump` read the state through `borrow`, which waits
/// for that lock, so whoever has seen a metric change (a scrape) or a state
/// change (`/ready`, `/config_dump`) finds the other one made too.
async fn run(client: CaClient, tx: watch::Sender<Arc<IdentityState>>, metrics: IdentityMetrics) {
    let mut backoff = Backoff::new();
    loop {
        let wait = match client.request().await {
            Ok(issued) => {
                let now = SystemTime::now();
                let creds = issued.credentials;
                let remaining = creds.not_after.duration_since(now).unwrap_or_default();
                let expiry = unix_seconds(creds.not_after);
                backoff.reset();
                let wait = schedule::renewal_delay(remaining, draw());
                info!(
                    identity = %creds.identity,
                    serial = %creds.serial_hex,
                    expires = %humantime::format_rfc3339_seconds(creds.not_after),
                    roots = issued.bundle.fingerprints.len(),
                    renew_in = %humantime::format_duration(Duration::from_secs(wait.as_secs())),
                    "workload certificate issued"
                );
                let next = Arc::new(IdentityState {
                    credentials: Some(Arc::new(creds)),
                    roots: issued.bundle.roots,
                    root_fingerprints: issued.bundle.fingerprints,
                    trust_domain: issued.bundle.trust_domain,
                    ca: CaStatus::Ok,
                });
                tx.send_modify(|state| {
                    metrics.renewals_ok.inc();
                    metrics.ca_reachable.set(1);
                    metrics.expiry.set(expiry);
                    *state = next;
                });
                wait
            }
            Err(e) => {
                let wait = backoff.next_delay(draw());
                warn!(error = %e, retry_in = ?wait, "no certificate from the CA; keeping the current one, if any");
                let error: Arc<str> = Arc::from(e.to_string());
                tx.send_modify(|state| {
                    metrics.renewals_error.inc();
                    let reachable = match e.ca_reachable() {
                        Some(reachable) => {
                            metrics.ca_reachable.set(i64::from(reachable));
                            reachable
                        }
                        None => metrics.ca_reachable.get() == 1,
                    };
                    let mut next = (**state).clone();
                    next.ca = CaStatus::Failing { reachable, error };
                    *state = Arc::new(next);
                });
                if matches!(e, RequestError::Refused { .. }) {
                    info!("the CA refused; retrying in case the token is rotated");
                }
                wait
            }
        };
        wait_or_expire(wait, &tx, &metrics).await;
    }
}

/// Sleeps `wait`; if the certificate held expires first, drops it then.
async fn wait_or_expire(
    wait: Duration,
    tx: &watch::Sender<Arc<IdentityState>>,
    metrics: &IdentityMetrics,
) {
    let deadline = tokio::time::Instant::now() + wait;
    let not_after = tx.borrow().credentials.as_ref().map(|c| c.not_after);
    if let Some(not_after) = not_after {
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let expiry = tokio::time::Instant::now() + left;
        if expiry < deadline {
            tokio::time::sleep_until(expiry).await;
            warn!("the workload certificate expired before it could be renewed; holding none");
            tx.send_modify(|state| {
                metrics.expiry.set(0);
                let mut next = (**state).clone();
                next.credentials = None;
                *state = Arc::new(next);
            });
        }
    }
    tokio::time::sleep_until(deadline).await;
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
