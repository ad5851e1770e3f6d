//! Resource limits of the data plane: the process's open-file limit, each
//! listener's connection limit, and a throttle for the warnings that a flood
//! would otherwise turn into a flood of log lines.
//!
//! This module owns the counting. What happens to a connection past the limit
//! (it is closed with a reset and counted) is the accept loop's, in `proxy`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// The default connection limit of a listener never exceeds this, however
/// many file descriptors the process may open.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// File descriptors kept out of the connection budget: the admin server and
/// its clients, the config file and its watch, pooled upstream connections
/// beyond one per downstream connection, logs.
const FD_RESERVE: u64 = 256;

/// Descriptors one slot of a listener's limit may cost, over both listeners:
/// each accepted connection holds its own socket and (opaque TCP) one to its
/// upstream, and there are two listeners (outbound, inbound).
const FDS_PER_SLOT: u64 = 4;

/// The open-file limit the process ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NofileLimit {
    pub(crate) soft: u64,
    pub(crate) hard: u64,
}

/// Raises the open-file soft limit (`RLIMIT_NOFILE`) to the hard limit, so
/// that the connection limits, not the kernel, decide when to refuse. A
/// failure is logged and the proxy runs with the limit it was given.
pub(crate) fn raise_nofile_limit() -> Option<NofileLimit> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE); connection limits default to {DEFAULT_MAX_CONNECTIONS}");
            return None;
        }
    };
    if soft >= hard {
        info!(soft, hard, "open-file limit already at its hard limit");
        return Some(NofileLimit { soft, hard });
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            info!(
                from = soft,
                to = hard,
                "raised the open-file soft limit to the hard limit"
            );
            Some(NofileLimit { soft: hard, hard })
        }
        Err(e) => {
            warn!(soft, hard, error = %e, "cannot raise the open-file soft limit; running with {soft} (raise it with `ulimit -n` or the container runtime's nofile setting)");
            Some(NofileLimit { soft, hard })
        }
    }
}

/// Each listener's connection limit: the one asked for, or a default that
/// keeps both listeners' connections within the open-file limit.
pub(crate) fn max_connections(asked: Option<usize>, nofile: Option<NofileLimit>) -> usize {
    let budget = nofile.map(|n| fd_budget(n.soft));
    match (asked, budget) {
        (Some(asked), Some(budget)) if asked > budget => {
            warn!(
                max_connections = asked,
                open_file_limit = nofile.map(|n| n.soft),
                "--max-connections is more than the open-file limit can carry on both listeners; the kernel may refuse connections first (EMFILE)"
            );
            asked
        }
        (Some(asked), _) => asked,
        (None, Some(budget)) => budget.min(DEFAULT_MAX_CONNECTIONS),
        (None, None) => DEFAULT_MAX_CONNECTIONS,
    }
}

/// How many connections per listener `soft` open files can carry.
fn fd_budget(soft: u64) -> usize {
    let slots = soft.saturating_sub(FD_RESERVE) / FDS_PER_SLOT;
    usize::try_from(slots).unwrap_or(usize::MAX).max(1)
}

/// A listener's connection limit, shared by its IPv4 and IPv6 sockets.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

/// One connection's place in its listener's limit, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl ConnectionLimit {
    pub(crate) fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for a new connection, or `None` when the listener is full.
    pub(crate) fn try_acquire(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot { _permit: permit })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a slot now.
    pub(crate) fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// Lets a repeated warning through at most once per interval, and says how
/// many times it happened since the last one that got through.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// Notes one occurrence at `now`. When a warning is due, returns how
    /// many occurrences it reports: this one and those held back since the
    /// last warning.
    pub(crate) fn note(&mut self, now: Instant) -> Option<u64> {
        self.held_back += 1;
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_exactly_and_frees_a_slot_on_drop() {
        let limit = ConnectionLimit::new(3);
        let mut slots: Vec<Slot> = (0..3).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(slots.len(), 3);
        assert_eq!(limit.open(), 3);
        assert!(limit.try_acquire().is_none(), "a fourth is refused");
        assert!(limit.try_acquire().is_none(), "and refusing takes nothing");
        drop(slots.pop());
        assert_eq!(limit.open(), 2);
        let again = limit.try_acquire().expect("a freed slot is reusable");
        assert_eq!(limit.open(), 3);
        drop(again);
        assert_eq!(limit.open(), 2);
    }

    #[test]
    fn clones_share_one_limit() {
        let v4 = ConnectionLimit::new(2);
        let v6 = v4.clone();
        let _a = v4.try_acquire().expect("first");
        let _b = v6.try_acquire().expect("second");
        assert!(v4.try_acquire().is_none());
        assert!(v6.try_acquire().is_none());
        assert_eq!(v4.open(), 2);
    }

    #[test]
    fn slots_released_on_other_threads_are_counted() {
        let limit = ConnectionLimit::new(100);
        let slots: Vec<Slot> = (0..100).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(slots.len(), 100);
        let threads: Vec<_> = slots
            .into_iter()
            .map(|slot| std::thread::spawn(move || drop(slot)))
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn the_default_keeps_both_listeners_within_the_open_file_limit() {
        let nofile = |soft| Some(NofileLimit { soft, hard: soft });
        // (1024 - 256) / 4: two listeners, two descriptors per connection.
        assert_eq!(max_connections(None, nofile(1024)), 192);
        assert_eq!(
            max_connections(None, nofile(1 << 20)),
            DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(max_connections(None, nofile(100)), 1, "never zero");
        assert_eq!(max_connections(None, None), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(max_connections(Some(50), nofile(1 << 20)), 50);
        assert_eq!(
            max_connections(Some(5000), nofile(1024)),
            5000,
            "an explicit limit is kept, with a warning"
        );
    }

    #[test]
    fn the_throttle_warns_at_most_once_per_interval_with_the_count() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut throttle = Throttle::new(Duration::from_secs(1));
        assert_eq!(throttle.note(at(0)), Some(1), "the first warns at once");
        assert_eq!(throttle.note(at(10)), None);
        assert_eq!(throttle.note(at(500)), None);
        assert_eq!(throttle.note(at(999)), None);
        assert_eq!(
            throttle.note(at(1000)),
            Some(4),
            "one second later: this one and the three held back"
        );
        assert_eq!(throttle.note(at(1500)), None);
        assert_eq!(throttle.note(at(5000)), Some(2));
        assert_eq!(throttle.note(at(5001)), None);
    }
}
