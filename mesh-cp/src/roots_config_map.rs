//! The trust roots ConfigMap: while this replica leads, every Namespace
//! of the Kubernetes source's store gets a ConfigMap `--ca-roots-config-map`
//! (default `remora-ca-roots`, the name the injector mounts) whose
//! `data["roots.pem"]` is the CA's whole trust bundle, so each injected
//! proxy can check remora-cp's serving certificate, and a rotation's new
//! root reaches every proxy with step 1.
//!
//! What is there is read with one list/watch of ConfigMaps of that name in
//! all namespaces (field selector `metadata.name=<name>`), kept as a digest
//! per namespace ([`Cache`]). [`plan`] (pure) compares it with the store's
//! namespaces and the bundle; [`Writer`] creates what is missing (POST),
//! merge-patches what differs (someone else's edit is put back), paced,
//! with back-off on errors. A 409 on create re-reads the ConfigMap.
//!
//! It owns only that ConfigMap's `roots.pem` key and its
//! `app.kubernetes.io/managed-by` label; other keys and labels are left as
//! they are. It deletes nothing: a deleted namespace takes its ConfigMap
//! with it. Namespaces being deleted, and those only in the file layer
//! (no resourceVersion), are skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use prometheus::IntCounterVec;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

use crate::source::Snapshot;
use crate::status::{drained, Pacer, BACKOFF_MAX, BACKOFF_MIN, FIELD_MANAGER};

/// The ConfigMap's name unless `--ca-roots-config-map`: the injector's
/// default (`remora_injector::settings::DEFAULT_CA_ROOTS_CONFIG_MAP`).
pub const DEFAULT_NAME: &str = "remora-ca-roots";
/// The key the injector projects into each proxy as its `--ca-roots`.
pub const ROOTS_KEY: &str = "roots.pem";
/// The label that says who writes the ConfigMap.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "remora-cp");

/// The trust bundle as one PEM text: every root, the signing root first,
/// each ending in a newline.
pub fn bundle_pem(roots: &[String]) -> String {
    roots
        .iter()
        .map(|pem| format!("{}\n", pem.trim_end()))
        .collect()
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// What a namespace's ConfigMap holds, as far as this module cares: a
/// digest of its `roots.pem` (a hostile 1 MiB value costs 32 bytes here)
/// and whether it carries our label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub roots: Option<[u8; 32]>,
    pub managed: bool,
}

impl Live {
    pub fn of(config_map: &ConfigMap) -> Self {
        let (key, value) = MANAGED_BY;
        Self {
            roots: config_map
                .data
                .as_ref()
                .and_then(|d| d.get(ROOTS_KEY))
                .map(|pem| digest(pem)),
            managed: config_map
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .is_some_and(|v| v == value),
        }
    }
}

/// The ConfigMaps of our name, by namespace, as the watch (and our own
/// writes) last showed them.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    /// The first list is in.
    pub synced: bool,
    /// Watch events applied; the writer looks again when it moves.
    pub events: u64,
    pub by_namespace: BTreeMap<String, Live>,
}

/// One write a namespace needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// No ConfigMap of our name there: POST one.
    Create { namespace: String },
    /// One with other roots, or without our label: merge-patch it.
    Patch { namespace: String },
}

impl Write {
    fn namespace(&self) -> &str {
        match self {
            Write::Create { namespace } | Write::Patch { namespace } => namespace,
        }
    }
}

/// The writes that make every live namespace of `namespaces` hold
/// `roots`, in namespace order. Pure.
pub fn plan(namespaces: &BTreeMap<String, Namespace>, cache: &Cache, roots: &str) -> Vec<Write> {
    let want = digest(roots);
    namespaces
        .iter()
        .filter(|(_, ns)| {
            ns.metadata.deletion_timestamp.is_none() && ns.metadata.resource_version.is_some()
        })
        .filter_map(|(name, _)| {
            let namespace = name.clone();
            match cache.by_namespace.get(name) {
                None => Some(Write::Create { namespace }),
                Some(live) if live.roots == Some(want) && live.managed => None,
                Some(_) => Some(Write::Patch { namespace }),
            }
        })
        .collect()
}

/// The ConfigMap a create sends.
pub fn config_map(name: &str, namespace: &str, roots: &str) -> ConfigMap {
    let (key, value) = MANAGED_BY;
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(ROOTS_KEY.to_owned(), roots.to_owned())])),
        ..ConfigMap::default()
    }
}

/// The merge patch that puts the roots and the label back, leaving other
/// keys and labels alone.
pub fn patch(roots: &str) -> Value {
    let (key, value) = MANAGED_BY;
    json!({"metadata": {"labels": {key: value}}, "data": {ROOTS_KEY: roots}})
}

/// Settings of the ConfigMap writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The ConfigMap's name (`--ca-roots-config-map`).
    pub name: String,
    /// Writes per second at most (`--ca-roots-writes-per-second`, 1 to 1000).
    pub writes_per_second: u32,
    /// How long to wait after a change for the rest of a burst.
    pub debounce: Duration,
    /// One request's bound.
    pub request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            writes_per_second: 20,
            debounce: Duration::from_millis(200),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// How one write ended, as counted in
/// `remora_cp_roots_config_map_writes_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Patched,
    /// A create found one there already (409): it was read again.
    Conflict,
    /// The namespace (create) or the ConfigMap (patch) was gone.
    NotFound,
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Patched => "patched",
            Outcome::Conflict => "conflict",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
        }
    }
}

/// Keeps the ConfigMap in every namespace while this replica leads.
pub struct Writer {
    client: kube::Client,
    settings: Settings,
    /// `remora_cp_roots_config_map_writes_total{result}`.
    writes: IntCounterVec,
    /// `remora_cp_kubernetes_watch_errors_total{kind}` (kind `ConfigMap`).
    watch_errors: IntCounterVec,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn namespace_of(config_map: &ConfigMap) -> Option<String> {
    config_map.metadata.namespace.clone()
}

/// Follows the ConfigMaps named `name` in every namespace into `cache`,
/// relisting with kube's back-off after errors, until the task is aborted.
async fn watch_config_maps(
    client: kube::Client,
    name: String,
    cache: watch::Sender<Cache>,
    errors: IntCounterVec,
) {
    let api: Api<ConfigMap> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let ours = |cm: &ConfigMap| cm.metadata.name.as_deref() == Some(name.as_str());
    let mut listed: Option<BTreeMap<String, Live>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listed = Some(BTreeMap::new()),
            Ok(Event::InitApply(cm)) => {
                if let (true, Some(ns)) = (ours(&cm), namespace_of(&cm)) {
                    listed
                        .get_or_insert_with(BTreeMap::new)
                        .insert(ns, Live::of(&cm));
                }
            }
            Ok(Event::InitDone) => {
                let by_namespace = listed.take().unwrap_or_default();
                tracing::info!(config_map = %name, namespaces = by_namespace.len(), "trust roots ConfigMaps listed");
                cache.send_modify(|c| {
                    c.by_namespace = by_namespace;
                    c.synced = true;
                    c.events += 1;
                });
            }
            Ok(Event::Apply(cm)) => {
                if let (true, Some(ns)) = (ours(&cm), namespace_of(&cm)) {
                    cache.send_modify(|c| {
                        c.by_namespace.insert(ns, Live::of(&cm));
                        c.events += 1;
                    });
                }
            }
            Ok(Event::Delete(cm)) => {
                if let Some(ns) = namespace_of(&cm) {
                    cache.send_modify(|c| {
                        c.by_namespace.remove(&ns);
                        c.events += 1;
                    });
                }
            }
            Err(e) => {
                errors.with_label_values(&["ConfigMap"]).inc();
                tracing::warn!(error = %e, "watching the trust roots ConfigMaps failed; retrying with back-off (remora-cp's service account needs list and watch on configmaps)");
            }
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Writer {
    pub fn new(
        client: kube::Client,
        settings: Settings,
        writes: IntCounterVec,
        watch_errors: IntCounterVec,
    ) -> Self {
        Self {
            client,
            settings,
            writes,
            watch_errors,
        }
    }

    fn api(&self, namespace: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Reads the ConfigMap again after a 409 into `cache`.
    async fn reread(&self, namespace: &str, cache: &watch::Sender<Cache>) -> Outcome {
        let got = timeout(
            self.settings.request_timeout,
            self.api(namespace).get_opt(&self.settings.name),
        )
        .await;
        match got {
            Ok(Ok(found)) => {
                cache.send_modify(|c| match found {
                    Some(cm) => {
                        c.by_namespace.insert(namespace.to_owned(), Live::of(&cm));
                    }
                    None => {
                        c.by_namespace.remove(namespace);
                    }
                });
                Outcome::Conflict
            }
            Ok(Err(e)) => {
                tracing::warn!(%namespace, error = %e, "reading the trust roots ConfigMap after a conflict failed; retrying");
                Outcome::Error
            }
            Err(_) => Outcome::Error,
        }
    }

    /// Sends one write; what it made goes into `cache` at once, so the
    /// next plan does not wait for the watch to show it.
    async fn write(&self, write: &Write, roots: &str, cache: &watch::Sender<Cache>) -> Outcome {
        let namespace = write.namespace();
        let name = &self.settings.name;
        let api = self.api(namespace);
        let sent = match write {
            Write::Create { .. } => {
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                let body = config_map(name, namespace, roots);
                timeout(self.settings.request_timeout, api.create(&params, &body)).await
            }
            Write::Patch { .. } => {
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                let body = patch(roots);
                timeout(
                    self.settings.request_timeout,
                    api.patch(name, &params, &Patch::Merge(&body)),
                )
                .await
            }
        };
        match sent {
            Ok(Ok(cm)) => {
                cache.send_modify(|c| {
                    c.by_namespace.insert(namespace.to_owned(), Live::of(&cm));
                });
                match write {
                    Write::Create { .. } => Outcome::Created,
                    Write::Patch { .. } => Outcome::Patched,
                }
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                tracing::debug!(%namespace, "the trust roots ConfigMap changed under us; reading it again");
                self.reread(namespace, cache).await
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                tracing::debug!(%namespace, "namespace or ConfigMap gone; looking again");
                if let Write::Patch { .. } = write {
                    cache.send_modify(|c| {
                        c.by_namespace.remove(namespace);
                    });
                }
                Outcome::NotFound
            }
            Ok(Err(e)) => {
                tracing::warn!(%namespace, config_map = %name, error = %e, "writing the trust roots ConfigMap failed; retrying (remora-cp's service account needs create and patch on configmaps)");
                Outcome::Error
            }
            Err(_) => {
                tracing::warn!(%namespace, config_map = %name, "writing the trust roots ConfigMap timed out; retrying");
                Outcome::Error
            }
        }
    }

    /// Runs until `drain` turns true or an input closes. `snapshots` are
    /// the publisher's (their store's namespaces), `roots` the bundle PEM
    /// ([`bundle_pem`]), `leader` the Lease's.
    pub async fn run(
        self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut roots: watch::Receiver<String>,
        mut leader: watch::Receiver<bool>,
        mut drain: watch::Receiver<bool>,
    ) {
        let cache = watch::channel(Cache::default()).0;
        let mut seen = cache.subscribe();
        // Every replica keeps the cache warm, so a new leader diffs at once.
        let _watching = AbortOnDrop(tokio::spawn(watch_config_maps(
            self.client.clone(),
            self.settings.name.clone(),
            cache.clone(),
            self.watch_errors.clone(),
        )));
        let mut pacer = Pacer::new(self.settings.writes_per_second);
        'follow: loop {
            tokio::select! {
                closed = async { leader.wait_for(|l| *l).await.is_err() } => if closed { return },
                _ = drained(&mut drain) => return,
            }
            tokio::select! {
                r = seen.wait_for(|c| c.synced) => if r.is_err() { return },
                closed = async { leader.wait_for(|l| !*l).await.is_err() } => {
                    if closed { return }
                    continue 'follow;
                }
                _ = drained(&mut drain) => return,
            }
            let mut backoff = BACKOFF_MIN;
            loop {
                let store = snapshots.borrow_and_update().store.clone();
                let pem = roots.borrow_and_update().clone();
                let (writes, events) = {
                    let c = seen.borrow_and_update();
                    (plan(&store.namespaces, &c, &pem), c.events)
                };
                let (mut failed, mut again) = (false, false);
                for write in &writes {
                    if !*leader.borrow() || *drain.borrow() {
                        continue 'follow;
                    }
                    let newer = snapshots.has_changed().unwrap_or(false)
                        || roots.has_changed().unwrap_or(false);
                    if newer {
                        again = true;
                        break;
                    }
                    pacer.wait().await;
                    if !*leader.borrow() {
                        continue 'follow;
                    }
                    let outcome = self.write(write, &pem, &cache).await;
                    self.writes.with_label_values(&[outcome.label()]).inc();
                    match outcome {
                        Outcome::Error => failed = true,
                        // Read again (409), or the ConfigMap gone (a
                        // patch's 404): plan again now. A create's 404 is
                        // a namespace gone: the next store drops it.
                        Outcome::Conflict => again = true,
                        Outcome::NotFound => again |= matches!(write, Write::Patch { .. }),
                        Outcome::Created | Outcome::Patched => {}
                    }
                }
                if again {
                    sleep(self.settings.debounce).await;
                    continue;
                }
                let retry = async {
                    if failed {
                        sleep(backoff).await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! {
                    r = snapshots.changed() => if r.is_err() { return },
                    r = roots.changed() => if r.is_err() { return },
                    r = seen.wait_for(|c| c.events != events) => if r.is_err() { return },
                    _ = retry => {
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    closed = async { leader.wait_for(|l| !*l).await.is_err() } => {
                        if closed { return }
                        continue 'follow;
                    }
                    _ = drained(&mut drain) => return,
                }
                sleep(self.settings.debounce).await;
                if !failed {
                    backoff = BACKOFF_MIN;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
