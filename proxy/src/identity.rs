//! This workload's identity: its certificate, key and the trust bundle, as
//! the TLS layer reads them. (The certificate client that fills this in
//! arrives separately; the types are the contract between the two.)

use std::sync::Arc;
use std::time::SystemTime;

use crate::transport::Identity;

/// What the TLS layer needs, published on a watch channel; replaced whole
/// on every change.
#[derive(Debug, Clone)]
pub(crate) struct IdentityState {
    /// This workload's current credentials; None before the first
    /// certificate and after expiry.
    pub(crate) credentials: Option<Arc<Credentials>>,
    /// The roots peers must chain to.
    pub(crate) roots: Arc<rustls::RootCertStore>,
    /// SHA-256 fingerprints (hex) of the roots, for /config_dump.
    pub(crate) root_fingerprints: Arc<[String]>,
    pub(crate) trust_domain: Arc<str>,
}

/// A certificate and its key.
#[derive(Debug)]
pub(crate) struct Credentials {
    /// The SPIFFE ID the CA gave us.
    pub(crate) identity: Identity,
    /// Leaf and intermediates, with the signing key.
    pub(crate) certified_key: Arc<rustls::sign::CertifiedKey>,
    pub(crate) serial_hex: String,
    pub(crate) not_after: SystemTime,
}
