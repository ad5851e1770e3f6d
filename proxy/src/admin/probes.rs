//! The app's own probes, answered on the admin port: the injector points
//! kubelet's liveness, readiness and startup probes of each container at
//! `GET /app-health/<container>/{livez,readyz,startupz}` on 15020 and hands
//! the original checks over in `REMORA_APP_PROBES` (docs/injector.md). Here
//! that value is parsed once at start ([`AppProbes::parse`]) and each probe
//! is performed as kubelet would (`httpGet`, `tcpSocket`, `grpc`) against
//! the pod's own address, within the probe's `timeoutSeconds`: 200 when it
//! passes, 503 with a one-line reason when it does not.
//!
//! Only the configured checks run: a path names a check, never a port, so
//! whoever can reach 15020 cannot make the proxy dial anything else. The
//! dial leaves from the inbound forward's source address (127.0.0.6, `::6`)
//! as uid 1337, the two things the capture rules return untouched, so a
//! probe reaches the app directly, not through the inbound listener (which
//! may refuse plaintext). It does not own the admin server or its routes.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::{INBOUND_SOURCE_V4, INBOUND_SOURCE_V6};

/// The path prefix of the app probes on the admin port.
pub(crate) const PREFIX: &str = "/app-health/";
/// The longest `REMORA_APP_PROBES` accepted, in bytes.
pub(crate) const MAX_BYTES: usize = 64 * 1024;
/// The most probes one pod may configure (3 per container).
pub(crate) const MAX_PROBES: usize = 256;
/// The range of `timeoutSeconds`.
pub(crate) const TIMEOUT_SECONDS: std::ops::RangeInclusive<u64> = 1..=3600;
/// Checks that may run at once; past it a probe gets 503 at once, so a
/// flood on 15020 never turns into a flood on the app.
const MAX_IN_FLIGHT: usize = 32;
/// The most headers one `httpGet` may carry.
const MAX_HEADERS: usize = 32;
/// The longest `httpGet` path and gRPC service name.
const MAX_PATH: usize = 2048;
/// What kubelet sends unless the probe's headers say otherwise.
const USER_AGENT: &str = "kube-probe/remora";

/// A `REMORA_APP_PROBES` value that cannot be used. The proxy refuses to
/// start on it: a probe that cannot be answered would fail forever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppProbesError {
    #[error("is {0} bytes, over the limit of {MAX_BYTES}")]
    TooLarge(usize),
    #[error("has {0} probes, over the limit of {MAX_PROBES}")]
    TooMany(usize),
    #[error("is not the injector's JSON: {0}")]
    Json(String),
    #[error(
        "{path}: not an app probe path; expected /app-health/<container>/livez, readyz or startupz"
    )]
    Path { path: String },
    #[error("{path}: {reason}")]
    Check { path: String, reason: String },
}

/// The checks behind each admin path, parsed once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbes {
    checks: BTreeMap<String, Check>,
}

/// One check, as kubelet would run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub action: Action,
    pub timeout: Duration,
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `GET path` on `port`, over TLS (not verified) when `https`; passes on
    /// a status from 200 to 399.
    Http {
        port: u16,
        path: String,
        https: bool,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// A TCP connection to `port` opens.
    Tcp { port: u16 },
    /// `grpc.health.v1.Health/Check` for `service` answers SERVING.
    Grpc { port: u16, service: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCheck {
    http_get: Option<RawHttp>,
    tcp_socket: Option<RawPort>,
    grpc: Option<RawGrpc>,
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHttp {
    port: u16,
    path: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<RawHeader>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrpc {
    port: u16,
    service: Option<String>,
}

impl AppProbes {
    /// Parses the injector's `REMORA_APP_PROBES`; empty text is no probes.
    pub fn parse(text: &str) -> Result<Self, AppProbesError> {
        if text.len() > MAX_BYTES {
            return Err(AppProbesError::TooLarge(text.len()));
        }
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let raw: BTreeMap<String, RawCheck> =
            serde_json::from_str(text).map_err(|e| AppProbesError::Json(e.to_string()))?;
        if raw.len() > MAX_PROBES {
            return Err(AppProbesError::TooMany(raw.len()));
        }
        let mut checks = BTreeMap::new();
        for (path, raw) in raw {
            if !is_probe_path(&path) {
                return Err(AppProbesError::Path { path });
            }
            let check = convert(raw).map_err(|reason| AppProbesError::Check {
                path: path.clone(),
                reason,
            })?;
            checks.insert(path, check);
        }
        Ok(AppProbes { checks })
    }

    pub fn get(&self, path: &str) -> Option<&Check> {
        self.checks.get(path)
    }

    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }
}

/// `/app-health/<container>/<livez|readyz|startupz>`, the container name a
/// DNS label as Kubernetes requires.
fn is_probe_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return false;
    };
    let Some((container, kind)) = rest.split_once('/') else {
        return false;
    };
    let label = !container.is_empty()
        && container.len() <= 63
        && container
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !container.starts_with('-')
        && !container.ends_with('-');
    label && matches!(kind, "livez" | "readyz" | "startupz")
}

fn convert(raw: RawCheck) -> Result<Check, String> {
    let seconds = raw.timeout_seconds.unwrap_or(1);
    if !TIMEOUT_SECONDS.contains(&seconds) {
        return Err(format!(
            "timeoutSeconds {seconds} is out of range: use {} to {}",
            TIMEOUT_SECONDS.start(),
            TIMEOUT_SECONDS.end()
        ));
    }
    let port = |port: u16| {
        if port == 0 {
            Err("port 0 is not a port; use 1-65535".to_owned())
        } else {
            Ok(port)
        }
    };
    let action = match (raw.http_get, raw.tcp_socket, raw.grpc) {
        (Some(http), None, None) => {
            let https = match http.scheme.as_deref().unwrap_or("HTTP") {
                "HTTP" => false,
                "HTTPS" => true,
                other => return Err(format!("scheme `{other}`: use HTTP or HTTPS")),
            };
            let mut path = http.path.unwrap_or_else(|| "/".to_owned());
            if !path.starts_with('/') {
                path.insert(0, '/');
            }
            if path.len() > MAX_PATH || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
                return Err(format!(
                    "path {path:?} is not a request path of at most {MAX_PATH} bytes"
                ));
            }
            if http.http_headers.len() > MAX_HEADERS {
                return Err(format!(
                    "{} httpHeaders, over the limit of {MAX_HEADERS}",
                    http.http_headers.len()
                ));
            }
            let headers = http
                .http_headers
                .into_iter()
                .map(|h| {
                    let name = HeaderName::try_from(h.name.as_str())
                        .map_err(|_| format!("httpHeaders: `{}` is not a header name", h.name))?;
                    let value = HeaderValue::try_from(h.value.as_str()).map_err(|_| {
                        format!("httpHeaders: the value of {name} is not a header value")
                    })?;
                    Ok((name, value))
                })
                .collect::<Result<_, String>>()?;
            Action::Http {
                port: port(http.port)?,
                path,
                https,
                headers,
            }
        }
        (None, Some(tcp), None) => Action::Tcp {
            port: port(tcp.port)?,
        },
        (None, None, Some(grpc)) => {
            let service = grpc.service.unwrap_or_default();
            if service.len() > MAX_PATH {
                return Err(format!("grpc service name over {MAX_PATH} bytes"));
            }
            Action::Grpc {
                port: port(grpc.port)?,
                service,
            }
        }
        _ => return Err("needs exactly one of httpGet, tcpSocket and grpc".to_owned()),
    };
    Ok(Check {
        action,
        timeout: Duration::from_secs(seconds),
    })
}

/// Runs the configured checks for the admin server.
#[derive(Debug, Clone)]
pub(crate) struct Prober {
    probes: Arc<AppProbes>,
    in_flight: Arc<Semaphore>,
    tls: Arc<rustls::ClientConfig>,
}

/// What a probe request gets: status and a one-line body.
pub(crate) type Answer = (StatusCode, String);

impl Prober {
    pub(crate) fn new(probes: Arc<AppProbes>) -> Self {
        Prober {
            probes,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            tls: Arc::new(unverified_tls()),
        }
    }

    /// Answers `GET path`; `pod_ip` is the address the probe came in on,
    /// the pod's own, which is where kubelet would have sent it.
    pub(crate) async fn answer(&self, path: &str, pod_ip: IpAddr) -> Answer {
        let Some(check) = self.probes.get(path) else {
            return (
                StatusCode::NOT_FOUND,
                format!("no app probe at {path}; the pod's probes are in REMORA_APP_PROBES\n"),
            );
        };
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_IN_FLIGHT} app probes are running already\n"),
            );
        };
        let pod_ip = pod_ip.to_canonical();
        let outcome = tokio::time::timeout(check.timeout, self.run(&check.action, pod_ip)).await;
        match outcome {
            Ok(Ok(detail)) => (StatusCode::OK, format!("ok: {detail}\n")),
            Ok(Err(reason)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}: {reason}\n", describe(&check.action, pod_ip)),
            ),
            Err(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{}: no answer within timeoutSeconds {}\n",
                    describe(&check.action, pod_ip),
                    check.timeout.as_secs()
                ),
            ),
        }
    }

    /// Runs one check; `Ok` says what passed, `Err` why it failed.
    async fn run(&self, action: &Action, ip: IpAddr) -> Result<String, String> {
        match action {
            Action::Tcp { port } => {
                dial(ip, *port).await?;
                Ok(format!("tcp {} open", SocketAddr::new(ip, *port)))
            }
            Action::Http {
                port,
                path,
                https,
                headers,
            } => {
                let stream = dial(ip, *port).await?;
                let status = if *https {
                    let name = rustls_pki_types::ServerName::IpAddress(ip.into());
                    let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                        .connect(name, stream)
                        .await
                        .map_err(|e| format!("TLS handshake failed: {e}"))?;
                    http_get(tls, ip, *port, path, headers).await?
                } else {
                    http_get(stream, ip, *port, path, headers).await?
                };
                if (200..400).contains(&status.as_u16()) {
                    Ok(format!("HTTP {}", status.as_u16()))
                } else {
                    Err(format!("HTTP {}", status.as_u16()))
                }
            }
            Action::Grpc { port, service } => grpc_check(ip, *port, service).await,
        }
    }
}

fn describe(action: &Action, ip: IpAddr) -> String {
    match action {
        Action::Tcp { port } => format!("tcp {}", SocketAddr::new(ip, *port)),
        Action::Http {
            port, path, https, ..
        } => {
            let scheme = if *https { "https" } else { "http" };
            format!("GET {scheme}://{}{path}", SocketAddr::new(ip, *port))
        }
        Action::Grpc { port, service } => format!(
            "grpc health {} service {service:?}",
            SocketAddr::new(ip, *port)
        ),
    }
}

/// Connects to the app from the inbound forward's source address, or, where
/// that address does not exist (IPv6 without remora-init's `::6`), from any:
/// the proxy's uid is never captured either way.
async fn dial(ip: IpAddr, port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::new(ip, port);
    let source = match ip {
        IpAddr::V4(_) => IpAddr::V4(INBOUND_SOURCE_V4),
        IpAddr::V6(_) => IpAddr::V6(INBOUND_SOURCE_V6),
    };
    // The check's own timeout bounds the connect.
    let forever = Duration::from_secs(3600);
    let result = match crate::net::connect(addr, Some(source), forever).await {
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            crate::net::connect(addr, None, forever).await
        }
        other => other,
    };
    result.map_err(|e| format!("connecting to {addr}: {e}"))
}

async fn http_get<S>(
    stream: S,
    ip: IpAddr,
    port: u16,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(connection);
    let mut request = Request::get(path)
        .header(http::header::HOST, SocketAddr::new(ip, port).to_string())
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::ACCEPT, "*/*")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("building the request: {e}"))?;
    // The probe's own headers replace kubelet's defaults, as in kubelet.
    for (name, _) in headers {
        request.headers_mut().remove(name);
    }
    for (name, value) in headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP request failed: {e}"))?;
    Ok(response.status())
}

async fn grpc_check(ip: IpAddr, port: u16, service: &str) -> Result<String, String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    let stream = dial(ip, port).await?;
    let (sender, connection) = hyper::client::conn::http2::handshake::<_, _, tonic::body::Body>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    tokio::spawn(connection);
    let origin: http::Uri = format!("http://{}", SocketAddr::new(ip, port))
        .parse()
        .map_err(|e| format!("origin: {e}"))?;
    let mut client = HealthClient::with_origin(H2(sender), origin);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| {
            format!(
                "grpc-status {:?}: {}",
                status.code(),
                status.message().lines().next().unwrap_or("")
            )
        })?;
    let status = response.into_inner().status();
    match status {
        ServingStatus::Serving => Ok("SERVING".to_owned()),
        other => Err(other.as_str_name().to_owned()),
    }
}

/// One HTTP/2 connection as the service a tonic client calls.
#[derive(Debug, Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tonic::codegen::Service<Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// kubelet does not verify an HTTPS probe's certificate, so neither does
/// this: the handshake must succeed, the certificate is not checked.
fn unverified_tls() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let builder =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions();
    match builder {
        Ok(builder) => builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
        // The ring provider supports the default versions; this is unreachable.
        Err(e) => unreachable!("ring supports TLS 1.2 and 1.3: {e}"),
    }
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_injectors_contract() {
        // What injector/src/probes.rs writes, byte for byte.
        let text = r#"{"/app-health/web/livez":{"httpGet":{"httpHeaders":[{"name":"X-Probe","value":"1"}],"path":"/healthz","port":8080,"scheme":"HTTP"},"timeoutSeconds":2},"/app-health/web/readyz":{"grpc":{"port":9090},"timeoutSeconds":1},"/app-health/web/startupz":{"tcpSocket":{"port":8081}}}"#;
        let probes = AppProbes::parse(text).expect("valid");
        assert_eq!(probes.len(), 3);
        assert_eq!(
            probes.get("/app-health/web/livez"),
            Some(&Check {
                action: Action::Http {
                    port: 8080,
                    path: "/healthz".into(),
                    https: false,
                    headers: vec![(
                        HeaderName::from_static("x-probe"),
                        HeaderValue::from_static("1")
                    )],
                },
                timeout: Duration::from_secs(2),
            })
        );
        assert_eq!(
            probes.get("/app-health/web/readyz").map(|c| &c.action),
            Some(&Action::Grpc {
                port: 9090,
                service: String::new()
            })
        );
        assert_eq!(
            probes.get("/app-health/web/startupz"),
            Some(&Check {
                action: Action::Tcp { port: 8081 },
                timeout: Duration::from_secs(1),
            })
        );
        assert_eq!(AppProbes::parse(""), Ok(AppProbes::default()));
    }

    #[test]
    fn hostile_values_are_refused_by_name() {
        let cases: &[(&str, &str)] = &[
            ("[]", "is not the injector's JSON: invalid type: sequence, expected a map at line 1 column 0"),
            (r#"{"/admin/x/livez":{"tcpSocket":{"port":1}}}"#,
             "/admin/x/livez: not an app probe path; expected /app-health/<container>/livez, readyz or startupz"),
            (r#"{"/app-health/Web/livez":{"tcpSocket":{"port":1}}}"#,
             "/app-health/Web/livez: not an app probe path; expected /app-health/<container>/livez, readyz or startupz"),
            (r#"{"/app-health/web/healthz":{"tcpSocket":{"port":1}}}"#,
             "/app-health/web/healthz: not an app probe path; expected /app-health/<container>/livez, readyz or startupz"),
            (r#"{"/app-health/web/livez":{"tcpSocket":{"port":0}}}"#,
             "/app-health/web/livez: port 0 is not a port; use 1-65535"),
            (r#"{"/app-health/web/livez":{"tcpSocket":{"port":70000}}}"#,
             "is not the injector's JSON: invalid value: integer `70000`, expected u16 at line 1 column 51"),
            (r#"{"/app-health/web/livez":{"tcpSocket":{"port":1},"timeoutSeconds":0}}"#,
             "/app-health/web/livez: timeoutSeconds 0 is out of range: use 1 to 3600"),
            (r#"{"/app-health/web/livez":{"tcpSocket":{"port":1},"timeoutSeconds":3601}}"#,
             "/app-health/web/livez: timeoutSeconds 3601 is out of range: use 1 to 3600"),
            (r#"{"/app-health/web/livez":{"timeoutSeconds":1}}"#,
             "/app-health/web/livez: needs exactly one of httpGet, tcpSocket and grpc"),
            (r#"{"/app-health/web/livez":{"tcpSocket":{"port":1},"grpc":{"port":2}}}"#,
             "/app-health/web/livez: needs exactly one of httpGet, tcpSocket and grpc"),
            (r#"{"/app-health/web/livez":{"httpGet":{"port":1,"scheme":"FTP"}}}"#,
             "/app-health/web/livez: scheme `FTP`: use HTTP or HTTPS"),
            (r#"{"/app-health/web/livez":{"httpGet":{"port":1,"path":"/a b"}}}"#,
             "/app-health/web/livez: path \"/a b\" is not a request path of at most 2048 bytes"),
            (r#"{"/app-health/web/livez":{"httpGet":{"port":1,"httpHeaders":[{"name":"a b","value":"1"}]}}}"#,
             "/app-health/web/livez: httpHeaders: `a b` is not a header name"),
            (r#"{"/app-health/web/livez":{"httpGet":{"port":1,"host":"10.0.0.1"}}}"#,
             "is not the injector's JSON: unknown field `host`, expected one of `port`, `path`, `scheme`, `httpHeaders` at line 1 column 52"),
        ];
        for (text, message) in cases {
            assert_eq!(
                AppProbes::parse(text).map_err(|e| e.to_string()),
                Err((*message).to_owned()),
                "{text}"
            );
        }
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_BYTES));
        assert_eq!(
            AppProbes::parse(&big),
            Err(AppProbesError::TooLarge(MAX_BYTES + 8))
        );
        let many: BTreeMap<String, serde_json::Value> = (0..=MAX_PROBES)
            .map(|i| {
                (
                    format!("/app-health/c{i}/livez"),
                    serde_json::json!({"tcpSocket": {"port": 1}}),
                )
            })
            .collect();
        let many = serde_json::to_string(&many).expect("serializes");
        assert_eq!(
            AppProbes::parse(&many),
            Err(AppProbesError::TooMany(MAX_PROBES + 1))
        );
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn prober(check: serde_json::Value) -> Prober {
        let text = serde_json::json!({ "/app-health/web/livez": check }).to_string();
        Prober::new(Arc::new(AppProbes::parse(&text).expect("valid")))
    }

    /// A TLS app on 127.0.0.1 with a self-signed certificate for another
    /// name, answering every request with `status`.
    async fn tls_app(status: u16) -> u16 {
        let generated = rcgen::generate_simple_self_signed(vec!["elsewhere.example".to_owned()])
            .expect("certificate");
        let key =
            rustls_pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind((LOCAL, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        port
    }

    #[tokio::test]
    async fn https_probes_do_not_verify_the_certificate_as_kubelet() {
        let port = tls_app(204).await;
        let https =
            prober(serde_json::json!({"httpGet": {"port": port, "scheme": "HTTPS", "path": "/h"}}));
        assert_eq!(
            https.answer("/app-health/web/livez", LOCAL).await,
            (StatusCode::OK, "ok: HTTP 204\n".to_owned())
        );
        let failing = tls_app(503).await;
        let https = prober(serde_json::json!({"httpGet": {"port": failing, "scheme": "HTTPS"}}));
        assert_eq!(
            https.answer("/app-health/web/livez", LOCAL).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("GET https://127.0.0.1:{failing}/: HTTP 503\n")
            )
        );
        // Plain HTTP to a TLS port is not an HTTP answer.
        let plain = prober(serde_json::json!({"httpGet": {"port": port}}));
        let (status, body) = plain.answer("/app-health/web/livez", LOCAL).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.starts_with(&format!(
                "GET http://127.0.0.1:{port}/: HTTP request failed: "
            )),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_flood_of_probes_is_refused_at_once_past_the_limit() {
        // An app that accepts and never answers: every check takes its
        // whole timeout.
        let listener = tokio::net::TcpListener::bind((LOCAL, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let _app = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let prober = prober(serde_json::json!({"httpGet": {"port": port}, "timeoutSeconds": 2}));
        let hung: Vec<_> = (0..MAX_IN_FLIGHT)
            .map(|_| {
                let prober = prober.clone();
                tokio::spawn(async move { prober.answer("/app-health/web/livez", LOCAL).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let refused = prober.answer("/app-health/web/livez", LOCAL).await;
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(
            refused,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "32 app probes are running already\n".to_owned()
            )
        );
        for task in hung {
            let (status, body) = task.await.expect("joined");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                body,
                format!("GET http://127.0.0.1:{port}/: no answer within timeoutSeconds 2\n")
            );
        }
        // Once they are done, probes run again.
        let (status, _) = prober.answer("/app-health/web/livez", LOCAL).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "still hung, but checked"
        );
    }

    #[tokio::test]
    async fn an_unknown_path_is_404_and_names_the_contract() {
        let prober = Prober::new(Arc::new(AppProbes::default()));
        let (status, body) = prober
            .answer("/app-health/web/livez", IpAddr::from([127, 0, 0, 1]))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            "no app probe at /app-health/web/livez; the pod's probes are in REMORA_APP_PROBES\n"
        );
    }
}
