//! Weighted round robin.
//!
//! The order is nginx's smooth weighted round robin, worked out once when
//! the selector is built (weights divided by their gcd, then scaled down if
//! they add up to more than [`MAX_SCHEDULE`]). Picking is one atomic
//! increment of a shared cursor. An unusable endpoint's turn is skipped by
//! taking the next cursor value, which removes its entries from the cycle
//! and leaves the others' shares as they were. This file does not know why
//! an endpoint is unusable.

use std::cmp::Reverse;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The longest schedule: 16 KiB of `u32`s per backend at most (plus one
/// entry per endpoint beyond it, since every endpoint keeps at least one).
pub(super) const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug)]
pub(super) struct Schedule {
    order: Box<[u32]>,
    cursor: AtomicUsize,
}

impl Schedule {
    pub(super) fn new(weights: &[u32]) -> Self {
        // Start at a random point, so that proxies started together do not
        // all send their first requests to the first endpoint.
        let start: u32 = rand::random();
        Self::starting_at(weights, start as usize)
    }

    fn starting_at(weights: &[u32], start: usize) -> Self {
        Self {
            order: smooth_order(&scaled(weights)).into_boxed_slice(),
            cursor: AtomicUsize::new(start),
        }
    }

    /// The next endpoint index for which `usable` holds, or the scheduled
    /// one if none does within a whole cycle. `None` only when empty.
    pub(super) fn pick(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.order.len();
        let next = || self.order[self.cursor.fetch_add(1, Ordering::Relaxed) % len] as usize;
        if len == 0 {
            return None;
        }
        let first = next();
        if usable(first) {
            return Some(first);
        }
        for _ in 1..len {
            let i = next();
            if usable(i) {
                return Some(i);
            }
        }
        Some(first)
    }
}

/// Weights reduced by their gcd, and scaled to fit [`MAX_SCHEDULE`].
fn scaled(weights: &[u32]) -> Vec<u64> {
    let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u64 = reduced.iter().sum();
    if total <= MAX_SCHEDULE {
        return reduced;
    }
    reduced
        .iter()
        .map(|w| (w * MAX_SCHEDULE / total).max(1))
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin, one full cycle: every step adds each
/// weight to its endpoint's running score, picks the highest (lowest index
/// on ties) and takes the total off it. Heavy endpoints are spread out
/// rather than bunched.
fn smooth_order(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let total_i = i64::try_from(total).unwrap_or(i64::MAX);
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::try_from(w).unwrap_or(i64::MAX);
        }
        let best = (0..current.len())
            .max_by_key(|&i| (current[i], Reverse(i)))
            .unwrap_or(0);
        current[best] -= total_i;
        order.push(u32::try_from(best).unwrap_or(u32::MAX));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(schedule: &Schedule, endpoints: usize, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; endpoints];
        for _ in 0..picks {
            counts[schedule.pick(|_| true).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_are_exactly_even() {
        let schedule = Schedule::new(&[1, 1, 1]);
        assert_eq!(counts(&schedule, 3, 3000), [1000, 1000, 1000]);
        let schedule = Schedule::new(&[7, 7, 7]);
        assert_eq!(schedule.order.len(), 3, "weights are divided by their gcd");
    }

    #[test]
    fn weights_set_the_shares_and_are_interleaved() {
        let schedule = Schedule::starting_at(&[5, 1, 1], 0);
        assert_eq!(&*schedule.order, &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&schedule, 3, 7000), [5000, 1000, 1000]);
    }

    #[test]
    fn skipped_endpoints_leave_the_others_shares_alone() {
        let schedule = Schedule::new(&[2, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[schedule.pick(|i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts, [2000, 0, 1000]);
    }

    #[test]
    fn with_nothing_usable_the_schedule_still_answers() {
        let schedule = Schedule::new(&[1, 1]);
        assert!(schedule.pick(|_| false).is_some());
        assert_eq!(Schedule::new(&[]).pick(|_| true), None);
    }

    #[test]
    fn huge_weights_are_scaled_into_the_cap() {
        let schedule = Schedule::new(&[1_000_000, 999_999, 1]);
        assert!(schedule.order.len() as u64 <= MAX_SCHEDULE + 3);
        let c = counts(&schedule, 3, schedule.order.len());
        assert!(c[2] >= 1, "every endpoint keeps a turn");
        assert!(c[0].abs_diff(c[1]) <= 1);
    }
}
