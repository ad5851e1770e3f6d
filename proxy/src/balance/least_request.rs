//! Least request: power of two random choices over peak-EWMA cost.
//!
//! This file owns the latency estimate (Finagle's and Linkerd's peak EWMA)
//! and the choice between two random usable endpoints. An endpoint's cost
//! is its latency estimate times (in-flight requests + 1), divided by its
//! weight; the cheaper of the two wins. The estimate jumps up at once on a
//! slow response and decays toward faster ones with time constant
//! [`DECAY`]; when read, it also decays toward zero, so that an endpoint
//! left idle after a slow spell is tried again.

use std::time::{Duration, Instant};

use rand::Rng;

use super::duration_nanos;

/// The EWMA time constant (Linkerd's default).
pub(super) const DECAY: Duration = Duration::from_secs(10);

/// The estimate of an endpoint that has not answered yet (Linkerd's).
pub(super) const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// Estimates are read as at least this, so that among idle endpoints the
/// in-flight count still decides.
const FLOOR_NANOS: f64 = 100_000.0;

/// One endpoint's peak-EWMA round-trip estimate.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeakEwma {
    estimate_nanos: f64,
    updated: Instant,
}

impl PeakEwma {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            estimate_nanos: duration_nanos(DEFAULT_RTT) as f64,
            updated: now,
        }
    }

    /// Takes in one response time: a slower one replaces the estimate, a
    /// faster one pulls it down by how long ago the estimate was made.
    pub(super) fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = duration_nanos(rtt) as f64;
        let current = self.estimate_nanos(now);
        self.estimate_nanos = if rtt > current {
            rtt
        } else {
            let w = self.weight_of_past(now);
            self.estimate_nanos * w + rtt * (1.0 - w)
        };
        self.updated = now;
    }

    /// The estimate decayed toward zero for the time since the last update.
    pub(super) fn estimate_nanos(&self, now: Instant) -> f64 {
        self.estimate_nanos * self.weight_of_past(now)
    }

    fn weight_of_past(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (-elapsed / DECAY.as_secs_f64()).exp()
    }
}

/// The load an endpoint would see with one more request.
pub(super) fn cost(estimate_nanos: f64, in_flight: u32, weight: u32) -> f64 {
    estimate_nanos.max(FLOOR_NANOS) * (f64::from(in_flight) + 1.0) / f64::from(weight.max(1))
}

/// Power of two choices among the `len` endpoints for which `usable` holds:
/// two distinct ones at random, the cheaper wins (the first on a tie).
/// `None` only when `len` is 0.
pub(super) fn pick(
    len: usize,
    usable: impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
    rng: &mut impl Rng,
) -> Option<usize> {
    let candidates = (0..len).filter(|&i| usable(i)).count();
    let nth = |n: usize| (0..len).filter(|&i| usable(i)).nth(n);
    match candidates {
        0 => (len > 0).then_some(0),
        1 => nth(0),
        n => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            // Usability can change between the count and here (an ejection
            // on another thread); fall back to whichever was found.
            match (nth(a), nth(b)) {
                (Some(a), Some(b)) => Some(if cost(b) < cost(a) { b } else { a }),
                (a, b) => a.or(b).or_else(|| nth(0)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_slow_sample_raises_the_estimate_at_once() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(t0);
        ewma.observe(Duration::from_millis(500), t0);
        assert_eq!(ewma.estimate_nanos(t0), 500e6);
    }

    #[test]
    fn fast_samples_pull_it_down_with_the_time_constant() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(t0);
        ewma.observe(Duration::from_millis(500), t0);
        // One time constant later, a 10 ms answer: e^-1 of the past remains.
        let t1 = t0 + DECAY;
        ewma.observe(Duration::from_millis(10), t1);
        let expected = 500e6 * (-1f64).exp() + 10e6 * (1.0 - (-1f64).exp());
        assert!((ewma.estimate_nanos(t1) - expected).abs() < 1.0);
        // A fast answer right after a slow one barely moves it.
        let mut ewma = PeakEwma::new(t0);
        ewma.observe(Duration::from_millis(500), t0);
        ewma.observe(Duration::from_millis(1), t0 + Duration::from_millis(1));
        assert!(ewma.estimate_nanos(t0 + Duration::from_millis(1)) > 499e6);
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero() {
        let t0 = Instant::now();
        let mut ewma = PeakEwma::new(t0);
        ewma.observe(Duration::from_secs(1), t0);
        assert!(ewma.estimate_nanos(t0 + DECAY * 5) < 1e9 * 0.01);
    }

    #[test]
    fn cost_counts_in_flight_and_divides_by_weight() {
        let ms = 1e6;
        assert_eq!(cost(10.0 * ms, 0, 1), 10.0 * ms);
        assert_eq!(cost(10.0 * ms, 3, 1), 40.0 * ms);
        assert_eq!(cost(10.0 * ms, 3, 4), 10.0 * ms);
        assert_eq!(cost(0.0, 1, 1), 2.0 * FLOOR_NANOS);
    }

    #[test]
    fn the_cheaper_of_two_wins() {
        let mut rng = StdRng::seed_from_u64(7);
        // Two endpoints: both are always the candidates.
        let costs = [5.0, 1.0];
        for _ in 0..100 {
            assert_eq!(pick(2, |_| true, |i| costs[i], &mut rng), Some(1));
        }
    }

    #[test]
    fn the_most_expensive_is_never_picked_and_load_spreads() {
        let mut rng = StdRng::seed_from_u64(1);
        let costs = [1.0, 2.0, 3.0, 4.0];
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[pick(4, |_| true, |i| costs[i], &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0);
        // P2C shares: 1/2, 1/3, 1/6.
        assert!((1800..2200).contains(&counts[0]), "{counts:?}");
        assert!((1150..1500).contains(&counts[1]), "{counts:?}");
        assert!((500..830).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn only_usable_endpoints_are_candidates() {
        let mut rng = StdRng::seed_from_u64(3);
        let costs = [1.0, 100.0, 100.0];
        for _ in 0..100 {
            let i = pick(3, |i| i != 0, |i| costs[i], &mut rng).unwrap();
            assert_ne!(i, 0);
        }
        assert_eq!(pick(3, |i| i == 2, |i| costs[i], &mut rng), Some(2));
        assert_eq!(pick(0, |_| true, |i| costs[i], &mut rng), None);
    }
}
