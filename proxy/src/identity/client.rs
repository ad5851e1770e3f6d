//! One request to remora-cp: a fresh TLS 1.3 connection to the CA, the
//! trust bundle, then a CSR with the service-account token. The connection
//! is made for the request and dropped after it: renewals are hours apart,
//! and a new dial is the honest answer to "is the CA reachable now?".
//!
//! The CA's serving certificate is trusted by the `--ca-roots` file and by
//! the last trust bundle fetched, so that it may move to a new root during
//! a rotation (docs/identity.md, step 2).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::material::{self, Bundle, MaterialError};
use super::proto::certificates_client::CertificatesClient;
use super::proto::{CreateCertificateRequest, TrustBundleRequest};
use super::Credentials;
use crate::config::IdentityConfig;

/// Dial and TLS handshake together get this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Each call gets this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The CA refuses tokens larger than this; so do we, before sending.
const MAX_TOKEN: u64 = 8 * 1024;
/// Larger answers are refused before decoding.
const MAX_MESSAGE: usize = 64 * 1024;

/// Why a request for a certificate did not produce one.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("cannot read the service-account token {path}: {source}; is the projected token mounted (--identity-token-file)?")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the service-account token {0} is empty")]
    EmptyToken(PathBuf),
    #[error("the service-account token {0} is larger than 8 KiB")]
    LargeToken(PathBuf),
    #[error("the CA at {addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the CA refused the request ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("the CA's answer is not usable: {0}")]
    Material(#[from] MaterialError),
}

impl RequestError {
    /// Whether the CA answered; `None` when we never asked (token trouble).
    pub(crate) fn ca_reachable(&self) -> Option<bool> {
        match self {
            RequestError::Token { .. }
            | RequestError::EmptyToken(_)
            | RequestError::LargeToken(_) => None,
            RequestError::Unreachable { .. } => Some(false),
            RequestError::Refused { .. } | RequestError::Material(_) => Some(true),
        }
    }
}

/// What one successful request brings back.
#[derive(Debug)]
pub(crate) struct Issued {
    pub(crate) bundle: Bundle,
    pub(crate) credentials: Credentials,
}

/// Talks to the CA; holds what the next connection must trust.
#[derive(Debug)]
pub(crate) struct CaClient {
    config: IdentityConfig,
    server_name: ServerName<'static>,
    /// From `--ca-roots`, read once at start.
    file_roots: Vec<CertificateDer<'static>>,
    /// The last trust bundle fetched.
    bundle_roots: Mutex<Vec<CertificateDer<'static>>>,
}

impl CaClient {
    pub(crate) fn new(
        config: IdentityConfig,
        file_roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, rustls::pki_types::InvalidDnsNameError> {
        let server_name = ServerName::try_from(config.ca_server_name.clone())?;
        Ok(CaClient {
            config,
            server_name,
            file_roots,
            bundle_roots: Mutex::new(Vec::new()),
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.config.ca_host, self.config.ca_port)
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> RequestError {
        RequestError::Unreachable {
            addr: self.addr(),
            reason: reason.to_string(),
        }
    }

    /// The token as kubelet last wrote it.
    fn token(&self) -> Result<String, RequestError> {
        use std::io::Read as _;
        let path = &self.config.token_file;
        let io = |source| RequestError::Token {
            path: path.clone(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_TOKEN + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_TOKEN {
            return Err(RequestError::LargeToken(path.clone()));
        }
        let token = text.trim();
        if token.is_empty() {
            return Err(RequestError::EmptyToken(path.clone()));
        }
        Ok(token.to_owned())
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, RequestError> {
        let mut roots = rustls::RootCertStore::empty();
        let bundle = self
            .bundle_roots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // A root that does not parse is skipped; the others still count.
        roots.add_parsable_certificates(self.file_roots.iter().chain(&bundle).cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.unreachable(e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Dials the CA and shakes hands; bounded by [`CONNECT_TIMEOUT`].
    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, RequestError> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.tls_config()?));
        let host = (self.config.ca_host.as_str(), self.config.ca_port);
        let dial = dial_tls(&connector, &self.server_name, host);
        match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(self.unreachable(format!(
                "no TLS connection within {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            ))),
        }
    }

    /// The trust bundle, then a certificate for a key made now.
    pub(crate) async fn request(&self) -> Result<Issued, RequestError> {
        let token = self.token()?;
        let tls = self.connect().await?;
        // One HTTP/2 connection for the two calls; it closes when `send`
        // and the client are dropped at the end of this request.
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, tonic::body::Body>(TokioIo::new(tls))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "the connection to the CA ended");
            }
        });
        // The origin names the CA for `:authority`; the connection is made.
        let origin = http::Uri::try_from(format!("https://{}", self.config.ca_server_name))
            .map_err(|e| self.unreachable(e))?;
        let mut client = CertificatesClient::with_origin(Http2(send), origin)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);

        let answer = self
            .call(client.trust_bundle(TrustBundleRequest {}))
            .await?;
        let bundle = material::bundle(&answer.trust_domain, &answer.roots_pem)?;
        *self.bundle_roots.lock().unwrap_or_else(|p| p.into_inner()) = bundle.ders.clone();

        let mine = material::key_and_csr()?;
        let answer = self
            .call(client.create_certificate(CreateCertificateRequest {
                csr_pem: mine.csr_pem.clone(),
                token,
                lifetime_seconds: self.config.cert_lifetime.map_or(0, |d| d.as_secs()),
            }))
            .await?;
        let credentials = material::credentials(
            &mine.key,
            &answer.leaf_pem,
            &answer.chain_pem,
            &answer.identity,
            &bundle,
            SystemTime::now(),
        )?;
        Ok(Issued {
            bundle,
            credentials,
        })
    }

    /// One call, bounded by [`CALL_TIMEOUT`].
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RequestError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.status(status)),
            Err(_) => Err(self.unreachable(format!(
                "no answer within {}",
                humantime::format_duration(CALL_TIMEOUT)
            ))),
        }
    }

    /// A gRPC status as the CA meant it: refusals are its answer; a status
    /// tonic made up for a broken connection or a timeout means unreachable.
    fn status(&self, status: tonic::Status) -> RequestError {
        use tonic::Code;
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                self.unreachable(format!("{:?}: {}", status.code(), status.message()))
            }
            code => RequestError::Refused {
                code,
                message: status.message().to_owned(),
            },
        }
    }
}

/// A hyper HTTP/2 connection as the tower service tonic's client calls:
/// all the gRPC client needs, without tonic's `Channel` (balancing,
/// buffering, reconnecting), which one request a renewal does not use.
#[derive(Debug, Clone)]
pub(crate) struct Http2(pub(crate) hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for Http2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// Dials each address `host` resolves to in turn, then shakes hands with
/// the first that answers (TCP_NODELAY set); the caller bounds it in time.
/// The CA client and the discovery client both reach remora-cp this way.
pub(crate) async fn dial_tls(
    connector: &tokio_rustls::TlsConnector,
    server_name: &rustls::pki_types::ServerName<'static>,
    host: (&str, u16),
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut last = None;
    for addr in tokio::net::lookup_host(host).await? {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return connector.connect(server_name.clone(), tcp).await;
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name resolves to no address",
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(token_file: PathBuf) -> CaClient {
        let config = IdentityConfig {
            ca_host: "127.0.0.1".to_owned(),
            ca_port: 1,
            ca_server_name: "remora-cp.remora-system.svc".to_owned(),
            ca_roots: PathBuf::from("/unused"),
            token_file,
            cert_lifetime: None,
        };
        CaClient::new(config, Vec::new()).unwrap()
    }

    #[test]
    fn the_token_is_read_fresh_trimmed_and_bounded() {
        let dir = std::env::temp_dir().join(format!("remora-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let ca = client(path.clone());
        let err = ca.token().unwrap_err();
        assert!(err.to_string().starts_with(&format!(
            "cannot read the service-account token {}: No such file",
            path.display()
        )));
        assert_eq!(err.ca_reachable(), None, "never asked the CA");
        std::fs::write(&path, "eyJ.a.b\n").unwrap();
        assert_eq!(ca.token().unwrap(), "eyJ.a.b");
        // kubelet rotated it: the next request reads the new one.
        std::fs::write(&path, "eyJ.c.d").unwrap();
        assert_eq!(ca.token().unwrap(), "eyJ.c.d");
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(ca.token(), Err(RequestError::EmptyToken(_))));
        std::fs::write(&path, "x".repeat(8 * 1024 + 1)).unwrap();
        assert!(matches!(ca.token(), Err(RequestError::LargeToken(_))));
        std::fs::write(&path, "x".repeat(8 * 1024)).unwrap();
        assert_eq!(ca.token().unwrap().len(), 8 * 1024);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn statuses_tonic_makes_up_mean_unreachable_and_the_cas_are_refusals() {
        let ca = client(PathBuf::from("/unused"));
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Cancelled,
            tonic::Code::Unknown,
        ] {
            let err = ca.status(tonic::Status::new(code, "h2 protocol error"));
            assert_eq!(err.ca_reachable(), Some(false), "{code:?}");
            assert!(err
                .to_string()
                .starts_with("the CA at 127.0.0.1:1 is unreachable: "));
        }
        let err = ca.status(tonic::Status::permission_denied("CSR asks for URI SAN x"));
        assert_eq!(err.ca_reachable(), Some(true));
        assert_eq!(
            err.to_string(),
            "the CA refused the request (PermissionDenied): CSR asks for URI SAN x"
        );
    }

    #[tokio::test]
    async fn a_ca_that_is_not_listening_is_unreachable_at_once() {
        let dir = std::env::temp_dir().join(format!("remora-token-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "t").unwrap();
        // Port 1 on loopback: refused.
        let err = client(dir.join("token")).request().await.unwrap_err();
        assert_eq!(err.ca_reachable(), Some(false));
        assert!(
            err.to_string()
                .starts_with("the CA at 127.0.0.1:1 is unreachable: Connection refused"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
