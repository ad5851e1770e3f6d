//! The webhook's serving certificate: read from PEM files (a Secret mounted
//! by the chart) or generated at start, self-signed for the Service's DNS
//! names. TLS 1.3 only, ALPN h2 and http/1.1, no client certificates (the
//! API server authenticates the webhook, not the other way round).
//!
//! This module does not hot-reload the files (left for later,
//! docs/injector.md); `ca_bundle` publishes a generated certificate into
//! the webhook configuration's caBundle.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The server's TLS setup and the certificate it presents, in PEM (the
/// caBundle to trust when it was generated).
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    pub cert_pem: String,
}

/// Why the serving certificate could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {reason}; give a PEM file with the certificate chain, leaf first")]
    Cert { path: String, reason: String },
    #[error("--tls-key {path}: {reason}; give a PEM file with the certificate's private key")]
    Key { path: String, reason: String },
    #[error(
        "the certificate and key do not make a TLS server ({0}); check that the key belongs to \
         the certificate"
    )]
    Config(String),
    #[error("generating a self-signed certificate for {names:?} failed: {reason}")]
    Generate { names: Vec<String>, reason: String },
}

/// Reads the certificate chain and key from PEM files.
pub fn from_files(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.display().to_string(),
        reason,
    };
    let cert_pem = std::fs::read_to_string(cert).map_err(|e| cert_err(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Tls {
        config: server_config(chain, key_der)?,
        cert_pem,
    })
}

/// Generates a self-signed certificate for `names` (DNS names or IPs).
pub fn generate(names: &[String]) -> Result<Tls, TlsError> {
    let generated =
        rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| TlsError::Generate {
            names: names.to_vec(),
            reason: e.to_string(),
        })?;
    let cert_pem = generated.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    Ok(Tls {
        config: server_config(vec![generated.cert.der().clone()], key)?,
        cert_pem,
    })
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
