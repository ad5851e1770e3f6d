//! The Kubernetes `Authenticator`: a `authentication.k8s.io/v1` TokenReview
//! with the expected audience, posted with kube-rs.
//!
//! It owns the review, the checks on its answer (authenticated, the
//! audience echoed back, a service-account username) and a small positive
//! cache. A denial is UNAUTHENTICATED with the API server's own words; an
//! API server that is down, slow (past [`REVIEW_TIMEOUT`]) or failing is
//! UNAVAILABLE (`auth_unavailable`), so the proxy retries. Denials are
//! never cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use super::{AuthError, AuthFuture, Authenticator};
use crate::identity::Identity;

/// A review that has not answered in this time is `auth_unavailable`.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// A proven token is remembered at most this long (less if it expires).
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most tokens remembered; past it, the cache is emptied and starts again.
const CACHE_MAX: usize = 10_000;
const SA_PREFIX: &str = "system:serviceaccount:";

/// Checks tokens with the Kubernetes API server.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    trust_domain: String,
    timeout: Duration,
    /// Token digest -> identity and when to forget it.
    cache: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// Reviews tokens through `client` (in the cluster: `Client::try_default`).
    pub fn new(client: kube::Client, audience: &str, trust_domain: &str) -> Self {
        Self::with_timeout(client, audience, trust_domain, REVIEW_TIMEOUT)
    }

    /// As [`TokenReviewer::new`] with another review timeout (tests).
    pub fn with_timeout(
        client: kube::Client,
        audience: &str,
        trust_domain: &str,
        timeout: Duration,
    ) -> Self {
        Self {
            api: Api::all(client),
            audience: audience.to_owned(),
            trust_domain: trust_domain.to_owned(),
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, digest: &[u8; 32], now: Instant) -> Option<Identity> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(digest) {
            Some((identity, until)) if *until > now => Some(identity.clone()),
            Some(_) => {
                cache.remove(digest);
                None
            }
            None => None,
        }
    }

    fn remember(&self, digest: [u8; 32], identity: &Identity, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(digest, (identity.clone(), now + ttl));
    }

    async fn review(&self, token: &str) -> Result<TokenReviewStatus, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = tokio::time::timeout(
            self.timeout,
            self.api.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| {
            AuthError::Unavailable(format!(
                "the Kubernetes API server did not answer the TokenReview within {}",
                humantime::format_duration(self.timeout)
            ))
        })?;
        let answer = answer.map_err(|e| match e {
            kube::Error::Api(status) => AuthError::Unavailable(format!(
                "the TokenReview failed with {} {}: {} (remora-cp's service account needs `create` on tokenreviews)",
                status.code, status.reason, status.message
            )),
            other => AuthError::Unavailable(format!("the TokenReview failed: {other}")),
        })?;
        answer.status.ok_or_else(|| {
            AuthError::Unavailable("the TokenReview came back without a status".to_owned())
        })
    }
}

/// The identity a reviewed token proves, or why it proves none.
fn identity_of(
    status: &TokenReviewStatus,
    audience: &str,
    trust_domain: &str,
) -> Result<Identity, AuthError> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("the token is not valid");
        return Err(AuthError::Denied(why.to_owned()));
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(AuthError::Denied(format!(
            "the token is not for audience {audience:?} (the API server returned {audiences:?}); \
             mount a projected token with that audience"
        )));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| {
            AuthError::Denied(format!(
                "the token belongs to {username:?}, not to a service account"
            ))
        })?;
    Identity::new(trust_domain, namespace, service_account)
        .map_err(|e| AuthError::Denied(format!("the token's service account: {e}")))
}

/// How long a proven token may be remembered: [`CACHE_TTL`], or less if its
/// `exp` claim comes sooner. The claim is read, not verified: the API
/// server has just verified the token, and it can only shorten the time.
fn cache_ttl(token: &str, now: SystemTime) -> Duration {
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|claims| claims.get("exp").and_then(serde_json::Value::as_u64));
    match exp {
        Some(exp) => (SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
            .duration_since(now)
            .unwrap_or_default()
            .min(CACHE_TTL),
        None => CACHE_TTL,
    }
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some(identity) = self.cached(&digest, Instant::now()) {
                return Ok(identity);
            }
            let status = self.review(token).await?;
            let identity = identity_of(&status, &self.audience, &self.trust_domain)?;
            self.remember(digest, &identity, cache_ttl(token, SystemTime::now()));
            Ok(identity)
        })
    }
}

#[cfg(test)]
mod tests;
