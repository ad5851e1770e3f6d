//! The circuit breaker of a backend (Envoy's, not Hystrix's): hard limits on
//! open connections, requests waiting for a connection, and requests in
//! flight. Past a limit, a request fails at once with 503 instead of
//! queueing behind a backend that is already saturated.
//!
//! Each limit is a counter and a maximum, both atomics; a [`Permit`] holds
//! one unit and gives it back when dropped. Limits can change under load
//! ([`CircuitBreaker::update`]) without losing the counts.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use remora_api as api;

/// Which limit a permit counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Connections,
    PendingRequests,
    Requests,
}

impl Limit {
    fn field(self) -> &'static str {
        match self {
            Limit::Connections => "maxConnections",
            Limit::PendingRequests => "maxPendingRequests",
            Limit::Requests => "maxRequests",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::Connections => "connections open",
            Limit::PendingRequests => "requests waiting for a connection",
            Limit::Requests => "requests in flight",
        }
    }
}

/// A limit was reached; answer 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "circuit breaker open: backend {backend} has {in_use} {what} ({field} {max})",
    what = .limit.what(),
    field = .limit.field()
)]
pub(crate) struct BreakerOpen {
    pub(crate) backend: Arc<str>,
    pub(crate) limit: Limit,
    pub(crate) in_use: u32,
    pub(crate) max: u32,
}

#[derive(Debug)]
struct Gauge {
    in_use: AtomicU32,
    max: AtomicU32,
}

impl Gauge {
    fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            in_use: AtomicU32::new(0),
            max: AtomicU32::new(max),
        })
    }
}

/// The three limits of one backend. Share it behind an `Arc`.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    backend: Arc<str>,
    connections: Arc<Gauge>,
    pending: Arc<Gauge>,
    requests: Arc<Gauge>,
}

/// One unit of a limit, given back on drop.
#[must_use = "the permit is given back as soon as it is dropped"]
pub(crate) struct Permit {
    gauge: Arc<Gauge>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gauge.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CircuitBreaker {
    pub(crate) fn new(backend: &str, config: &api::CircuitBreaker) -> Self {
        Self {
            backend: Arc::from(backend),
            connections: Gauge::new(config.max_connections),
            pending: Gauge::new(config.max_pending_requests),
            requests: Gauge::new(config.max_requests),
        }
    }

    /// New limits; permits already out stay out. Lowering a limit below
    /// what is in use refuses new permits until enough are given back.
    pub(crate) fn update(&self, config: &api::CircuitBreaker) {
        self.connections
            .max
            .store(config.max_connections, Ordering::Relaxed);
        self.pending
            .max
            .store(config.max_pending_requests, Ordering::Relaxed);
        self.requests
            .max
            .store(config.max_requests, Ordering::Relaxed);
    }

    /// A slot for one request in flight (held until its response ends).
    pub(crate) fn try_acquire_request(&self) -> Result<Permit, BreakerOpen> {
        self.acquire(Limit::Requests)
    }

    /// A slot for one request waiting for a pooled connection.
    pub(crate) fn try_acquire_pending(&self) -> Result<Permit, BreakerOpen> {
        self.acquire(Limit::PendingRequests)
    }

    /// A slot for one open connection (held for the connection's life).
    pub(crate) fn try_acquire_connection(&self) -> Result<Permit, BreakerOpen> {
        self.acquire(Limit::Connections)
    }

    /// Units of `limit` in use now.
    #[cfg(test)]
    pub(crate) fn in_use(&self, limit: Limit) -> u32 {
        self.gauge(limit).in_use.load(Ordering::Relaxed)
    }

    fn gauge(&self, limit: Limit) -> &Arc<Gauge> {
        match limit {
            Limit::Connections => &self.connections,
            Limit::PendingRequests => &self.pending,
            Limit::Requests => &self.requests,
        }
    }

    fn acquire(&self, limit: Limit) -> Result<Permit, BreakerOpen> {
        let gauge = self.gauge(limit);
        let max = gauge.max.load(Ordering::Relaxed);
        match gauge
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            }) {
            Ok(_) => Ok(Permit {
                gauge: Arc::clone(gauge),
            }),
            Err(in_use) => Err(BreakerOpen {
                backend: Arc::clone(&self.backend),
                limit,
                in_use,
                max,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: u32, pending: u32, requests: u32) -> api::CircuitBreaker {
        api::CircuitBreaker {
            max_connections: connections,
            max_pending_requests: pending,
            max_requests: requests,
        }
    }

    #[test]
    fn exactly_max_requests_are_admitted() {
        let breaker = CircuitBreaker::new("reviews", &limits(1, 1, 3));
        let permits: Vec<Permit> = (0..3)
            .map(|_| breaker.try_acquire_request().unwrap())
            .collect();
        let err = breaker.try_acquire_request().unwrap_err();
        assert_eq!(
            err.to_string(),
            "circuit breaker open: backend reviews has 3 requests in flight (maxRequests 3)"
        );
        assert_eq!(breaker.in_use(Limit::Requests), 3);
        drop(permits);
        assert_eq!(breaker.in_use(Limit::Requests), 0);
        assert!(breaker.try_acquire_request().is_ok());
    }

    #[test]
    fn the_limits_are_separate() {
        let breaker = CircuitBreaker::new("reviews", &limits(2, 1, 5));
        let _c1 = breaker.try_acquire_connection().unwrap();
        let _c2 = breaker.try_acquire_connection().unwrap();
        let err = breaker.try_acquire_connection().unwrap_err();
        assert_eq!(
            err.to_string(),
            "circuit breaker open: backend reviews has 2 connections open (maxConnections 2)"
        );
        let _p = breaker.try_acquire_pending().unwrap();
        let err = breaker.try_acquire_pending().unwrap_err();
        assert_eq!(err.limit, Limit::PendingRequests);
        assert!(err
            .to_string()
            .ends_with("has 1 requests waiting for a connection (maxPendingRequests 1)"));
        assert!(breaker.try_acquire_request().is_ok());
    }

    #[test]
    fn a_permit_returns_once() {
        let breaker = CircuitBreaker::new("reviews", &limits(1, 1, 1));
        let p = breaker.try_acquire_request().unwrap();
        drop(p);
        let _p = breaker.try_acquire_request().unwrap();
        assert!(breaker.try_acquire_request().is_err());
    }

    #[test]
    fn updates_keep_the_counts() {
        let breaker = CircuitBreaker::new("reviews", &limits(1, 1, 4));
        let held: Vec<Permit> = (0..4)
            .map(|_| breaker.try_acquire_request().unwrap())
            .collect();
        breaker.update(&limits(1, 1, 2));
        assert!(breaker.try_acquire_request().is_err());
        drop(held);
        let _a = breaker.try_acquire_request().unwrap();
        let _b = breaker.try_acquire_request().unwrap();
        assert!(breaker.try_acquire_request().is_err());
        breaker.update(&limits(1, 1, 3));
        assert!(breaker.try_acquire_request().is_ok());
    }

    #[test]
    fn concurrent_acquirers_never_exceed_the_limit() {
        let breaker = Arc::new(CircuitBreaker::new("reviews", &limits(1, 1, 8)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let breaker = Arc::clone(&breaker);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Ok(p) = breaker.try_acquire_request() {
                            assert!(breaker.in_use(Limit::Requests) <= 8);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(breaker.in_use(Limit::Requests), 0);
    }
}
