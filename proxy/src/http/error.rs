//! Data-plane errors for HTTP. Each records where it came from and whether a
//! retry may help, so retries, logs, metrics and the response status all
//! decide the same way (after pingora-error).

use std::fmt;

use http::StatusCode;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorSource {
    Downstream,
    Upstream,
    Internal,
}

/// What went wrong, and so which status the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// No route of the service matches the request.
    NoRoute,
    /// The route has no backend with weight, or names one that's missing.
    NoBackend,
    /// The backend has no endpoints.
    NoEndpoints,
    /// The backend's circuit breaker is open.
    CircuitOpen,
    /// No connection could be made to the endpoint; nothing was sent.
    Connect,
    /// The connection failed after the request was (maybe) sent.
    Upstream,
    /// The request or attempt took longer than its timeout.
    Timeout,
    /// The request itself cannot be forwarded.
    BadRequest,
    /// A route filter cannot apply to this request: the route needs fixing.
    Filter,
    /// The request uses a feature the proxy does not implement (a transfer
    /// coding other than chunked).
    NotImplemented,
    /// The client did not send its request head in time.
    HeaderTimeout,
    /// The client stopped sending its request body for too long.
    BodyTimeout,
}

impl ErrorKind {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::NoBackend | ErrorKind::Filter => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::NoEndpoints | ErrorKind::CircuitOpen => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Connect | ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::HeaderTimeout | ErrorKind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The `reason` label and the `remora-error` response header.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::NoBackend => "no_backend",
            ErrorKind::NoEndpoints => "no_endpoints",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Connect => "connect",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Filter => "filter",
            ErrorKind::NotImplemented => "not_implemented",
            ErrorKind::HeaderTimeout => "header_timeout",
            ErrorKind::BodyTimeout => "body_timeout",
        }
    }

    pub(crate) fn source(self) -> ErrorSource {
        match self {
            ErrorKind::NoRoute | ErrorKind::NoBackend | ErrorKind::Filter => ErrorSource::Internal,
            ErrorKind::BadRequest
            | ErrorKind::NotImplemented
            | ErrorKind::HeaderTimeout
            | ErrorKind::BodyTimeout => ErrorSource::Downstream,
            _ => ErrorSource::Upstream,
        }
    }
}

/// An HTTP proxying failure.
#[derive(Debug)]
pub(crate) struct ProxyError {
    pub(crate) kind: ErrorKind,
    detail: String,
}

impl ProxyError {
    pub(crate) fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        ProxyError {
            kind,
            detail: detail.into(),
        }
    }
}

impl ProxyError {
    /// What went wrong, without the kind.
    pub(crate) fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

impl std::error::Error for ProxyError {}
