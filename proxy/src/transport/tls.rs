//! Mesh TLS: the client and server configurations every mesh connection
//! uses, following this workload's identity as it renews.
//!
//! TLS 1.3 only. Each side presents this workload's current certificate
//! (never an expired one) and checks the peer's chain against the trust
//! bundle; the peer's identity is the one `spiffe://` URI SAN of its leaf.
//! The ALPN names the mesh and the protocol inside it (`Inner`). No session
//! resumption: every connection proves its identity against the bundle in
//! force, so removing a root takes effect at once.
//!
//! This module owns the configurations and the identity check; dialing is
//! `connect`'s, accepting is `accept`'s, and the certificate itself comes
//! from `crate::identity`.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use tokio::sync::watch;
use x509_parser::extensions::GeneralName;

use super::Identity;
use crate::identity::IdentityState;

/// What a mesh connection carries, as its ALPN says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Inner {
    /// HTTP/2: every HTTP request between sidecars, whatever the apps speak.
    H2,
    /// HTTP/1.1: requests that upgrade the connection (WebSocket).
    Http1,
    /// Opaque TCP.
    Tcp,
}

impl Inner {
    pub(crate) const ALL: [Inner; 3] = [Inner::H2, Inner::Http1, Inner::Tcp];

    /// The ALPN protocol id.
    pub(crate) fn alpn(self) -> &'static [u8] {
        match self {
            Inner::H2 => b"remora/h2",
            Inner::Http1 => b"remora/http1.1",
            Inner::Tcp => b"remora/tcp",
        }
    }

    pub(crate) fn from_alpn(alpn: &[u8]) -> Option<Inner> {
        Inner::ALL.into_iter().find(|inner| inner.alpn() == alpn)
    }

    fn index(self) -> usize {
        match self {
            Inner::H2 => 0,
            Inner::Http1 => 1,
            Inner::Tcp => 2,
        }
    }
}

/// Why a mesh handshake's outcome was refused after TLS itself succeeded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PeerIdentityError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer's certificate does not parse: {0}")]
    Unparsable(String),
    #[error("the peer's certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    #[error("the peer's certificate has more than one URI SAN")]
    SeveralUris,
}

/// This workload's credentials and trust bundle as the handshakes read
/// them, swapped whole when the identity state changes.
#[derive(Debug)]
struct Current {
    state: Arc<IdentityState>,
    /// Built once per trust bundle, not per handshake.
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// The mesh's TLS configurations.
pub(crate) struct MeshTls {
    current: Arc<ArcSwap<Current>>,
    clients: [Arc<ClientConfig>; 3],
    server: Arc<ServerConfig>,
}

impl fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        f.debug_struct("MeshTls")
            .field(
                "identity",
                &current
                    .state
                    .credentials
                    .as_ref()
                    .map(|c| c.identity.as_str()),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    #[error("building the mesh TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl MeshTls {
    /// Configurations that follow `identity`: each change of the state is
    /// seen by the next handshake. Call from within a Tokio runtime.
    pub(crate) fn follow(
        mut identity: watch::Receiver<Arc<IdentityState>>,
    ) -> Result<Arc<MeshTls>, TlsSetupError> {
        let first = identity.borrow_and_update().clone();
        let tls = Arc::new(MeshTls::new(first)?);
        let current = Arc::downgrade(&tls.current);
        tokio::spawn(async move {
            while identity.changed().await.is_ok() {
                let state = identity.borrow_and_update().clone();
                match current.upgrade() {
                    Some(current) => current.store(Arc::new(Current::of(state))),
                    None => return,
                }
            }
        });
        Ok(tls)
    }

    /// Configurations for a fixed identity state.
    pub(crate) fn new(state: Arc<IdentityState>) -> Result<MeshTls, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = Arc::new(ArcSwap::from_pointee(Current::of(state)));
        let resolver = Arc::new(OwnCertificate {
            current: current.clone(),
        });
        let algorithms = provider.signature_verification_algorithms;
        let server_verifier = Arc::new(PeerServerVerifier {
            current: current.clone(),
            algorithms,
        });
        let client = |inner: Inner| -> Result<Arc<ClientConfig>, rustls::Error> {
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(server_verifier.clone())
                .with_client_cert_resolver(resolver.clone());
            config.alpn_protocols = vec![inner.alpn().to_vec()];
            config.resumption = rustls::client::Resumption::disabled();
            config.enable_sni = false;
            Ok(Arc::new(config))
        };
        let clients = [
            client(Inner::H2)?,
            client(Inner::Http1)?,
            client(Inner::Tcp)?,
        ];
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(PeerClientVerifier {
                current: current.clone(),
                algorithms,
            }))
            .with_cert_resolver(resolver);
        server.alpn_protocols = Inner::ALL.iter().map(|i| i.alpn().to_vec()).collect();
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Ok(MeshTls {
            current,
            clients,
            server: Arc::new(server),
        })
    }

    pub(crate) fn client(&self, inner: Inner) -> Arc<ClientConfig> {
        self.clients[inner.index()].clone()
    }

    pub(crate) fn server(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Whether this workload holds a certificate it may present now.
    pub(crate) fn has_certificate(&self) -> bool {
        current_key(&self.current.load()).is_some()
    }
}

impl Current {
    fn of(state: Arc<IdentityState>) -> Current {
        let client_verifier = if state.roots.is_empty() {
            None
        } else {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            WebPkiClientVerifier::builder_with_provider(state.roots.clone(), provider)
                .build()
                .map_err(
                    |e| tracing::warn!(error = %e, "trust bundle unusable for client certificates"),
                )
                .ok()
        };
        Current {
            state,
            client_verifier,
        }
    }
}

/// The certificate this workload presents, unless it has expired.
fn current_key(current: &Current) -> Option<Arc<CertifiedKey>> {
    let credentials = current.state.credentials.as_ref()?;
    (credentials.not_after > SystemTime::now()).then(|| credentials.certified_key.clone())
}

/// Presents this workload's certificate, client and server side alike.
#[derive(Debug)]
struct OwnCertificate {
    current: Arc<ArcSwap<Current>>,
}

impl ResolvesServerCert for OwnCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        current_key(&self.current.load())
    }
}

impl ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        current_key(&self.current.load())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The handshake-signature half of a verifier, the same on both sides:
/// TLS 1.3 only, with the provider's algorithms (`self.algorithms`).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General(
                "the mesh speaks TLS 1.3 only".into(),
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Checks a server's chain against the trust bundle. Its name is not
/// checked here: mesh certificates carry no DNS names, and the dialer
/// compares the SPIFFE identity with the one it expects once the handshake
/// is done, before it sends a byte.
#[derive(Debug)]
struct PeerServerVerifier {
    current: Arc<ArcSwap<Current>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let current = self.current.load();
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &current.state.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!();
}

/// Checks a client's chain against the trust bundle in force; a client
/// must present one.
#[derive(Debug)]
struct PeerClientVerifier {
    current: Arc<ArcSwap<Current>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PeerClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let current = self.current.load();
        match &current.client_verifier {
            Some(verifier) => verifier.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General("no trust bundle yet".into())),
        }
    }

    signature_checks!();
}

/// The identity a verified peer proved: the one `spiffe://` URI SAN of its
/// leaf certificate.
pub(crate) fn peer_identity(
    certificates: Option<&[CertificateDer<'_>]>,
) -> Result<Identity, PeerIdentityError> {
    let leaf = certificates
        .and_then(<[_]>::first)
        .ok_or(PeerIdentityError::NoCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| PeerIdentityError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PeerIdentityError::Unparsable(e.to_string()))?
        .ok_or(PeerIdentityError::NoSpiffeId)?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris.next().ok_or(PeerIdentityError::NoSpiffeId)?;
    if uris.next().is_some() {
        return Err(PeerIdentityError::SeveralUris);
    }
    if !uri.starts_with("spiffe://") {
        return Err(PeerIdentityError::NoSpiffeId);
    }
    Ok(Identity::new(uri))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::identity::{CaStatus, Credentials};
    use crate::metrics::Metrics;
    use crate::transport::{Acceptor, ConnectError, Connector, Dial, Terminated};

    /// A root that signs workload leaves, as remora-cp does.
    pub(crate) struct TestCa {
        root: rcgen::Certificate,
        key: KeyPair,
    }

    impl TestCa {
        pub(crate) fn new() -> TestCa {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name.push(
                rcgen::DnType::CommonName,
                format!("test root {}", rand::random::<u32>()),
            );
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let root = params.self_signed(&key).unwrap();
            TestCa { root, key }
        }

        /// The identity state of a workload holding `id`, trusting `trust`.
        pub(crate) fn workload(&self, id: &str, trust: &[&TestCa]) -> Arc<IdentityState> {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
            params.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let issuer = rcgen::Issuer::from_ca_cert_der(self.root.der(), &self.key).unwrap();
            let leaf = params.signed_by(&key, &issuer).unwrap();
            let provider = rustls::crypto::ring::default_provider();
            let signing = provider
                .key_provider
                .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    key.serialize_der(),
                )))
                .unwrap();
            let mut roots = rustls::RootCertStore::empty();
            for ca in trust {
                roots.add(ca.root.der().clone()).unwrap();
            }
            Arc::new(IdentityState {
                credentials: Some(Arc::new(Credentials {
                    identity: Identity::new(id),
                    certified_key: Arc::new(CertifiedKey::new(vec![leaf.der().clone()], signing)),
                    serial_hex: "01".into(),
                    not_after: SystemTime::now() + Duration::from_secs(3600),
                })),
                roots: Arc::new(roots),
                root_fingerprints: Arc::from(Vec::new()),
                trust_domain: Arc::from("cluster.local"),
                ca: CaStatus::Ok,
            })
        }
    }

    const A: &str = "spiffe://cluster.local/ns/default/sa/a";
    const B: &str = "spiffe://cluster.local/ns/default/sa/b";

    /// A server on loopback that terminates one connection with `state`.
    async fn server(
        state: Arc<IdentityState>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Terminated>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = Acceptor::mesh(Some(Arc::new(MeshTls::new(state).unwrap())), Metrics::new());
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 3];
            stream.peek(&mut first).await.unwrap();
            acceptor
                .terminate(stream, bytes::Bytes::new(), Duration::from_secs(5))
                .await
        });
        (addr, task)
    }

    fn dial(addr: SocketAddr, identity: &str, inner: Inner) -> Dial {
        Dial {
            addr,
            source: None,
            timeout: Duration::from_secs(5),
            identity: Some(Identity::new(identity)),
            inner,
        }
    }

    use std::net::SocketAddr;

    #[tokio::test]
    async fn both_sides_prove_their_identity_and_agree_on_the_inner_protocol() {
        let ca = TestCa::new();
        let (addr, server) = server(ca.workload(B, &[&ca])).await;
        let connector = Connector::mesh(
            Some(Arc::new(MeshTls::new(ca.workload(A, &[&ca])).unwrap())),
            Metrics::new(),
        );
        let mut conn = connector
            .connect(&dial(addr, B, Inner::H2))
            .await
            .expect("mTLS to B");
        assert_eq!(conn.peer_identity().map(Identity::as_str), Some(B));
        conn.write_all(b"hello").await.unwrap();
        match server.await.unwrap() {
            Terminated::Mesh {
                mut io,
                identity,
                inner,
            } => {
                assert_eq!((identity.as_str(), inner), (A, Inner::H2));
                let mut buf = [0u8; 5];
                io.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"hello");
            }
            other => panic!("expected a mesh connection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_peer_with_another_identity_fails_the_dial_and_is_counted() {
        let ca = TestCa::new();
        let (addr, _server) = server(ca.workload(A, &[&ca])).await;
        let metrics = Metrics::new();
        let connector = Connector::mesh(
            Some(Arc::new(MeshTls::new(ca.workload(A, &[&ca])).unwrap())),
            metrics.clone(),
        );
        let err = connector
            .connect(&dial(addr, B, Inner::Tcp))
            .await
            .expect_err("A is not B");
        assert!(
            matches!(err, ConnectError::IdentityMismatch { .. }),
            "{err}"
        );
        assert!(err.is_identity_mismatch());
        assert_eq!(
            err.to_string(),
            format!("the endpoint proved identity {A}, not the expected {B}")
        );
        let text = metrics.render();
        assert!(
            text.contains(
                r#"remora_tls_handshakes_total{direction="outbound",result="identity_mismatch"} 1"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_chain_from_another_root_is_refused() {
        let (ours, theirs) = (TestCa::new(), TestCa::new());
        let (addr, server) = server(theirs.workload(B, &[&theirs, &ours])).await;
        let connector = Connector::mesh(
            Some(Arc::new(MeshTls::new(ours.workload(A, &[&ours])).unwrap())),
            Metrics::new(),
        );
        let err = connector
            .connect(&dial(addr, B, Inner::H2))
            .await
            .expect_err("untrusted");
        assert!(matches!(err, ConnectError::Handshake(_)), "{err}");
        assert!(!err.is_identity_mismatch());
        drop(server);
    }

    #[tokio::test]
    async fn a_trust_bundle_with_both_roots_accepts_both_during_a_rotation() {
        let (old, new) = (TestCa::new(), TestCa::new());
        let (addr, server) = server(new.workload(B, &[&old, &new])).await;
        let connector = Connector::mesh(
            Some(Arc::new(
                MeshTls::new(old.workload(A, &[&old, &new])).unwrap(),
            )),
            Metrics::new(),
        );
        connector
            .connect(&dial(addr, B, Inner::H2))
            .await
            .expect("old and new roots both trusted");
        assert!(matches!(server.await.unwrap(), Terminated::Mesh { .. }));
    }

    #[tokio::test]
    async fn an_expired_certificate_is_never_presented() {
        let ca = TestCa::new();
        let state = ca.workload(A, &[&ca]);
        let mut expired = (*state).clone();
        let creds = state.credentials.as_ref().unwrap();
        expired.credentials = Some(Arc::new(Credentials {
            identity: creds.identity.clone(),
            certified_key: creds.certified_key.clone(),
            serial_hex: creds.serial_hex.clone(),
            not_after: SystemTime::now() - Duration::from_secs(1),
        }));
        let tls = MeshTls::new(Arc::new(expired)).unwrap();
        assert!(!tls.has_certificate());
        let connector = Connector::mesh(Some(Arc::new(tls)), Metrics::new());
        let err = connector
            .connect(&dial("127.0.0.1:9".parse().unwrap(), B, Inner::H2))
            .await
            .expect_err("no certificate to present");
        assert!(matches!(err, ConnectError::NoCertificate { .. }), "{err}");
    }

    #[tokio::test]
    async fn an_apps_own_tls_is_handed_back_byte_for_byte() {
        let ca = TestCa::new();
        let (addr, server) = server(ca.workload(B, &[&ca])).await;
        // An ordinary TLS client (ALPN h2), not the mesh.
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("app.example").unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(&hello).await.unwrap();
        match server.await.unwrap() {
            Terminated::NotMesh { prefix, .. } => assert_eq!(&prefix[..], &hello[..]),
            other => panic!("expected the app's TLS back, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_that_starts_like_tls_is_handed_back_not_fatal() {
        let ca = TestCa::new();
        let (addr, server) = server(ca.workload(B, &[&ca])).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let garbage = b"\x16\x03\x01\x00\x05hello-not-a-handshake";
        stream.write_all(garbage).await.unwrap();
        match server.await.unwrap() {
            Terminated::NotMesh { prefix, .. } => assert_eq!(&prefix[..], &garbage[..]),
            other => panic!("expected the bytes back, got {other:?}"),
        }
    }

    #[test]
    fn the_peer_identity_is_the_one_spiffe_uri() {
        let ca = TestCa::new();
        let state = ca.workload(A, &[&ca]);
        let chain = state
            .credentials
            .as_ref()
            .unwrap()
            .certified_key
            .cert
            .clone();
        assert_eq!(peer_identity(Some(&chain)).unwrap().as_str(), A);
        assert_eq!(peer_identity(None), Err(PeerIdentityError::NoCertificate));
        assert!(matches!(
            peer_identity(Some(&[CertificateDer::from(vec![1, 2, 3])])),
            Err(PeerIdentityError::Unparsable(_))
        ));
    }
}
