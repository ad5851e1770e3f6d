//! Graceful drain. One signal stops every accept loop; the connections that
//! are open may finish until a deadline, after which they are closed by force.
//!
//! Accept loops wait on [`Drain::started`]. Connection tasks are spawned with
//! [`Drain::spawn`] so the drain can wait for them, and they wait on
//! [`Drain::forced`] to give up at the deadline. Connections that carry no
//! bytes end earlier, after [`Drain::tcp_idle_timeout`]: the drain hands that
//! setting to the tunnels it spawns, which have no other way to it.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A cheaply clonable handle on the process's drain state.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    started: CancellationToken,
    forced: CancellationToken,
    tracker: TaskTracker,
    tcp_idle_timeout: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            started: CancellationToken::default(),
            forced: CancellationToken::default(),
            tracker: TaskTracker::default(),
            tcp_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainOutcome {
    /// Every connection finished before the deadline.
    Clean,
    /// The deadline passed with this many connections still open; they were
    /// closed by force.
    Forced(usize),
}

impl Drain {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Sets how long an opaque connection or tunnel may carry nothing.
    pub(crate) fn with_tcp_idle_timeout(mut self, timeout: Duration) -> Self {
        self.tcp_idle_timeout = timeout;
        self
    }

    /// How long an opaque connection or tunnel may carry nothing before it
    /// is closed (`--tcp-idle-timeout`).
    pub(crate) fn tcp_idle_timeout(&self) -> Duration {
        self.tcp_idle_timeout
    }

    /// Starts draining. Calling it again does nothing.
    pub(crate) fn start(&self) {
        self.started.cancel();
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.started.is_cancelled()
    }

    /// Resolves once draining has started.
    pub(crate) fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        self.started.clone().cancelled_owned()
    }

    /// Resolves once the drain deadline has passed.
    pub(crate) fn forced(&self) -> impl Future<Output = ()> + Send + 'static {
        self.forced.clone().cancelled_owned()
    }

    /// Spawns a connection task that the drain waits for.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Waits for tracked tasks to finish, forcing them closed after
    /// `deadline`. Call after [`Drain::start`].
    pub(crate) async fn wait(&self, deadline: Duration) -> DrainOutcome {
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return DrainOutcome::Clean;
        }
        let open = self.tracker.len();
        self.forced.cancel();
        // Forced tasks end at their next poll; don't hang if one misbehaves.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        DrainOutcome::Forced(open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn open_tasks_finish_before_the_deadline() {
        let drain = Drain::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        drain.spawn(async move {
            let _ = rx.await;
        });
        drain.start();
        assert!(drain.is_draining());
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.wait(Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(()).unwrap();
        assert_eq!(waiter.await.unwrap(), DrainOutcome::Clean);
    }

    #[tokio::test(start_paused = true)]
    async fn stragglers_are_forced_at_the_deadline() {
        let drain = Drain::new();
        let forced = drain.forced();
        drain.spawn(async move {
            forced.await;
        });
        drain.start();
        assert_eq!(
            drain.wait(Duration::from_secs(5)).await,
            DrainOutcome::Forced(1)
        );
    }
}
