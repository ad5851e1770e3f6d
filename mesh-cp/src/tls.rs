//! The gRPC port's TLS: TLS 1.3 only, ALPN h2, the serving certificate the
//! CA issued to the control plane itself (swapped in when it is renewed),
//! and the accept loop that hands finished handshakes to tonic.
//!
//! Client certificates are requested but optional: a proxy's first
//! certificate is proven by a token, so it connects without one; once it
//! has one it shows it, rustls verifies it against the trust bundle, and
//! discovery takes the proxy's identity from it. An invalid certificate
//! fails the handshake.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::ca::Issued;

/// A handshake that takes longer than this is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many handshakes run at once; more connections wait in the
/// kernel's backlog. Proxies finish a handshake in milliseconds, so this is
/// only reached by connections that stall on purpose.
const MAX_HANDSHAKES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("serving certificate: {0}")]
    Cert(String),
    #[error("TLS settings: {0}")]
    Config(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The serving certificate, swapped whole when renewed.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ServingCert {
    pub fn new(issued: &Issued, key_pkcs8: Vec<u8>) -> Result<Self, TlsError> {
        Ok(Self {
            current: ArcSwap::from_pointee(certified_key(issued, key_pkcs8)?),
        })
    }

    pub fn replace(&self, issued: &Issued, key_pkcs8: Vec<u8>) -> Result<(), TlsError> {
        self.current
            .store(Arc::new(certified_key(issued, key_pkcs8)?));
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(issued: &Issued, key_pkcs8: Vec<u8>) -> Result<CertifiedKey, TlsError> {
    let mut chain = Vec::with_capacity(1 + issued.chain_pem.len());
    for text in std::iter::once(&issued.leaf_pem).chain(&issued.chain_pem) {
        let block = pem::parse(text).map_err(|e| TlsError::Cert(e.to_string()))?;
        chain.push(CertificateDer::from(block.into_contents()));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8));
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)?;
    Ok(CertifiedKey::new(chain, signing))
}

/// TLS 1.3 only, h2 only, with the given certificate resolver; client
/// certificates optional, verified against `trust_bundle` (PEM roots).
pub fn server_config(
    cert: Arc<ServingCert>,
    trust_bundle: &[String],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for text in trust_bundle {
        let block = pem::parse(text).map_err(|e| TlsError::Cert(e.to_string()))?;
        roots.add(CertificateDer::from(block.into_contents()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts connections until `drain` turns true, and sends each finished
/// handshake to `tx` (tonic's incoming stream). A failed or slow handshake
/// drops that connection only.
pub async fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
    mut drain: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.wait_for(|d| *d) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and the like: back off a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // gRPC calls are small writes answered at once: without NODELAY,
        // Nagle and delayed ACKs add ~40 ms to every call.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
