//! The data plane's one error type, for connections (L4) and requests (L7)
//! alike. Each [`ErrorKind`] records where the failure came from
//! ([`ErrorSource`]) and whether another attempt may help ([`Retry`]), so
//! that retries, logs, metrics (the `reason` label) and the response status
//! all decide the same way (after pingora-error).

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
    /// A connection had no original destination, or was made straight to a
    /// capture port (forwarding it would loop).
    OriginalDst,
    /// Reading the client's first bytes for protocol detection failed.
    Detect,
    /// A read or write failed mid-stream on an opaque connection (a reset,
    /// most often).
    Io,
    /// Closed by force at the drain deadline.
    Drain,
    /// An opaque connection carried no bytes for `--tcp-idle-timeout`.
    IdleTimeout,
    /// Inbound authorization denied the request or connection.
    Forbidden,
    /// The server's sidecar refused the stream before its app saw it
    /// (HTTP/2 REFUSED_STREAM): nothing was processed.
    Refused,
    /// A plaintext connection to a port whose mode is STRICT.
    PlaintextRefused,
    /// Mesh TLS on an inbound connection failed.
    Tls,
}

/// Whether another attempt of a failed request may help, and why: what a
/// retry policy looks at, whatever the method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Nothing reached the endpoint: always safe to try again.
    ConnectFailure,
    /// The connection broke before the response head arrived.
    ConnectionError,
    /// The attempt ran out of time.
    Timeout,
    /// Trying again would not help (the client's fault, a refusal of the
    /// proxy's own, or not a request at all).
    Never,
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
            // Connection-level failures have no response; were one needed,
            // it would be a gateway's.
            ErrorKind::OriginalDst
            | ErrorKind::Detect
            | ErrorKind::Io
            | ErrorKind::Drain
            | ErrorKind::IdleTimeout
            | ErrorKind::PlaintextRefused
            | ErrorKind::Tls => StatusCode::BAD_GATEWAY,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Refused => StatusCode::SERVICE_UNAVAILABLE,
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
            ErrorKind::OriginalDst => "original_dst",
            ErrorKind::Detect => "detect",
            ErrorKind::Io => "io",
            ErrorKind::Drain => "drain",
            ErrorKind::IdleTimeout => "idle_timeout",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Refused => "refused",
            ErrorKind::PlaintextRefused => "plaintext_refused",
            ErrorKind::Tls => "tls",
        }
    }

    /// Whether another attempt may help.
    pub(crate) fn retry(self) -> Retry {
        match self {
            ErrorKind::Connect => Retry::ConnectFailure,
            // Not processed, so safe whatever the method, as long as the
            // body can be sent again.
            ErrorKind::Upstream | ErrorKind::Refused => Retry::ConnectionError,
            ErrorKind::Timeout => Retry::Timeout,
            _ => Retry::Never,
        }
    }

    pub(crate) fn source(self) -> ErrorSource {
        match self {
            ErrorKind::NoRoute | ErrorKind::NoBackend | ErrorKind::Filter => ErrorSource::Internal,
            ErrorKind::BadRequest
            | ErrorKind::NotImplemented
            | ErrorKind::HeaderTimeout
            | ErrorKind::BodyTimeout
            | ErrorKind::OriginalDst
            | ErrorKind::Detect
            | ErrorKind::Forbidden
            | ErrorKind::PlaintextRefused
            | ErrorKind::Tls => ErrorSource::Downstream,
            ErrorKind::Drain | ErrorKind::IdleTimeout => ErrorSource::Internal,
            // Mid-stream, either side may have broken it.
            ErrorKind::Io => ErrorSource::Internal,
            _ => ErrorSource::Upstream,
        }
    }
}

/// An HTTP proxying failure.
#[derive(Debug)]
pub(crate) struct ProxyError {
    pub(crate) kind: ErrorKind,
    detail: String,
    wrong_peer: bool,
}

impl ProxyError {
    pub(crate) fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        ProxyError {
            kind,
            detail: detail.into(),
            wrong_peer: false,
        }
    }

    /// A failed dial; `wrong_peer` when the endpoint proved another
    /// identity than the one expected of it.
    pub(crate) fn connect(detail: impl Into<String>, wrong_peer: bool) -> Self {
        ProxyError {
            kind: ErrorKind::Connect,
            detail: detail.into(),
            wrong_peer,
        }
    }

    /// Whether the endpoint must not be tried again for this request: it
    /// proved the wrong identity.
    pub(crate) fn is_wrong_peer(&self) -> bool {
        self.wrong_peer
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_metrics_and_statuses_read_the_same_kind() {
        assert_eq!(ErrorKind::Connect.retry(), Retry::ConnectFailure);
        assert_eq!(ErrorKind::Upstream.retry(), Retry::ConnectionError);
        assert_eq!(ErrorKind::Timeout.retry(), Retry::Timeout);
        for never in [
            ErrorKind::BadRequest,
            ErrorKind::CircuitOpen,
            ErrorKind::NoEndpoints,
            ErrorKind::BodyTimeout,
        ] {
            assert_eq!(never.retry(), Retry::Never, "{never:?}");
        }
        // The L4 reasons keep the labels dashboards know.
        assert_eq!(ErrorKind::IdleTimeout.as_str(), "idle_timeout");
        assert_eq!(ErrorKind::OriginalDst.as_str(), "original_dst");
        assert_eq!(ErrorKind::Connect.as_str(), "connect");
        assert_eq!(ErrorKind::Detect.source(), ErrorSource::Downstream);
        assert_eq!(ErrorKind::BadRequest.status(), StatusCode::BAD_REQUEST);
    }
}
