//! The HTTPS server: TLS (rustls) and HTTP/1.1 or HTTP/2 (hyper) on one port,
//! serving `/inject`, `/inject/pod-opt-in`, `/live`, `/ready` and `/metrics`.
//!
//! It owns the network edge only: connection and body bounds, timeouts and
//! status codes. Everything about a review is in `review`. Each client is
//! bounded in connections, bytes and time, and no error becomes a 500.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::inject::NAMESPACE_LABEL;
use crate::review::{self, Reply};
use crate::settings::Settings;

/// For reviews from the webhook entry whose namespaceSelector matches
/// `remora.dev/inject=enabled`: the namespace is opted in.
pub const PATH_INJECT: &str = "/inject";
/// For reviews from an entry that matches namespaces *without* that label:
/// only pods annotated `remora.dev/inject: enabled` are injected.
pub const PATH_POD_OPT_IN: &str = "/inject/pod-opt-in";

/// What every connection shares.
#[derive(Debug)]
pub struct Server {
    pub settings: Settings,
    pub limits: Limits,
    pub tls: Arc<rustls::ServerConfig>,
    /// Whether `/ready` answers 200: false until the webhook configuration
    /// trusts the certificate when the injector keeps the caBundle, so the
    /// API server is not sent to a replica it cannot verify.
    pub ready: watch::Receiver<bool>,
    /// What `GET /metrics` serves (Prometheus text format).
    pub metrics: prometheus::Registry,
}

impl Server {
    /// Accepts connections until `shutdown` turns true, then stops accepting
    /// and returns; connections in flight finish on their own tasks.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = shutdown.changed() => return,
            };
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let server = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let timeout = server.limits.body_timeout;
                let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, std::convert::Infallible>(server.handle(req).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(64);
                if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let labels = match req.uri().path() {
            PATH_INJECT => BTreeMap::from([(NAMESPACE_LABEL.to_owned(), "enabled".to_owned())]),
            PATH_POD_OPT_IN => BTreeMap::new(),
            "/ready" if req.method() == Method::GET && !*self.ready.borrow() => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the webhook configuration's caBundle does not trust this certificate yet\n",
                );
            }
            "/live" | "/ready" if req.method() == Method::GET => {
                return text(StatusCode::OK, "ok\n");
            }
            "/metrics" if req.method() == Method::GET => return self.serve_metrics(),
            "/live" | "/ready" | "/metrics" => {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
            }
            _ => {
                return text(
                    StatusCode::NOT_FOUND,
                    "not found; the webhook is at /inject\n",
                )
            }
        };
        if req.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST an AdmissionReview to this path\n",
            );
        }
        let max = self.limits.max_body_bytes;
        let too_large = || {
            text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the AdmissionReview is larger than {max} bytes (--max-body-bytes)\n"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return too_large();
        }
        let body = Limited::new(req.into_body(), max).collect();
        let body = match tokio::time::timeout(self.limits.body_timeout, body).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Ok(Err(e)) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the body failed: {e}\n"),
                )
            }
            Err(_) => {
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "the body did not arrive within {} (--body-timeout)\n",
                        humantime::format_duration(self.limits.body_timeout)
                    ),
                )
            }
        };
        match review::review(&body, &labels, &self.settings) {
            Reply::Review(value) => {
                let bytes = serde_json::to_vec(&value).unwrap_or_default();
                let mut response = Response::new(Full::new(Bytes::from(bytes)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                response
            }
            Reply::BadRequest(message) => text(StatusCode::BAD_REQUEST, &format!("{message}\n")),
        }
    }
}

impl Server {
    fn serve_metrics(&self) -> Response<Full<Bytes>> {
        match prometheus::TextEncoder::new().encode_to_string(&self.metrics.gather()) {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(prometheus::TEXT_FORMAT),
                );
                response
            }
            Err(e) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("encoding the metrics failed: {e}\n"),
            ),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
