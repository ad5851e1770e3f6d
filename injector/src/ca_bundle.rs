//! Keeps the webhook configuration's `caBundle` trusting the certificate
//! the injector generated at start (`--webhook-config-name`).
//!
//! At start, whenever the served certificate changes, and every
//! `--ca-bundle-resync` (to repair a bundle someone else overwrote), it
//! reads the MutatingWebhookConfiguration and, for each webhook whose
//! `clientConfig.caBundle` does not hold the certificate, patches it
//! (strategic merge by webhook name, so the rest of each webhook is kept;
//! guarded by the resourceVersion read, a 409 rereads). The new bundle is
//! this certificate first, then at most [`KEEP`] - 1 of the certificates it
//! held, so replicas of the injector that started earlier (and are still
//! serving during a rolling update) stay trusted. Failures retry with
//! back-off, 500 ms doubling to 30 s.
//!
//! It owns only the caBundle field; the webhook configuration itself is
//! the chart's.

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

/// Certificates a bundle keeps at most: this replica's and three others.
pub const KEEP: usize = 4;
/// The field manager of the patch.
pub const FIELD_MANAGER: &str = "remora-injector";
/// The range of `--ca-bundle-resync`.
pub const RESYNC_RANGE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(3600));
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Conflicts in a row before a sync counts as failed (and backs off).
const MAX_CONFLICTS: usize = 3;

/// Why one sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("MutatingWebhookConfiguration {0} does not exist; install it (the chart does) or fix --webhook-config-name")]
    NotFound(String),
    #[error("the Kubernetes API: {0} (the injector's service account needs get and patch on mutatingwebhookconfigurations/{1})")]
    Api(kube::Error, String),
    #[error("the Kubernetes API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the webhook configuration kept changing under us ({0} conflicts in a row)")]
    Conflicts(usize),
    #[error("the served certificate is not PEM: {0}")]
    Certificate(String),
}

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// Every webhook trusted the certificate already.
    Unchanged,
    /// This many webhooks' caBundle were patched.
    Patched(usize),
}

/// The DER of each PEM certificate in `bundle`; anything else is dropped.
fn certificates(bundle: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(bundle)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect()
}

fn to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The bundle a webhook should have, or `None` when `current` trusts
/// `ours` already: `ours`, then the first [`KEEP`] - 1 other certificates
/// of `current` (anything there that is not a PEM certificate is dropped).
pub fn next_bundle(current: &[u8], ours: &[Vec<u8>]) -> Option<String> {
    let held = certificates(current);
    if ours.iter().all(|c| held.contains(c)) {
        return None;
    }
    let mut out: String = ours.iter().map(|c| to_pem(c)).collect();
    for cert in held
        .iter()
        .filter(|c| !ours.contains(c))
        .take(KEEP.saturating_sub(ours.len()))
    {
        out.push_str(&to_pem(cert));
    }
    Some(out)
}

/// Patches one MutatingWebhookConfiguration's caBundle.
pub struct Syncer {
    api: Api<MutatingWebhookConfiguration>,
    name: String,
    resync: Duration,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("name", &self.name)
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl Syncer {
    pub fn new(client: kube::Client, name: &str, resync: Duration) -> Self {
        Self {
            api: Api::all(client),
            name: name.to_owned(),
            resync,
        }
    }

    fn api_error(&self, e: kube::Error) -> SyncError {
        match e {
            kube::Error::Api(s) if s.code == 404 => SyncError::NotFound(self.name.clone()),
            e => SyncError::Api(e, self.name.clone()),
        }
    }

    /// One read and, where needed, one patch (rereading on a conflict).
    pub async fn sync_once(&self, cert_pem: &str) -> Result<Synced, SyncError> {
        let ours = certificates(cert_pem.as_bytes());
        if ours.is_empty() {
            return Err(SyncError::Certificate("no CERTIFICATE block".into()));
        }
        // The leaf only: a chain's intermediates are not what the API
        // server needs to trust.
        let ours = &ours[..1];
        for _ in 0..MAX_CONFLICTS {
            let config = timeout(REQUEST_TIMEOUT, self.api.get(&self.name))
                .await
                .map_err(|_| SyncError::Timeout(REQUEST_TIMEOUT))?
                .map_err(|e| self.api_error(e))?;
            let webhooks: Vec<serde_json::Value> = config
                .webhooks
                .iter()
                .flatten()
                .filter_map(|w| {
                    let current = w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice());
                    next_bundle(current.unwrap_or_default(), ours).map(|bundle| {
                        json!({
                            "name": w.name,
                            "clientConfig": {
                                "caBundle": base64::engine::general_purpose::STANDARD.encode(bundle),
                            },
                        })
                    })
                })
                .collect();
            if webhooks.is_empty() {
                return Ok(Synced::Unchanged);
            }
            let count = webhooks.len();
            let patch = json!({
                "metadata": {"resourceVersion": config.metadata.resource_version},
                "webhooks": webhooks,
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            let sent = timeout(
                REQUEST_TIMEOUT,
                self.api
                    .patch(&self.name, &params, &Patch::Strategic(&patch)),
            )
            .await
            .map_err(|_| SyncError::Timeout(REQUEST_TIMEOUT))?;
            match sent {
                Ok(_) => return Ok(Synced::Patched(count)),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(self.api_error(e)),
            }
        }
        Err(SyncError::Conflicts(MAX_CONFLICTS))
    }

    /// Syncs at start, on each change of `cert` (the served certificate's
    /// PEM) and every resync interval, until `stop` turns true. `ready`
    /// turns true once a sync found or put the certificate in the bundle.
    pub async fn run(
        self,
        mut cert: watch::Receiver<String>,
        mut stop: watch::Receiver<bool>,
        ready: watch::Sender<bool>,
    ) {
        'sync: loop {
            let pem = cert.borrow_and_update().clone();
            let mut backoff = BACKOFF_MIN;
            loop {
                let synced = self.sync_once(&pem).await;
                if synced.is_ok() {
                    ready.send_replace(true);
                }
                match synced {
                    Ok(Synced::Unchanged) => {
                        tracing::debug!(config = %self.name, "caBundle trusts the serving certificate")
                    }
                    Ok(Synced::Patched(n)) => {
                        tracing::info!(config = %self.name, webhooks = n, "caBundle updated")
                    }
                    Err(e) => {
                        tracing::warn!(config = %self.name, error = %e, retry_in = ?backoff, "could not sync the caBundle");
                        tokio::select! {
                            _ = sleep(backoff) => {}
                            changed = cert.changed() => if changed.is_err() { return } else { continue 'sync },
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
                break;
            }
            tokio::select! {
                _ = sleep(self.resync) => {}
                changed = cert.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
