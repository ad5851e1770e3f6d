//! Passive outlier detection: consecutive-failure counters per endpoint and
//! the ejection arithmetic.
//!
//! This file owns how an [`Outcome`] moves the counters, how long an
//! ejection lasts and how many endpoints may be out at once. The decision to
//! eject, which must look at every endpoint of the backend, is
//! `Pool::try_eject` in `balance.rs`.
//!
//! Outcomes count like this (Envoy's split of local and upstream errors):
//!
//! | outcome | 5xx | gateway | connect |
//! | --- | --- | --- | --- |
//! | `Success`, `Status` below 500 | reset | reset | reset |
//! | `Status` 502, 503, 504 | +1 | +1 | reset |
//! | other `Status` 5xx | +1 | reset | reset |
//! | `Timeout`, `Error` (answered 504 / 502 downstream) | +1 | +1 | reset |
//! | `ConnectFailure` | kept | kept | +1 |
//!
//! An ejection lasts `baseEjectionTime` times the number of ejections,
//! capped at [`MAX_EJECTION`] (or at `baseEjectionTime` if that is longer).
//! As in Envoy, the multiplier drops by one for every `interval` that the
//! endpoint then stays in. An endpoint comes back exactly when its ejection
//! ends; there is no sweep.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use remora_api as api;

use super::{duration_nanos, Outcome};

/// The longest ejection, unless `baseEjectionTime` is longer (Envoy's
/// default `max_ejection_time`).
pub(super) const MAX_EJECTION: Duration = Duration::from_secs(300);

/// What one outcome does to one consecutive counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tally {
    Bump,
    Reset,
    Keep,
}

/// The effect of an outcome on the 5xx, gateway-failure and
/// connect-failure counters, in that order.
pub(super) fn classify(outcome: Outcome) -> [Tally; 3] {
    use Tally::{Bump, Keep, Reset};
    match outcome {
        Outcome::Success => [Reset, Reset, Reset],
        Outcome::Status(502..=504) | Outcome::Timeout | Outcome::Error => [Bump, Bump, Reset],
        Outcome::Status(500..=599) => [Bump, Reset, Reset],
        Outcome::Status(_) => [Reset, Reset, Reset],
        Outcome::ConnectFailure => [Keep, Keep, Bump],
    }
}

/// How many of `endpoints` may be ejected at once under
/// `maxEjectionPercent`: the percentage rounded down, but at least one when
/// there are two or more endpoints (as Envoy), and none at 0%.
pub(super) fn max_ejected(endpoints: usize, max_ejection_percent: u8) -> usize {
    if max_ejection_percent == 0 {
        return 0;
    }
    let share = endpoints * usize::from(max_ejection_percent.min(100)) / 100;
    if endpoints >= 2 {
        share.max(1)
    } else {
        share
    }
}

/// How long the `times`-th ejection lasts.
pub(super) fn ejection_time(base: Duration, times: u32) -> Duration {
    base.saturating_mul(times.max(1))
        .min(MAX_EJECTION.max(base))
}

/// One endpoint's outlier state, all atomics.
#[derive(Debug, Default)]
pub(super) struct OutlierState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_connect: AtomicU32,
    /// Epoch nanoseconds when the ejection ends; 0 if never ejected.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
}

impl OutlierState {
    pub(super) fn copy_from(&self, other: &OutlierState) {
        for (to, from) in [
            (&self.consecutive_5xx, &other.consecutive_5xx),
            (&self.consecutive_gateway, &other.consecutive_gateway),
            (&self.consecutive_connect, &other.consecutive_connect),
            (&self.times_ejected, &other.times_ejected),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.ejected_until.store(
            other.ejected_until.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    pub(super) fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    pub(super) fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    /// Counts `outcome`; true when a counter has reached its threshold
    /// (a threshold of 0 never triggers).
    pub(super) fn record(&self, outcome: Outcome, od: &api::OutlierDetection) -> bool {
        let counters = [
            (&self.consecutive_5xx, od.consecutive_5xx),
            (&self.consecutive_gateway, od.consecutive_gateway_failures),
            (&self.consecutive_connect, od.consecutive_connect_failures),
        ];
        let mut tripped = false;
        for ((counter, threshold), tally) in counters.into_iter().zip(classify(outcome)) {
            match tally {
                Tally::Bump => {
                    let n = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                    tripped |= threshold > 0 && n >= threshold;
                }
                Tally::Reset => counter.store(0, Ordering::Relaxed),
                Tally::Keep => {}
            }
        }
        tripped && od.max_ejection_percent > 0
    }

    /// Ejects from `now`; returns for how long. The caller has checked
    /// `maxEjectionPercent`.
    pub(super) fn eject(&self, now: u64, od: &api::OutlierDetection) -> Duration {
        let previous_end = self.ejected_until.load(Ordering::Relaxed);
        let mut times = self.times_ejected.load(Ordering::Relaxed);
        if previous_end != 0 && now > previous_end {
            let interval = duration_nanos(od.interval).max(1);
            let decay = u32::try_from((now - previous_end) / interval).unwrap_or(u32::MAX);
            times = times.saturating_sub(decay);
        }
        let times = times.saturating_add(1);
        let duration = ejection_time(od.base_ejection_time, times).max(Duration::from_nanos(1));
        self.times_ejected.store(times, Ordering::Relaxed);
        self.ejected_until.store(
            now.saturating_add(duration_nanos(duration)),
            Ordering::Relaxed,
        );
        for counter in [
            &self.consecutive_5xx,
            &self.consecutive_gateway,
            &self.consecutive_connect,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od(consecutive_5xx: u32, gateway: u32, connect: u32) -> api::OutlierDetection {
        api::OutlierDetection {
            consecutive_5xx,
            consecutive_gateway_failures: gateway,
            consecutive_connect_failures: connect,
            ..api::OutlierDetection::default()
        }
    }

    #[test]
    fn outcomes_move_the_right_counters() {
        use Tally::{Bump, Keep, Reset};
        assert_eq!(classify(Outcome::Success), [Reset, Reset, Reset]);
        assert_eq!(classify(Outcome::Status(404)), [Reset, Reset, Reset]);
        assert_eq!(classify(Outcome::Status(500)), [Bump, Reset, Reset]);
        assert_eq!(classify(Outcome::Status(503)), [Bump, Bump, Reset]);
        assert_eq!(classify(Outcome::Timeout), [Bump, Bump, Reset]);
        assert_eq!(classify(Outcome::Error), [Bump, Bump, Reset]);
        assert_eq!(classify(Outcome::ConnectFailure), [Keep, Keep, Bump]);
    }

    #[test]
    fn trips_at_the_threshold_and_a_success_resets() {
        let state = OutlierState::default();
        let od = od(3, 0, 0);
        assert!(!state.record(Outcome::Status(500), &od));
        assert!(!state.record(Outcome::Status(500), &od));
        assert!(!state.record(Outcome::Success, &od));
        assert!(!state.record(Outcome::Status(500), &od));
        assert!(!state.record(Outcome::Status(500), &od));
        assert!(state.record(Outcome::Status(500), &od));
    }

    #[test]
    fn gateway_failures_trip_their_own_threshold() {
        let state = OutlierState::default();
        let od = od(0, 2, 0);
        assert!(!state.record(Outcome::Status(502), &od));
        assert!(!state.record(Outcome::Status(500), &od), "500 resets it");
        assert!(!state.record(Outcome::Status(504), &od));
        assert!(state.record(Outcome::Timeout, &od));
    }

    #[test]
    fn connect_failures_survive_5xx_but_not_a_response() {
        let state = OutlierState::default();
        let od = od(0, 0, 2);
        assert!(!state.record(Outcome::ConnectFailure, &od));
        assert!(
            !state.record(Outcome::Status(503), &od),
            "a 503 means we connected"
        );
        assert!(!state.record(Outcome::ConnectFailure, &od));
        assert!(state.record(Outcome::ConnectFailure, &od));
    }

    #[test]
    fn zero_thresholds_and_zero_percent_never_trip() {
        let state = OutlierState::default();
        let off = od(0, 0, 0);
        for _ in 0..100 {
            assert!(!state.record(Outcome::Status(503), &off));
            assert!(!state.record(Outcome::ConnectFailure, &off));
        }
        let no_ejection = api::OutlierDetection {
            max_ejection_percent: 0,
            ..od(1, 1, 1)
        };
        assert!(!state.record(Outcome::Status(503), &no_ejection));
    }

    #[test]
    fn ejection_cap() {
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(2, 10), 1, "at least one of two");
        assert_eq!(max_ejected(1, 50), 0, "never the only endpoint below 100%");
        assert_eq!(max_ejected(1, 100), 1);
        assert_eq!(max_ejected(10, 0), 0);
        assert_eq!(max_ejected(10, 100), 10);
    }

    #[test]
    fn ejection_time_grows_and_caps() {
        let base = Duration::from_secs(30);
        assert_eq!(ejection_time(base, 1), base);
        assert_eq!(ejection_time(base, 3), Duration::from_secs(90));
        assert_eq!(ejection_time(base, 20), MAX_EJECTION);
        let long = Duration::from_secs(600);
        assert_eq!(ejection_time(long, 5), long, "a long base is its own cap");
    }

    #[test]
    fn repeat_ejections_multiply_and_decay_by_interval() {
        let secs = |s: u64| s * 1_000_000_000;
        let od = api::OutlierDetection {
            base_ejection_time: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            ..api::OutlierDetection::default()
        };
        let state = OutlierState::default();
        assert_eq!(state.eject(secs(1), &od), Duration::from_secs(30));
        assert!(state.is_ejected(secs(30)));
        assert!(!state.is_ejected(secs(31)));
        // Back at 31 s, failing again straight away: twice as long.
        assert_eq!(state.eject(secs(32), &od), Duration::from_secs(60));
        // Ends at 92 s; 25 s later two intervals have passed: 2 - 2 + 1.
        assert_eq!(state.eject(secs(117), &od), Duration::from_secs(30));
        assert_eq!(state.times_ejected(), 1);
    }
}
