//! The retry policy: whether a failed attempt may be tried again, and how
//! long to wait first. Pure functions of the attempt and the route's
//! `retry`; the budget (`budget.rs`) has the last word.
//!
//! What may be retried:
//!
//! - a connect failure, whatever the method and body, when
//!   `onConnectFailure` is set: nothing reached the app, and the body has
//!   not been read;
//! - a connection error (the connection was reset or closed before the
//!   response head arrived) or an attempt that ran out its per-try timeout
//!   (`timeouts.backendRequest`), whatever the method, when the body can be
//!   sent again: Gateway API's `HTTPRouteRetry` retries connection errors
//!   whenever a retry stanza is set, as Envoy's `reset` and
//!   `per-try-timeout` do;
//! - a status in `codes`, only when the method is idempotent (RFC 9110:
//!   GET, HEAD, OPTIONS, TRACE, PUT, DELETE) **and** the body can be sent
//!   again (empty, or kept whole while it streamed);
//! - a gRPC response whose `grpc-status` (trailers-only, so in the header)
//!   is in `grpcCodes`, when the body can be sent again. gRPC is always
//!   POST; listing a code is how a route declares its calls safe to repeat.
//!
//! This file does not buffer bodies; the caller says what it has.

use std::time::Duration;

use http::Method;
use rand::Rng;
use remora_api as api;

use crate::balance::Outcome;

/// Envoy's default base interval, for a `retry` without `backoff`.
pub(crate) const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

/// The backoff never grows past this many times the base (Envoy's).
const MAX_BACKOFF_FACTOR: u32 = 10;

/// What the caller holds of the request body for another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestBody {
    /// No body: nothing to replay.
    Empty,
    /// Buffered whole: it can be sent again.
    Replayable,
    /// Streamed through and (at least partly) gone.
    Streamed,
}

impl RequestBody {
    fn can_resend(self) -> bool {
        matches!(self, RequestBody::Empty | RequestBody::Replayable)
    }
}

/// Whether the attempt that ended in `outcome` may be retried under
/// `retry`. `grpc_status` is the numeric `grpc-status` of a trailers-only
/// gRPC response, if any. The caller still checks `attempts` and the
/// budget.
pub(crate) fn is_retryable(
    method: &Method,
    outcome: Outcome,
    grpc_status: Option<u32>,
    retry: &api::Retry,
    body: RequestBody,
) -> bool {
    let status = match outcome {
        Outcome::ConnectFailure => return retry.on_connect_failure,
        Outcome::Timeout | Outcome::Error => return body.can_resend(),
        Outcome::Success => 200,
        Outcome::Status(status) => status,
    };
    if !body.can_resend() {
        return false;
    }
    let by_status = is_idempotent(method) && retry.codes.contains(&status);
    let by_grpc = grpc_status.is_some_and(|code| {
        retry
            .grpc_codes
            .iter()
            .any(|listed| u32::from(listed.code()) == code)
    });
    by_status || by_grpc
}

/// RFC 9110 section 9.2.2.
fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// How long to wait before retry number `retry` (1 for the first retry):
/// `base × 2^(retry-1)`, capped at ten times `base`, then jittered to a
/// uniform point between half of that and all of it ("equal jitter": spread
/// out, but never bunched at zero). `base` is the route's `backoff`, or
/// [`DEFAULT_BACKOFF`].
pub(crate) fn backoff(base: Option<Duration>, retry: u32, rng: &mut impl Rng) -> Duration {
    let base = base.unwrap_or(DEFAULT_BACKOFF);
    let doublings = retry.saturating_sub(1).min(31);
    let ceiling = base
        .saturating_mul(1 << doublings)
        .min(base.saturating_mul(MAX_BACKOFF_FACTOR));
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(nanos / 2..=nanos))
}

#[cfg(test)]
mod tests {
    use api::GrpcCode;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn retry(codes: &[u16], grpc: &[GrpcCode], on_connect_failure: bool) -> api::Retry {
        api::Retry {
            attempts: 2,
            backoff: None,
            codes: codes.to_vec(),
            grpc_codes: grpc.to_vec(),
            on_connect_failure,
        }
    }

    #[test]
    fn connect_failures_are_retried_for_any_method_and_body() {
        let r = retry(&[], &[], true);
        for method in [Method::GET, Method::POST, Method::PATCH] {
            assert!(is_retryable(
                &method,
                Outcome::ConnectFailure,
                None,
                &r,
                RequestBody::Streamed
            ));
        }
        let off = retry(&[503], &[], false);
        assert!(!is_retryable(
            &Method::GET,
            Outcome::ConnectFailure,
            None,
            &off,
            RequestBody::Empty
        ));
    }

    #[test]
    fn listed_statuses_are_retried_for_idempotent_methods_with_a_resendable_body() {
        let r = retry(&[503], &[], true);
        let yes = |m: Method, o, b| assert!(is_retryable(&m, o, None, &r, b), "{m} {o:?} {b:?}");
        let no = |m: Method, o, b| assert!(!is_retryable(&m, o, None, &r, b), "{m} {o:?} {b:?}");
        yes(Method::GET, Outcome::Status(503), RequestBody::Empty);
        yes(Method::PUT, Outcome::Status(503), RequestBody::Replayable);
        yes(Method::DELETE, Outcome::Status(503), RequestBody::Empty);
        no(Method::GET, Outcome::Status(500), RequestBody::Empty);
        no(Method::GET, Outcome::Success, RequestBody::Empty);
        no(Method::POST, Outcome::Status(503), RequestBody::Replayable);
        no(Method::PATCH, Outcome::Status(503), RequestBody::Empty);
        no(Method::PUT, Outcome::Status(503), RequestBody::Streamed);
    }

    #[test]
    fn connection_errors_and_per_try_timeouts_are_retried_for_any_method_when_the_body_resends() {
        // Gateway API: a retry stanza retries connection errors, whatever
        // its codes; Envoy's reset and per-try-timeout do the same.
        let r = retry(&[], &[], false);
        for method in [Method::GET, Method::POST] {
            for outcome in [Outcome::Error, Outcome::Timeout] {
                for body in [RequestBody::Empty, RequestBody::Replayable] {
                    assert!(
                        is_retryable(&method, outcome, None, &r, body),
                        "{method} {outcome:?} {body:?}"
                    );
                }
                assert!(
                    !is_retryable(&method, outcome, None, &r, RequestBody::Streamed),
                    "{method} {outcome:?}: the body is gone"
                );
            }
        }
        // A 502 or 504 the endpoint answered itself is a status like others.
        assert!(!is_retryable(
            &Method::GET,
            Outcome::Status(502),
            None,
            &r,
            RequestBody::Empty
        ));
    }

    #[test]
    fn grpc_codes_are_retried_on_post_with_a_resendable_body() {
        let r = retry(&[], &[GrpcCode::Unavailable], true);
        let unavailable = Some(14);
        assert!(is_retryable(
            &Method::POST,
            Outcome::Success,
            unavailable,
            &r,
            RequestBody::Replayable
        ));
        assert!(!is_retryable(
            &Method::POST,
            Outcome::Success,
            Some(13),
            &r,
            RequestBody::Replayable
        ));
        assert!(!is_retryable(
            &Method::POST,
            Outcome::Success,
            unavailable,
            &r,
            RequestBody::Streamed
        ));
        assert!(!is_retryable(
            &Method::POST,
            Outcome::Success,
            None,
            &r,
            RequestBody::Empty
        ));
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let mut rng = StdRng::seed_from_u64(42);
        let base = Some(Duration::from_millis(100));
        for (retry, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (60, 1000),
        ] {
            let ceiling = Duration::from_millis(ceiling);
            for _ in 0..50 {
                let d = backoff(base, retry, &mut rng);
                assert!(d >= ceiling / 2 && d <= ceiling, "retry {retry}: {d:?}");
            }
        }
        let a: Vec<_> = (0..5).map(|_| backoff(base, 3, &mut rng)).collect();
        assert!(a.windows(2).any(|w| w[0] != w[1]), "jittered");
        let d = backoff(None, 1, &mut rng);
        assert!(d <= DEFAULT_BACKOFF && d >= DEFAULT_BACKOFF / 2);
        assert_eq!(backoff(Some(Duration::ZERO), 3, &mut rng), Duration::ZERO);
    }
}
