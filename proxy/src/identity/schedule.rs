//! When to ask the CA next: the renewal point of a certificate just issued,
//! and the back-off after a failed request. Pure functions of durations and
//! a jitter draw in `-1.0..=1.0`, so the schedule is tested without clocks.

use std::time::Duration;

/// Jitter is this share of the delay it moves, either way.
const JITTER: f64 = 0.1;
/// Never ask again sooner than this, whatever the CA returned.
pub(super) const MIN_DELAY: Duration = Duration::from_secs(1);
/// The first retry after a failure.
pub(super) const BACKOFF_START: Duration = Duration::from_secs(1);
/// Retries never wait longer than this.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A draw for the jitter, in -1..=1.
pub(crate) fn draw_jitter() -> f64 {
    use rand::Rng as _;
    rand::rng().random_range(-1.0..=1.0)
}

/// `base` moved by `draw` (clamped to -1..=1) times 10 % of itself.
fn jittered(base: Duration, draw: f64) -> Duration {
    let draw = if draw.is_finite() {
        draw.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    base.mul_f64(1.0 + JITTER * draw)
}

/// How long after receiving a certificate valid for `remaining` more to
/// renew it: half of `remaining`, ±10 % of that half.
pub(super) fn renewal_delay(remaining: Duration, draw: f64) -> Duration {
    jittered(remaining / 2, draw).max(MIN_DELAY)
}

/// Exponential back-off: 1 s, 2 s, 4 s ... up to 30 s, each ±10 %, and never
/// past 30 s.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    start: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self::between(BACKOFF_START, BACKOFF_MAX)
    }

    /// Back-off from `start`, doubling up to `max` (the discovery client
    /// reconnects faster than the CA client retries).
    pub(crate) fn between(start: Duration, max: Duration) -> Self {
        Backoff {
            next: start,
            start,
            max,
        }
    }

    /// The wait before the next retry; doubles the one after.
    pub(crate) fn next_delay(&mut self, draw: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jittered(base, draw).min(self.max)
    }

    /// After a success, the next failure starts again at the start.
    pub(crate) fn reset(&mut self) {
        self.next = self.start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn renewal_is_at_half_the_remaining_life_within_ten_percent() {
        // 24 h: 12 h, between 10.8 h and 13.2 h.
        let day = 86_400 * S;
        assert_eq!(renewal_delay(day, 0.0), 43_200 * S);
        assert_eq!(renewal_delay(day, -1.0), 38_880 * S);
        assert_eq!(renewal_delay(day, 1.0), 47_520 * S);
        // 10 s: 4.5 s to 5.5 s.
        assert_eq!(renewal_delay(10 * S, -1.0), Duration::from_millis(4_500));
        assert_eq!(renewal_delay(10 * S, 1.0), Duration::from_millis(5_500));
        // Draws outside the range are clamped, NaN is no jitter.
        assert_eq!(renewal_delay(10 * S, 7.0), Duration::from_millis(5_500));
        assert_eq!(renewal_delay(10 * S, f64::NAN), 5 * S);
    }

    #[test]
    fn a_certificate_about_to_expire_is_not_renewed_in_a_hot_loop() {
        assert_eq!(renewal_delay(Duration::ZERO, 0.0), MIN_DELAY);
        assert_eq!(renewal_delay(Duration::from_millis(900), 1.0), MIN_DELAY);
    }

    #[test]
    fn backoff_doubles_from_one_second_to_thirty() {
        let mut backoff = Backoff::new();
        let plain: Vec<u64> = (0..8).map(|_| backoff.next_delay(0.0).as_secs()).collect();
        assert_eq!(plain, [1, 2, 4, 8, 16, 30, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.next_delay(1.0), Duration::from_millis(1_100));
        assert_eq!(backoff.next_delay(-1.0), Duration::from_millis(1_800));
        // Jitter never takes it past the cap.
        for _ in 0..5 {
            backoff.next_delay(0.0);
        }
        assert_eq!(backoff.next_delay(1.0), BACKOFF_MAX);
        assert_eq!(backoff.next_delay(-1.0), 27 * S);
    }
}
