//! The retry budget (Finagle's and Linkerd's): retries may add at most
//! `ratio` of the recent requests, plus `minRetriesPerSecond`.
//!
//! Every original request deposits `ratio` of a token; a retry withdraws a
//! whole one and is refused when there is none. Deposits and withdrawals
//! expire after `ttl`, so over any `ttl` window at most
//! `ratio × requests + minRetriesPerSecond × ttl` retries go out. tower's
//! `TpsBudget` has these semantics, but it panics on a `ttl` outside 1 to 60
//! seconds (the config allows any positive one) and rounds the ratio to
//! `1/n`, so this is a small one of our own.
//!
//! The window is [`SLOTS`] slots of `ttl / SLOTS`; tokens are counted in
//! thousandths so that a ratio of 0.2 is exactly 200 per deposit. The
//! request path touches one atomic to deposit; rotating the slots takes a
//! mutex with `try_lock`, once per slot length at most.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use remora_api as api;

/// Slots in the window.
pub(super) const SLOTS: usize = 10;

/// One retry, in thousandths of a token.
const TOKEN: i64 = 1000;

/// A backend's retry budget. Share it behind an `Arc`.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// Thousandths of a token deposited per request.
    deposit: i64,
    /// The `minRetriesPerSecond × ttl` tokens that never expire.
    reserve: i64,
    slot_nanos: u64,
    origin: Instant,
    /// Net balance of the slot being written.
    current: AtomicI64,
    /// Net balances of the closed slots still inside the window.
    closed: [AtomicI64; SLOTS],
    /// When (nanos from `origin`) the current slot closes.
    next_rotation: AtomicU64,
    rotation: Mutex<usize>,
}

impl RetryBudget {
    pub(crate) fn new(config: &api::RetryBudget) -> Self {
        Self::new_at(config, Instant::now())
    }

    fn new_at(config: &api::RetryBudget, now: Instant) -> Self {
        let deposit = (config.ratio.clamp(0.0, 1000.0) * TOKEN as f64).round() as i64;
        // f64 -> i64 saturates; a huge reserve just means "always allowed".
        let reserve = (f64::from(config.min_retries_per_second)
            * config.ttl.as_secs_f64()
            * TOKEN as f64) as i64;
        let slot_nanos = u64::try_from(config.ttl.as_nanos() / SLOTS as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            deposit,
            reserve,
            slot_nanos,
            origin: now,
            current: AtomicI64::new(0),
            closed: Default::default(),
            next_rotation: AtomicU64::new(slot_nanos),
            rotation: Mutex::new(0),
        }
    }

    /// Counts one original request (not a retry).
    pub(crate) fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    fn deposit_at(&self, now: Instant) {
        self.rotate(now);
        self.current.fetch_add(self.deposit, Ordering::Relaxed);
    }

    /// Takes a token for one retry; false means the budget is spent and the
    /// retry must not be sent. Under a race two withdrawals may both be
    /// refused, never both granted past the budget.
    pub(crate) fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    fn try_withdraw_at(&self, now: Instant) -> bool {
        self.rotate(now);
        self.current.fetch_sub(TOKEN, Ordering::Relaxed);
        if self.balance() >= 0 {
            true
        } else {
            self.current.fetch_add(TOKEN, Ordering::Relaxed);
            false
        }
    }

    #[cfg(test)]
    fn available_at(&self, now: Instant) -> u64 {
        self.rotate(now);
        u64::try_from(self.balance() / TOKEN).unwrap_or(0)
    }

    fn balance(&self) -> i64 {
        let closed: i64 = self.closed.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        self.reserve
            .saturating_add(closed)
            .saturating_add(self.current.load(Ordering::Relaxed))
    }

    /// Closes the slots that have ended by `now`, dropping the oldest.
    fn rotate(&self, now: Instant) {
        let now = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        if now < self.next_rotation.load(Ordering::Relaxed) {
            return;
        }
        let mut index = match self.rotation.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // Someone else is rotating.
            Err(TryLockError::WouldBlock) => return,
        };
        let due = self.next_rotation.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let elapsed = (now - due) / self.slot_nanos + 1;
        for step in 0..elapsed.min(SLOTS as u64) {
            *index = (*index + 1) % SLOTS;
            let value = if step == 0 {
                self.current.swap(0, Ordering::Relaxed)
            } else {
                0
            };
            self.closed[*index].store(value, Ordering::Relaxed);
        }
        if elapsed > SLOTS as u64 {
            // Everything expired, including what was being written.
            self.current.store(0, Ordering::Relaxed);
            for slot in &self.closed {
                slot.store(0, Ordering::Relaxed);
            }
        }
        self.next_rotation.store(
            due.saturating_add(elapsed.saturating_mul(self.slot_nanos)),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ratio: f64, min: u32, ttl_secs: u64) -> api::RetryBudget {
        api::RetryBudget {
            ratio,
            min_retries_per_second: min,
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    fn withdraw_all(budget: &RetryBudget, now: Instant) -> u32 {
        let mut n = 0;
        while budget.try_withdraw_at(now) {
            n += 1;
            assert!(n < 1_000_000, "the budget never ran out");
        }
        n
    }

    #[test]
    fn a_fifth_of_the_requests_may_be_retried() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&config(0.2, 0, 10), t0);
        for _ in 0..100 {
            budget.deposit_at(t0);
        }
        assert_eq!(budget.available_at(t0), 20);
        assert_eq!(withdraw_all(&budget, t0), 20);
        assert_eq!(budget.available_at(t0), 0);
    }

    #[test]
    fn the_minimum_is_there_without_requests() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&config(0.2, 10, 10), t0);
        assert_eq!(withdraw_all(&budget, t0), 100);
        // Withdrawals expire with the window, so the reserve comes back.
        assert_eq!(withdraw_all(&budget, t0 + Duration::from_secs(11)), 100);
    }

    #[test]
    fn ratio_and_minimum_add_up() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&config(0.5, 1, 10), t0);
        for _ in 0..10 {
            budget.deposit_at(t0);
        }
        assert_eq!(withdraw_all(&budget, t0), 15);
    }

    #[test]
    fn deposits_expire_after_ttl() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&config(1.0, 0, 10), t0);
        for _ in 0..10 {
            budget.deposit_at(t0);
        }
        assert_eq!(budget.available_at(t0 + Duration::from_secs(5)), 10);
        for _ in 0..10 {
            budget.deposit_at(t0 + Duration::from_secs(6));
        }
        assert_eq!(budget.available_at(t0 + Duration::from_secs(9)), 20);
        // The first deposits leave the window after ttl (plus a slot at most).
        assert_eq!(budget.available_at(t0 + Duration::from_millis(11_500)), 10);
        assert_eq!(budget.available_at(t0 + Duration::from_secs(18)), 0);
        // A long silence clears everything.
        assert_eq!(budget.available_at(t0 + Duration::from_secs(3600)), 0);
    }

    #[test]
    fn zero_ratio_allows_only_the_minimum() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&config(0.0, 0, 10), t0);
        for _ in 0..1000 {
            budget.deposit_at(t0);
        }
        assert!(!budget.try_withdraw_at(t0));
    }

    #[test]
    fn odd_ttls_do_not_panic() {
        let t0 = Instant::now();
        let tiny = api::RetryBudget {
            ttl: Duration::from_nanos(1),
            ..config(0.2, 0, 1)
        };
        let budget = RetryBudget::new_at(&tiny, t0);
        budget.deposit_at(t0 + Duration::from_secs(1));
        assert!(!budget.try_withdraw_at(t0 + Duration::from_secs(2)));
        let huge = api::RetryBudget {
            ttl: api::MAX_DURATION,
            ..config(1000.0, u32::MAX, 1)
        };
        assert!(RetryBudget::new_at(&huge, t0).try_withdraw_at(t0));
    }
}
