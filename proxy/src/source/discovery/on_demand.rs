//! On-demand destinations, as Linkerd does: the first connection (or
//! request, by `Host`) to a destination the config does not know asks the
//! discovery client to subscribe to it and waits, at most `--discovery-wait`,
//! for remora-cp's first answer. Concurrent first connections share the one
//! pending subscription. After the answer, or the wait, the caller looks at
//! the config again: it routes by the new config, or passes through.
//!
//! Only destinations the config does not know come here: a known one is a
//! hash lookup in the snapshot, as before, and never takes this lock. The
//! number of destinations is bounded (`--discovery-max-destinations`); past
//! it a new destination passes through at once. A destination waits once:
//! when remora-cp does not answer in time, later connections pass through
//! at once until it does.
//!
//! Each connection (by original destination) and each request (by host
//! name) to a destination held here holds a [`InUse`] guard for as long as
//! it runs. A destination no guard has held for `--discovery-idle-unsubscribe`
//! is taken out by [`OnDemand::take_idle`] (the client then unsubscribes and
//! drops its config), so memory follows what the app talks to now; the next
//! connection to it asks again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{mpsc, watch};

/// An outbound destination, as remora-cp names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Dest {
    /// A virtual address and port (the original destination).
    Addr(SocketAddr),
    /// A host name (lowercase, checked) and port.
    Host(String, u16),
}

impl std::fmt::Display for Dest {
    /// The same text remora-cp logs, and the assembly's key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Addr(a) => write!(f, "address {a}"),
            Dest::Host(h, p) => write!(f, "host {h}:{p}"),
        }
    }
}

/// The longest host name remora-cp accepts.
const MAX_HOST: usize = 253;

/// The destination a request's authority names, if it is a host name
/// remora-cp would accept (1 to 253 bytes of letters, digits, `-`, `.`;
/// lowercased). An IP literal or anything else is `None`: it is never sent,
/// since remora-cp closes a stream that names a bad host.
pub(crate) fn host_dest(authority: &str, port: u16) -> Option<Dest> {
    let host = match authority.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
        && host.len() <= MAX_HOST
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && host.parse::<std::net::Ipv4Addr>().is_err()
        && host.bytes().any(|b| b.is_ascii_alphabetic());
    valid.then(|| Dest::Host(host.to_ascii_lowercase(), port))
}

/// The destinations asked for, each with whether remora-cp has answered
/// and how it is used.
#[derive(Debug)]
pub(crate) struct OnDemand {
    entries: Mutex<HashMap<Dest, Entry>>,
    /// To the discovery client: subscribe to this.
    requests: mpsc::Sender<Dest>,
    wait: Duration,
    max: usize,
    /// Use times are kept as milliseconds since this.
    epoch: Instant,
}

#[derive(Debug)]
struct Entry {
    answered: watch::Sender<bool>,
    usage: Arc<Usage>,
}

/// How a destination is used: guards held now, and when the last one
/// ended (or the entry was made).
#[derive(Debug, Default)]
struct Usage {
    active: AtomicUsize,
    /// Milliseconds since [`OnDemand::epoch`].
    last: AtomicU64,
}

/// A connection or request using a destination; while one is held, the
/// destination is not idle.
#[derive(Debug)]
pub(crate) struct InUse {
    usage: Arc<Usage>,
    epoch: Instant,
}

impl Drop for InUse {
    fn drop(&mut self) {
        // The time first: a sweep that sees no guard sees this release.
        self.usage
            .last
            .fetch_max(millis(self.epoch), Ordering::SeqCst);
        self.usage.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What [`OnDemand::ask`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// Answered already (or just now, within the wait).
    Answered,
    /// No answer within the wait.
    TimedOut,
    /// Past the limit on destinations: not asked.
    Full,
}

impl OnDemand {
    /// `requests` carries each new destination to the client.
    pub(crate) fn new(wait: Duration, max: usize) -> (Self, mpsc::Receiver<Dest>) {
        let (tx, rx) = mpsc::channel(max);
        let on_demand = OnDemand {
            entries: Mutex::new(HashMap::new()),
            requests: tx,
            wait,
            max,
            epoch: Instant::now(),
        };
        (on_demand, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Dest, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to `dest` unless it is already, and waits at most the
    /// wait for remora-cp's first answer to it.
    pub(crate) async fn ask(&self, dest: Dest) -> Asked {
        let mut answered = {
            let mut entries = self.lock();
            match entries.get(&dest).map(|e| &e.answered) {
                Some(tx) if *tx.borrow() => return Asked::Answered,
                Some(tx) => tx.subscribe(),
                None => {
                    if entries.len() >= self.max {
                        return Asked::Full;
                    }
                    // The channel holds `max`, as many as there can be entries.
                    if self.requests.try_send(dest.clone()).is_err() {
                        return Asked::Full;
                    }
                    let (tx, rx) = watch::channel(false);
                    let usage = Usage {
                        active: AtomicUsize::new(0),
                        last: AtomicU64::new(millis(self.epoch)),
                    };
                    entries.insert(
                        dest.clone(),
                        Entry {
                            answered: tx,
                            usage: Arc::new(usage),
                        },
                    );
                    rx
                }
            }
        };
        // An error is a client that is gone: nothing will answer.
        let wait = async { answered.wait_for(|a| *a).await.is_ok() };
        match tokio::time::timeout(self.wait, wait).await {
            Ok(_) => Asked::Answered,
            Err(_) => {
                // One wait per destination: until remora-cp answers (the
                // subscription stays, and is sent again on every new
                // stream), later connections pass through at once.
                self.answered(&dest);
                Asked::TimedOut
            }
        }
    }

    /// remora-cp answered `dest` (a config, not found, or a push the proxy
    /// refused): the waiters go on.
    pub(crate) fn answered(&self, dest: &Dest) {
        if let Some(entry) = self.lock().get(dest) {
            entry.answered.send_replace(true);
        }
    }

    /// Marks `dest` in use while the guard lives; `None` when it is not
    /// held (a known destination the config got another way).
    pub(crate) fn in_use(&self, dest: &Dest) -> Option<InUse> {
        let entries = self.lock();
        let usage = entries.get(dest)?.usage.clone();
        usage.active.fetch_add(1, Ordering::SeqCst);
        Some(InUse {
            usage,
            epoch: self.epoch,
        })
    }

    /// Takes out every answered destination no guard has held for `idle`, in order:
    /// the client unsubscribes them. A later connection asks again.
    pub(crate) fn take_idle(&self, idle: Duration) -> Vec<Dest> {
        let now = millis(self.epoch);
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut entries = self.lock();
        let mut taken: Vec<Dest> = entries
            .iter()
            .filter(|(_, e)| {
                // A pending one has waiters: it ends by an answer or the wait.
                *e.answered.borrow()
                    && e.usage.active.load(Ordering::SeqCst) == 0
                    && now.saturating_sub(e.usage.last.load(Ordering::SeqCst)) >= idle
            })
            .map(|(d, _)| d.clone())
            .collect();
        for dest in &taken {
            entries.remove(dest);
        }
        taken.sort();
        taken
    }

    /// Whether `dest` was asked for.
    pub(crate) fn holds(&self, dest: &Dest) -> bool {
        self.lock().contains_key(dest)
    }

    /// Every destination asked for, in order: what a new stream subscribes
    /// to again.
    pub(crate) fn destinations(&self) -> Vec<Dest> {
        let mut all: Vec<Dest> = self.lock().keys().cloned().collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Dest {
        Dest::Addr(s.parse().unwrap())
    }

    #[test]
    fn host_names_are_checked_before_they_are_sent() {
        let host = |h: &str| Dest::Host(h.to_owned(), 80);
        assert_eq!(
            host_dest("Reviews.Shop:8080", 80),
            Some(host("reviews.shop"))
        );
        assert_eq!(host_dest("reviews.shop.", 80), Some(host("reviews.shop")));
        assert_eq!(host_dest("a", 80), Some(host("a")));
        assert_eq!(
            host_dest(&"a".repeat(253), 80),
            Some(host(&"a".repeat(253)))
        );
        for bad in [
            "",
            ":80",
            "10.96.0.10",
            "10.96.0.10:80",
            "[::1]:80",
            "::1",
            "a b",
            "a_b",
            "é.example",
            "a/b",
            "1234",
        ] {
            assert_eq!(host_dest(bad, 80), None, "{bad:?}");
        }
        assert_eq!(host_dest(&"a".repeat(254), 80), None);
        assert_eq!(addr("10.96.0.10:80").to_string(), "address 10.96.0.10:80");
        assert_eq!(addr("[fd00::1]:80").to_string(), "address [fd00::1]:80");
        assert_eq!(host("a.b").to_string(), "host a.b:80");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_first_connections_share_one_subscription() {
        let (od, mut requests) = OnDemand::new(Duration::from_secs(2), 2);
        let od = std::sync::Arc::new(od);
        let dest = addr("10.96.0.10:80");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (od, dest) = (od.clone(), dest.clone());
                tokio::spawn(async move { od.ask(dest).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(requests.recv().await, Some(dest.clone()));
        assert!(requests.try_recv().is_err(), "asked once");
        od.answered(&dest);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Asked::Answered);
        }
        // Answered: later connections do not wait at all.
        assert_eq!(od.ask(dest.clone()).await, Asked::Answered);
        // No answer: the wait ends it.
        let other = addr("10.96.0.11:80");
        let started = tokio::time::Instant::now();
        assert_eq!(od.ask(other.clone()).await, Asked::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // One wait per destination: the next connection does not wait.
        assert_eq!(od.ask(other.clone()).await, Asked::Answered);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // The limit: a third destination is not asked for.
        assert_eq!(od.ask(addr("10.96.0.12:80")).await, Asked::Full);
        assert!(od.holds(&other) && !od.holds(&addr("10.96.0.12:80")));
        assert_eq!(od.destinations(), vec![dest, other]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_destination_unused_for_the_idle_time_is_taken_out_and_asked_again() {
        let idle = Duration::from_secs(10);
        let (od, mut requests) = OnDemand::new(Duration::from_secs(30), 4);
        let od = std::sync::Arc::new(od);
        let (a, b, pending) = (
            addr("10.96.0.10:80"),
            addr("10.96.0.11:80"),
            addr("10.96.0.12:80"),
        );
        let ask = |dest: &Dest| {
            let (od, dest) = (od.clone(), dest.clone());
            tokio::spawn(async move { od.ask(dest).await })
        };
        for dest in [&a, &b] {
            let asking = ask(dest);
            assert_eq!(requests.recv().await.as_ref(), Some(dest));
            od.answered(dest);
            assert_eq!(asking.await.unwrap(), Asked::Answered);
        }
        // Asked for, and not answered until its wait (30 s) ends.
        let waiting = ask(&pending);
        assert_eq!(requests.recv().await, Some(pending.clone()));

        // `a` has a long connection; `b` had one that ended at 4 s.
        let long = od.in_use(&a).expect("held");
        let short = od.in_use(&b).expect("held");
        assert!(od.in_use(&addr("10.96.0.99:80")).is_none(), "not held");
        tokio::time::advance(Duration::from_secs(4)).await;
        drop(short);
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(od.take_idle(idle), Vec::<Dest>::new());
        // 10 s after its connection ended `b` goes; `a` is in use, and
        // `pending` has a waiter: neither goes.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(od.take_idle(idle), vec![b.clone()]);
        assert!(!od.holds(&b) && od.holds(&a) && od.holds(&pending));
        // At 34 s: the wait ended (30 s), so `pending` is idle since it was
        // asked. `a`'s connection, 34 s old, ends: idle counts from its end.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(waiting.await.unwrap(), Asked::TimedOut);
        drop(long);
        assert_eq!(od.take_idle(idle), vec![pending]);
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(od.take_idle(idle), Vec::<Dest>::new());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(od.take_idle(idle), vec![a]);
        assert_eq!(od.destinations(), Vec::<Dest>::new());

        // The next connection to `b` subscribes again, and waits again.
        let again = ask(&b);
        assert_eq!(requests.recv().await, Some(b.clone()));
        od.answered(&b);
        assert_eq!(again.await.unwrap(), Asked::Answered);
        assert_eq!(od.destinations(), vec![b]);
    }

    #[test]
    fn idle_destinations_are_looked_for_every_tenth_of_the_idle_time() {
        use super::super::client::sweep_period;
        assert_eq!(
            sweep_period(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
    }
}
