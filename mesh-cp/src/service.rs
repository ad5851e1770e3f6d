//! The certificate service on the gRPC port: `CreateCertificate` and
//! `TrustBundle`. It bounds the input, asks the `Authenticator` who the caller
//! is, checks the CSR against that identity, and has the CA sign. Every
//! refusal is a gRPC status whose message says why, and is counted by reason.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tonic::{Code, Request, Response, Status};

use crate::auth::{AuthError, Authenticator, MAX_TOKEN};
use crate::ca::csr::{self, CsrError, MAX_CSR_PEM};
use crate::ca::{Ca, CaError};
use crate::metrics::Metrics;
use crate::proto::certificates_server::Certificates;
use crate::proto::{
    CreateCertificateRequest, CreateCertificateResponse, TrustBundleRequest, TrustBundleResponse,
};

/// Why a request got no certificate.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Csr(#[from] CsrError),
    #[error("{0}")]
    Ca(#[from] CaError),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Self::Auth(AuthError::Missing | AuthError::Unknown | AuthError::Denied(_)) => {
                "unauthenticated"
            }
            Self::Auth(AuthError::TooLarge(_)) => "too_large",
            Self::Auth(AuthError::Unavailable(_)) => "auth_unavailable",
            Self::Csr(e) => e.reason(),
            Self::Ca(CaError::Lifetime { .. }) => "lifetime",
            Self::Ca(_) => "internal",
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::Auth(AuthError::Missing | AuthError::Unknown | AuthError::Denied(_)) => {
                Code::Unauthenticated
            }
            Self::Auth(AuthError::TooLarge(_)) => Code::InvalidArgument,
            Self::Auth(AuthError::Unavailable(_)) => Code::Unavailable,
            Self::Csr(e) if e.denied() => Code::PermissionDenied,
            Self::Csr(_) => Code::InvalidArgument,
            Self::Ca(CaError::Lifetime { .. }) => Code::InvalidArgument,
            Self::Ca(_) => Code::Internal,
        }
    }
}

#[derive(Debug)]
pub struct CertificateService {
    ca: Arc<ArcSwap<Ca>>,
    auth: Arc<dyn Authenticator>,
    metrics: Arc<Metrics>,
}

impl CertificateService {
    pub fn new(ca: Arc<ArcSwap<Ca>>, auth: Arc<dyn Authenticator>, metrics: Arc<Metrics>) -> Self {
        Self { ca, auth, metrics }
    }

    async fn create(
        &self,
        req: CreateCertificateRequest,
    ) -> Result<CreateCertificateResponse, Refusal> {
        // Bounds first: nothing larger than these is parsed or looked up.
        if req.csr_pem.len() > MAX_CSR_PEM {
            return Err(CsrError::TooLarge(req.csr_pem.len()).into());
        }
        if req.token.len() > MAX_TOKEN {
            return Err(AuthError::TooLarge(req.token.len()).into());
        }
        if req.token.is_empty() {
            return Err(AuthError::Missing.into());
        }
        let identity = self.auth.authenticate(&req.token).await?;
        let checked = csr::check(&req.csr_pem, &identity)?;
        let ca = self.ca.load();
        let asked = (req.lifetime_seconds != 0).then(|| Duration::from_secs(req.lifetime_seconds));
        let lifetime = ca.leaf_lifetime(asked)?;
        let issued = ca.issue_leaf(&checked, &identity, lifetime, SystemTime::now())?;
        tracing::info!(
            identity = %identity,
            serial = %issued.serial_hex,
            expires = %humantime::format_rfc3339(issued.not_after),
            "certificate issued"
        );
        let expires = issued
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(CreateCertificateResponse {
            leaf_pem: issued.leaf_pem,
            chain_pem: issued.chain_pem,
            expires_unix_seconds: expires,
            identity: identity.uri(),
        })
    }
}

#[tonic::async_trait]
impl Certificates for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let peer = request.remote_addr();
        match self.create(request.into_inner()).await {
            Ok(resp) => {
                self.metrics.issued.inc();
                Ok(Response::new(resp))
            }
            Err(refusal) => {
                let reason = refusal.reason();
                self.metrics.refused.with_label_values(&[reason]).inc();
                tracing::warn!(?peer, reason, error = %refusal, "certificate request refused");
                Err(Status::new(refusal.code(), refusal.to_string()))
            }
        }
    }

    async fn trust_bundle(
        &self,
        _request: Request<TrustBundleRequest>,
    ) -> Result<Response<TrustBundleResponse>, Status> {
        let ca = self.ca.load();
        Ok(Response::new(TrustBundleResponse {
            trust_domain: ca.trust_domain().to_owned(),
            roots_pem: ca.trust_bundle().to_vec(),
        }))
    }
}
