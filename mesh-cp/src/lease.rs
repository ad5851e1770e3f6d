//! Leader election through a `coordination.k8s.io/v1` Lease, for the work
//! that must run once among remora-cp replicas (status write-back). Every
//! replica serves proxies whether it leads or not.
//!
//! The protocol is client-go's: the holder renews `spec.renewTime` every
//! renew interval; a candidate takes the Lease over once it has seen the
//! same record (holder, renewTime, resourceVersion) unchanged for the
//! Lease's duration, measured on its own monotonic clock, so clock skew
//! between nodes does not matter. Every write but the first create is a
//! replace carrying the resourceVersion that was read: when two candidates
//! race, the API server takes one and answers the other 409 Conflict. A
//! leader whose renewals keep failing steps down once a lease duration has
//! passed since the start of its last successful renewal, before any
//! candidate may take over. On drain the leader releases the Lease (no
//! holder, 1 s), so another replica takes over at its next try.
//!
//! It owns the Lease only; what a leader does is for the modules that read
//! its `watch::Receiver<bool>`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use prometheus::IntGauge;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant, MissedTickBehavior};

/// The Lease remora-cp replicas elect a leader with, unless `--lease-name`.
pub const DEFAULT_LEASE_NAME: &str = "remora-cp";
/// The range of `--lease-duration`.
pub const LEASE_DURATION_RANGE: (Duration, Duration) =
    (Duration::from_secs(5), Duration::from_secs(300));
/// The shortest `--lease-renew-interval`; the longest is half the lease
/// duration, so a leader gets at least two tries before its lease ends.
pub const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);
/// How long releasing the Lease on drain may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// A wall clock, for the Lease's timestamps (tests fix it).
pub type Clock = fn() -> Timestamp;

/// Who elects and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The Lease's name and namespace (remora-cp's own).
    pub name: String,
    pub namespace: String,
    /// This replica's holder identity: its pod name.
    pub identity: String,
    /// How long a record stands without renewal (`leaseDurationSeconds`,
    /// whole seconds, rounded up).
    pub lease_duration: Duration,
    /// How often the leader renews and a candidate looks.
    pub renew_interval: Duration,
}

/// Settings that cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("--lease-duration {0:?} is outside 5s..=5m")]
    Duration(Duration),
    #[error(
        "--lease-renew-interval {interval:?} must be 1s to half of --lease-duration ({duration:?})"
    )]
    Renew {
        interval: Duration,
        duration: Duration,
    },
    #[error("--pod-name {0:?} is not a holder identity (1 to 253 printable characters)")]
    Identity(String),
}

impl Settings {
    pub fn check(&self) -> Result<(), SettingsError> {
        let (min, max) = LEASE_DURATION_RANGE;
        if self.lease_duration < min || self.lease_duration > max {
            return Err(SettingsError::Duration(self.lease_duration));
        }
        if self.renew_interval < MIN_RENEW_INTERVAL || self.renew_interval * 2 > self.lease_duration
        {
            return Err(SettingsError::Renew {
                interval: self.renew_interval,
                duration: self.lease_duration,
            });
        }
        let id = &self.identity;
        if id.is_empty() || id.len() > 253 || !id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(SettingsError::Identity(id.clone()));
        }
        Ok(())
    }

    fn duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// The record a candidate watches for change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
}

#[derive(Debug)]
struct Observed {
    record: Record,
    since: Instant,
}

/// One replica's elector.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    clock: Clock,
    observed: Option<Observed>,
    /// The Lease as this replica last wrote it while holding it.
    held: Option<Lease>,
}

/// Why one try failed (the loop retries at the next interval).
#[derive(Debug, thiserror::Error)]
enum TryError {
    #[error("the Kubernetes API: {0} (remora-cp's service account needs get, create and update on leases in its namespace)")]
    Api(#[from] kube::Error),
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    pub fn new(client: kube::Client, settings: Settings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            clock: Timestamp::now,
            observed: None,
            held: None,
        }
    }

    /// Uses `clock` for the Lease's timestamps.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn now(&self) -> MicroTime {
        MicroTime((self.clock)())
    }

    /// Runs until `drain` turns true: publishes whether this replica leads
    /// on the returned channel and in `leader` (the `remora_cp_leader`
    /// gauge), then releases the Lease if it holds it.
    pub fn spawn(
        self,
        leader: IntGauge,
        drain: watch::Receiver<bool>,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(self.run(tx, leader, drain));
        (rx, task)
    }

    async fn run(
        mut self,
        tx: watch::Sender<bool>,
        gauge: IntGauge,
        mut drain: watch::Receiver<bool>,
    ) {
        let publish = |leading: bool| {
            gauge.set(i64::from(leading));
            tx.send_if_modified(|was| std::mem::replace(was, leading) != leading);
        };
        let interval = self.settings.renew_interval;
        let duration = self.settings.lease_duration;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // While leading: the instant leadership ends unless renewed.
        let mut deadline: Option<Instant> = None;
        let until = |deadline: Option<Instant>| async move {
            match deadline {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = until(deadline) => {
                    self.step_down(&mut deadline, "the Lease was not renewed within its duration");
                    publish(false);
                    continue;
                }
                _ = drain.wait_for(|d| *d) => break,
            }
            let started = Instant::now();
            let outcome = tokio::select! {
                r = timeout(interval, self.try_acquire_or_renew()) => r,
                _ = until(deadline) => {
                    self.step_down(&mut deadline, "the Lease was not renewed within its duration");
                    publish(false);
                    continue;
                }
                _ = drain.wait_for(|d| *d) => break,
            };
            match outcome {
                Ok(Ok(true)) => {
                    if deadline.is_none() {
                        tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "leading");
                    }
                    deadline = Some(started + duration);
                    publish(true);
                }
                Ok(Ok(false)) => {
                    if deadline.is_some() {
                        self.step_down(&mut deadline, "another replica holds the Lease");
                    }
                    publish(false);
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.settings.name, error = %e, "could not read or write the Lease; retrying")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.settings.name, timeout = ?interval, "the Lease request timed out; retrying")
                }
            }
        }
        if deadline.is_some() {
            // Stop leading first: nothing may write as leader after this.
            publish(false);
            match timeout(RELEASE_TIMEOUT, self.release()).await {
                Ok(Ok(())) => tracing::info!(lease = %self.settings.name, "Lease released"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not release the Lease; it expires on its own")
                }
                Err(_) => tracing::warn!("releasing the Lease timed out; it expires on its own"),
            }
        }
    }

    fn step_down(&mut self, deadline: &mut Option<Instant>, why: &str) {
        tracing::warn!(lease = %self.settings.name, reason = why, "no longer leading");
        *deadline = None;
        self.held = None;
    }

    /// One look at the Lease: creates it when absent, renews it when held,
    /// takes it over when its holder let it lapse. `Ok(true)` when this
    /// replica holds it afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, TryError> {
        let Some(current) = self.api.get_opt(&self.settings.name).await? else {
            return self.create().await;
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = Record {
            holder: holder.clone(),
            renew_time: spec.renew_time.clone(),
            resource_version: current.metadata.resource_version.clone(),
        };
        let now = Instant::now();
        let since = match &self.observed {
            Some(seen) if seen.record == record => seen.since,
            _ => {
                self.observed = Some(Observed {
                    record: record.clone(),
                    since: now,
                });
                now
            }
        };
        let me = &self.settings.identity;
        let mut next = current.clone();
        let next_spec = next.spec.get_or_insert_with(LeaseSpec::default);
        let stamp = self.now();
        if holder.as_deref() == Some(me.as_str()) {
            next_spec.renew_time = Some(stamp);
            next_spec.lease_duration_seconds = Some(self.settings.duration_seconds());
        } else {
            let their_duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.settings.lease_duration, Duration::from_secs);
            if holder.is_some() && now < since + their_duration {
                return Ok(false);
            }
            next_spec.holder_identity = Some(me.clone());
            next_spec.acquire_time = Some(stamp.clone());
            next_spec.renew_time = Some(stamp);
            next_spec.lease_duration_seconds = Some(self.settings.duration_seconds());
            next_spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            tracing::info!(lease = %self.settings.name, previous = ?holder, "taking the Lease over");
        }
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                self.held = Some(written);
                Ok(true)
            }
            Err(e) if is_conflict(&e) => {
                tracing::info!(lease = %self.settings.name, "another replica wrote the Lease first");
                self.held = None;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn create(&mut self) -> Result<bool, TryError> {
        let stamp = self.now();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_duration_seconds: Some(self.settings.duration_seconds()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(written) => {
                self.held = Some(written);
                Ok(true)
            }
            // Another replica created it between our read and our write.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up: no holder and a one-second duration, guarded by
    /// the resourceVersion this replica last wrote.
    async fn release(&mut self) -> Result<(), TryError> {
        let Some(mut lease) = self.held.take() else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(self.now());
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else holds it already: nothing to give up.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
