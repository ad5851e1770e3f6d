//! Load balancing: which endpoint of a backend serves a request.
//!
//! This module owns the per-endpoint state that balancing decisions read
//! (in-flight requests, peak-EWMA latency, outlier and active-health state),
//! the [`Balancer`] of one backend with its selector (weighted round robin,
//! least request, consistent hash), passive outlier ejection, and the active
//! HTTP health-check task. It does not own connections, pools, TLS, retries
//! or circuit breaking (`resilience`): the HTTP layer calls
//! [`Balancer::pick`], wraps the attempt in [`EndpointState::start_request`]
//! and reports how it went with [`RequestGuard::finish`].
//!
//! Everything on the request path is synchronous and lock-light: atomics,
//! plus two `std::sync::Mutex`es held for a few instructions (the latency
//! estimate, and the ejection decision, which is rare). The selector sits in
//! an `ArcSwap`; [`Balancer::update`] builds a new one beside it and swaps
//! it in, so requests never wait on a rebuild.

mod hash;
mod health;
mod least_request;
mod outlier;
mod round_robin;

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use rand::Rng;
use remora_api as api;
use tracing::warn;

use crate::transport::{Identity, Peer};

pub(crate) use hash::hash_key;
pub(crate) use health::spawn_health_checks;

use health::HealthState;
use least_request::PeakEwma;
use outlier::OutlierState;

/// How one attempt at an endpoint ended, as the HTTP layer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response that was not a 5xx (same as `Status` with that code).
    Success,
    /// A response with this status code.
    Status(u16),
    /// No connection could be made: refused, reset during the handshake,
    /// connect timeout, TLS or identity failure. Nothing reached the app.
    ConnectFailure,
    /// Connected, but no response header came in time.
    Timeout,
    /// Connected, then the exchange broke: reset, protocol error.
    Error,
}

/// One endpoint of a backend and what the balancer knows about it.
///
/// The address, weight, identity and zone never change. When a config
/// update changes the weight, identity or zone of a surviving address, a new
/// state is made that carries over the outlier, health and latency state.
#[derive(Debug)]
pub(crate) struct EndpointState {
    address: SocketAddr,
    weight: u32,
    identity: Option<Identity>,
    zone: Option<Arc<str>>,
    in_flight: AtomicU32,
    latency: Mutex<PeakEwma>,
    outlier: OutlierState,
    health: HealthState,
    /// The balancer, for ejection decisions that look at every endpoint.
    /// Weak: the balancer owns its endpoints.
    pool: Weak<Pool>,
}

impl EndpointState {
    fn new(endpoint: &api::Endpoint, pool: Weak<Pool>, now: Instant) -> Self {
        Self {
            address: endpoint.address,
            weight: endpoint.weight.max(1),
            identity: endpoint.identity.as_deref().map(Identity::new),
            zone: endpoint.zone.as_deref().map(Arc::from),
            in_flight: AtomicU32::new(0),
            latency: Mutex::new(PeakEwma::new(now)),
            outlier: OutlierState::default(),
            health: HealthState::default(),
            pool,
        }
    }

    /// A state for `endpoint` that remembers what `old` (same address) knew.
    fn carried_over(endpoint: &api::Endpoint, old: &EndpointState, now: Instant) -> Self {
        let state = Self::new(endpoint, old.pool.clone(), now);
        *state.latency.lock().unwrap_or_else(PoisonError::into_inner) =
            *old.latency.lock().unwrap_or_else(PoisonError::into_inner);
        state.outlier.copy_from(&old.outlier);
        state.health.copy_from(&old.health);
        state
    }

    fn describes(&self, endpoint: &api::Endpoint) -> bool {
        self.address == endpoint.address
            && self.weight == endpoint.weight.max(1)
            && self.identity() == endpoint.identity.as_deref()
            && self.zone.as_deref() == endpoint.zone.as_deref()
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight
    }

    /// The SPIFFE id the endpoint must present; `None` means plaintext.
    pub(crate) fn identity(&self) -> Option<&str> {
        self.identity.as_ref().map(Identity::as_str)
    }

    /// The endpoint as the pool dials it.
    pub(crate) fn peer(&self) -> Peer {
        Peer {
            addr: self.address,
            identity: self.identity.clone(),
        }
    }

    pub(crate) fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The active health check's verdict; always true without health checks.
    pub(crate) fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// Whether outlier detection has this endpoint out right now.
    pub(crate) fn is_ejected(&self) -> bool {
        self.outlier.is_ejected(epoch_nanos(Instant::now()))
    }

    /// How many times outlier detection has ejected this endpoint, less one
    /// for each `interval` it then stayed in.
    pub(crate) fn times_ejected(&self) -> u32 {
        self.outlier.times_ejected()
    }

    fn is_available(&self, now: u64) -> bool {
        self.health.is_healthy() && !self.outlier.is_ejected(now)
    }

    /// The peak-EWMA load: latency estimate times (in-flight + 1), divided
    /// by the weight. Lower is better.
    fn cost(&self, now: Instant) -> f64 {
        let estimate = self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .estimate_nanos(now);
        least_request::cost(estimate, self.in_flight(), self.weight)
    }

    /// Counts a request in flight until the guard is finished or dropped.
    pub(crate) fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.start_request_at(Instant::now())
    }

    fn start_request_at(self: &Arc<Self>, now: Instant) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            endpoint: Arc::clone(self),
            started: now,
        }
    }

    fn record(&self, outcome: Outcome, started: Instant, now: Instant) {
        // Fast failures say nothing about latency and would make a broken
        // endpoint look attractive; outlier detection deals with them.
        if matches!(
            outcome,
            Outcome::Success | Outcome::Status(_) | Outcome::Timeout
        ) {
            self.latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(now.saturating_duration_since(started), now);
        }
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let selector = pool.selector.load();
        if self.outlier.record(outcome, &selector.outlier) {
            pool.try_eject(self, epoch_nanos(now));
        }
    }
}

/// One attempt in flight at an endpoint. Finish it with the outcome; a guard
/// dropped unfinished (the caller gave up) only ends the in-flight count.
#[derive(Debug)]
#[must_use = "finish the guard with the attempt's outcome"]
pub(crate) struct RequestGuard {
    endpoint: Arc<EndpointState>,
    started: Instant,
}

impl RequestGuard {
    /// Records the latency and the outcome: feeds the latency estimate and
    /// the outlier counters, and may eject the endpoint.
    pub(crate) fn finish(self, outcome: Outcome) {
        self.finish_at(outcome, Instant::now());
    }

    fn finish_at(self, outcome: Outcome, now: Instant) {
        self.endpoint.record(outcome, self.started, now);
        // Drop ends the in-flight count.
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The load balancer of one backend. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub(crate) struct Balancer {
    pool: Arc<Pool>,
}

#[derive(Debug)]
struct Pool {
    backend: Arc<str>,
    selector: ArcSwap<Selector>,
    /// Serialises ejection decisions so that two cannot both pass
    /// `maxEjectionPercent`. Held for one scan of the endpoints.
    eject_lock: Mutex<()>,
    ejections: AtomicU64,
    ejection_counter: Option<IntCounter>,
    me: Weak<Pool>,
}

impl Balancer {
    /// A balancer for `backend`, named `name` in logs and errors. Each
    /// ejection also increments `ejection_counter` when given (meant for
    /// `remora_outlier_ejections_total{backend}`).
    pub(crate) fn new(
        name: &str,
        backend: &api::Backend,
        ejection_counter: Option<IntCounter>,
    ) -> Self {
        let now = Instant::now();
        // Fix the clock's origin before any instant is stored.
        epoch_nanos(now);
        let pool = Arc::new_cyclic(|me: &Weak<Pool>| Pool {
            backend: Arc::from(name),
            selector: ArcSwap::from_pointee(Selector::build(backend, &HashMap::new(), me, now)),
            eject_lock: Mutex::new(()),
            ejections: AtomicU64::new(0),
            ejection_counter,
            me: me.clone(),
        });
        Self { pool }
    }

    /// Applies a new config of the same backend. Endpoints whose address
    /// survives keep their state (latency, ejection, health), so an update
    /// does not forget an ejection. Requests keep using the old selector
    /// until the new one is swapped in.
    pub(crate) fn update(&self, backend: &api::Backend) {
        let now = Instant::now();
        self.pool.selector.rcu(|old| {
            let existing: HashMap<SocketAddr, &Arc<EndpointState>> =
                old.endpoints.iter().map(|e| (e.address, e)).collect();
            Selector::build(backend, &existing, &self.pool.me, now)
        });
    }

    pub(crate) fn backend(&self) -> &str {
        &self.pool.backend
    }

    /// Picks the endpoint for one request. `hash` is the request's key under
    /// a consistent-hash policy ([`hash_key`]); other policies ignore it, and
    /// a request without a key goes to a random point of the ring.
    ///
    /// Ejected and unhealthy endpoints are skipped, unless every endpoint is
    /// one of them: then all are used as if none were ("panic mode", as in
    /// Envoy), since failing every request would be worse. `None` only when
    /// the backend has no endpoints.
    pub(crate) fn pick(&self, hash: Option<u64>) -> Option<Arc<EndpointState>> {
        self.pick_with(hash, Instant::now(), &mut rand::rng())
    }

    fn pick_with(
        &self,
        hash: Option<u64>,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<Arc<EndpointState>> {
        let selector = self.pool.selector.load();
        let index = selector.pick(hash, now, rng)?;
        selector.endpoints.get(index).cloned()
    }

    /// Every endpoint of the current config.
    pub(crate) fn endpoints(&self) -> Vec<Arc<EndpointState>> {
        self.pool.selector.load().endpoints.clone()
    }

    /// Ejections since the balancer was made.
    pub(crate) fn ejections_total(&self) -> u64 {
        self.pool.ejections.load(Ordering::Relaxed)
    }

    /// Endpoints that outlier detection has out right now.
    pub(crate) fn ejected_now(&self) -> usize {
        self.ejected_at(Instant::now())
    }

    fn ejected_at(&self, now: Instant) -> usize {
        let now = epoch_nanos(now);
        let selector = self.pool.selector.load();
        selector
            .endpoints
            .iter()
            .filter(|e| e.outlier.is_ejected(now))
            .count()
    }
}

impl Pool {
    /// Ejects `endpoint` if it is still one of ours, is not out already, and
    /// `maxEjectionPercent` leaves room.
    fn try_eject(&self, endpoint: &EndpointState, now: u64) {
        let _serialised = self
            .eject_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let selector = self.selector.load();
        let od = &selector.outlier;
        if endpoint.outlier.is_ejected(now)
            || !selector
                .endpoints
                .iter()
                .any(|e| std::ptr::eq(Arc::as_ptr(e), endpoint))
        {
            return;
        }
        let ejected = selector
            .endpoints
            .iter()
            .filter(|e| e.outlier.is_ejected(now))
            .count();
        let allowed = outlier::max_ejected(selector.endpoints.len(), od.max_ejection_percent);
        if ejected >= allowed {
            return;
        }
        let duration = endpoint.outlier.eject(now, od);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = &self.ejection_counter {
            counter.inc();
        }
        warn!(
            backend = %self.backend,
            endpoint = %endpoint.address,
            ejected_for = ?duration,
            times = endpoint.outlier.times_ejected(),
            "outlier detection ejected an endpoint"
        );
    }
}

/// One config's endpoints and the policy that chooses among them.
#[derive(Debug)]
struct Selector {
    endpoints: Vec<Arc<EndpointState>>,
    policy: Policy,
    outlier: api::OutlierDetection,
}

#[derive(Debug)]
enum Policy {
    RoundRobin(round_robin::Schedule),
    LeastRequest,
    ConsistentHash(hash::Ring),
}

impl Selector {
    fn build(
        backend: &api::Backend,
        existing: &HashMap<SocketAddr, &Arc<EndpointState>>,
        pool: &Weak<Pool>,
        now: Instant,
    ) -> Self {
        let endpoints: Vec<Arc<EndpointState>> = backend
            .endpoints
            .iter()
            .map(|e| match existing.get(&e.address) {
                Some(old) if old.describes(e) => Arc::clone(old),
                Some(old) => Arc::new(EndpointState::carried_over(e, old, now)),
                None => Arc::new(EndpointState::new(e, pool.clone(), now)),
            })
            .collect();
        if backend.health_check.is_none() {
            // Health checks were turned off: nothing will ever mark these
            // endpoints healthy again.
            for e in &endpoints {
                e.health.reset();
            }
        }
        let policy = match &backend.load_balancer {
            api::LoadBalancer::RoundRobin => {
                let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
                Policy::RoundRobin(round_robin::Schedule::new(&weights))
            }
            api::LoadBalancer::LeastRequest => Policy::LeastRequest,
            api::LoadBalancer::ConsistentHash(_) => {
                let nodes: Vec<(SocketAddr, u32)> =
                    endpoints.iter().map(|e| (e.address, e.weight)).collect();
                Policy::ConsistentHash(hash::Ring::new(&nodes))
            }
        };
        Self {
            endpoints,
            policy,
            outlier: backend.outlier_detection.clone(),
        }
    }

    /// The index of the chosen endpoint; `None` only without endpoints.
    fn pick(&self, hash: Option<u64>, now: Instant, rng: &mut impl Rng) -> Option<usize> {
        if self.endpoints.is_empty() {
            return None;
        }
        let now_nanos = epoch_nanos(now);
        // Whether any endpoint is available, found out only when a policy
        // meets one that is not. With none available, all are (panic mode).
        let any_available: Cell<Option<bool>> = Cell::new(None);
        let usable = |i: usize| {
            let Some(e) = self.endpoints.get(i) else {
                return false;
            };
            if e.is_available(now_nanos) {
                return true;
            }
            let any = any_available.get().unwrap_or_else(|| {
                let any = self.endpoints.iter().any(|e| e.is_available(now_nanos));
                any_available.set(Some(any));
                any
            });
            !any
        };
        match &self.policy {
            Policy::RoundRobin(schedule) => schedule.pick(usable),
            Policy::LeastRequest => least_request::pick(
                self.endpoints.len(),
                usable,
                |i| self.endpoints[i].cost(now),
                rng,
            ),
            Policy::ConsistentHash(ring) => ring.pick(hash.unwrap_or_else(|| rng.random()), usable),
        }
    }
}

/// Nanoseconds from a process-wide origin to `t`, so that instants fit in
/// atomics. 0 for instants before the origin.
fn epoch_nanos(t: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(t.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
