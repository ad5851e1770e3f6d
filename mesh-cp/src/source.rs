//! The publisher every source feeds: it keeps one object [`Store`] per
//! source layer, applies the changes sources send, coalesces bursts,
//! translates the merged store and publishes the result.
//!
//! This module owns layering, debouncing, version numbers, and reporting
//! objects that do not parse (a log line and
//! `remora_cp_objects_invalid_total{kind}`) and translation problems (a log
//! line when one first appears, and `remora_cp_translation_problems`). How
//! objects are read is the sources' (`source_dir`, `source_kube`); what
//! they mean is translation's.
//!
//! Two channels come out:
//! - the [`MeshView`] discovery serves, published with the next version
//!   only when it changed;
//! - a [`Snapshot`] (merged store, translation problems, view version)
//!   after every translation, for status write-back.
//!
//! **Layering.** Each source writes its own layer; layers merge by kind and
//! key, a later layer winning: [`Layer::Kubernetes`], then [`Layer::Files`]
//! (the `--source-dir` directory, where the Admin API persists its
//! objects). An object in the directory thus overrides the cluster's object
//! of the same kind, namespace and name, whole (no field merge); removing
//! it from the directory uncovers the cluster's again.
//!
//! Nothing is published until every layer has delivered its initial state
//! ([`Change::Synced`]); [`Outputs::ready`] turns true with that first view.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec};
use tokio::sync::{mpsc, watch};

use crate::translate::{translate, Kind, Options, Problem, Store};
use crate::view::MeshView;

/// How long object changes settle before a translation: a burst (a
/// rollout's endpoint changes, a relist of every kind) becomes one.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Changes in flight from all sources; a source sending faster than the
/// publisher applies waits.
const QUEUE: usize = 1024;

/// A source's layer; a later one wins on the same kind and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    Kubernetes,
    Files,
}

impl Layer {
    /// The `source` label of the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Kubernetes => "kubernetes",
            Layer::Files => "files",
        }
    }
}

/// A change of one layer's objects.
#[derive(Debug)]
pub enum Change {
    /// One object added or modified, as JSON with apiVersion and kind.
    Apply(serde_json::Value),
    /// One object deleted.
    Delete {
        api_version: String,
        kind: String,
        namespace: Option<String>,
        name: String,
    },
    /// Every object of one kind, replacing what the layer held of it.
    Relist {
        kind: Kind,
        objects: Vec<serde_json::Value>,
    },
    /// The layer's whole store, already read and settled (the file source).
    Replace(Box<Store>),
    /// The layer has delivered its initial state.
    Synced,
}

impl Change {
    /// Object changes come in bursts and wait [`DEBOUNCE`] for the rest;
    /// a whole store was settled by its source.
    fn settles(&self) -> bool {
        matches!(
            self,
            Change::Apply(_) | Change::Delete { .. } | Change::Relist { .. }
        )
    }
}

/// What a source sends its changes with.
#[derive(Debug, Clone)]
pub struct SourceSender {
    layer: Layer,
    tx: mpsc::Sender<(Layer, Change)>,
}

impl SourceSender {
    /// Sends one change; false once the publisher is gone.
    pub async fn send(&self, change: Change) -> bool {
        self.tx.send((self.layer, change)).await.is_ok()
    }

    pub fn layer(&self) -> Layer {
        self.layer
    }
}

/// The store and problems of one translation, for status write-back.
/// `store` is every layer merged; a status writer should write only the
/// objects that are in the cluster (an object of the file layer has no
/// status to write).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The version of the view this translation published (or kept).
    pub version: u64,
    pub store: Arc<Store>,
    pub problems: Arc<Vec<Problem>>,
}

/// What the publisher publishes.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub views: watch::Receiver<MeshView>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// True once every layer delivered its initial state and its view is out.
    pub ready: watch::Receiver<bool>,
}

/// The metrics the publisher keeps.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    /// `remora_cp_objects_invalid_total{kind}`.
    pub invalid: IntCounterVec,
    /// `remora_cp_source_objects{source, kind}`.
    pub objects: IntGaugeVec,
    /// `remora_cp_translation_problems{kind, reason}`.
    pub problems: IntGaugeVec,
}

#[derive(Debug, Default)]
struct LayerState {
    store: Arc<Store>,
    synced: bool,
}

/// Applies changes and publishes; run it with [`Publisher::run`].
#[derive(Debug)]
pub struct Publisher {
    layers: BTreeMap<Layer, LayerState>,
    tx: mpsc::Sender<(Layer, Change)>,
    rx: mpsc::Receiver<(Layer, Change)>,
    options: Options,
    metrics: SourceMetrics,
    debounce: Duration,
    views: watch::Sender<MeshView>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    ready: watch::Sender<bool>,
    /// Problems already logged, so each is logged once.
    logged: BTreeSet<(&'static str, String, &'static str, &'static str)>,
}

impl Publisher {
    pub fn new(options: Options, metrics: SourceMetrics, debounce: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            layers: BTreeMap::new(),
            tx,
            rx,
            options,
            metrics,
            debounce,
            views: watch::channel(MeshView::default()).0,
            snapshots: watch::channel(Arc::new(Snapshot::default())).0,
            ready: watch::channel(false).0,
            logged: BTreeSet::new(),
        }
    }

    /// Adds a layer; its source sends with the returned sender.
    pub fn layer(&mut self, layer: Layer) -> SourceSender {
        self.layers.entry(layer).or_default();
        SourceSender {
            layer,
            tx: self.tx.clone(),
        }
    }

    pub fn outputs(&self) -> Outputs {
        Outputs {
            views: self.views.subscribe(),
            snapshots: self.snapshots.subscribe(),
            ready: self.ready.subscribe(),
        }
    }

    /// Applies changes until every source is gone, translating after each
    /// burst.
    pub async fn run(mut self) {
        // Only the sources' senders keep the queue open.
        let (closed, _) = mpsc::channel(1);
        self.tx = closed;
        while let Some((layer, change)) = self.rx.recv().await {
            let settle = change.settles();
            self.apply(layer, change);
            if settle {
                let deadline = tokio::time::Instant::now() + self.debounce;
                while let Ok(Some((layer, change))) =
                    tokio::time::timeout_at(deadline, self.rx.recv()).await
                {
                    self.apply(layer, change);
                }
            }
            while let Ok((layer, change)) = self.rx.try_recv() {
                self.apply(layer, change);
            }
            self.flush();
        }
    }

    fn apply(&mut self, layer: Layer, change: Change) {
        let state = self.layers.entry(layer).or_default();
        let skipped = |kind: &str, object: &str, reason: String| {
            tracing::warn!(source = layer.name(), kind, object, %reason, "object skipped");
            self.metrics.invalid.with_label_values(&[kind]).inc();
        };
        match change {
            Change::Apply(value) => {
                let kind = value
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or("unknown")
                    .to_owned();
                let object = object_name(&value);
                if let Err(e) = Arc::make_mut(&mut state.store).insert(value) {
                    skipped(&kind, &object, e.to_string());
                }
            }
            Change::Delete {
                api_version,
                kind,
                namespace,
                name,
            } => {
                let store = Arc::make_mut(&mut state.store);
                if let Err(e) = store.remove(&api_version, &kind, namespace.as_deref(), &name) {
                    skipped(&kind, &name, e.to_string());
                }
            }
            Change::Relist { kind, objects } => {
                let errors = Arc::make_mut(&mut state.store).replace_kind(kind, objects);
                for (kind, e) in errors {
                    skipped(&kind, "", e.to_string());
                }
            }
            Change::Replace(store) => state.store = Arc::new(*store),
            Change::Synced => state.synced = true,
        }
    }

    /// Translates the merged layers and publishes, once all are synced.
    fn flush(&mut self) {
        if !self.layers.values().all(|l| l.synced) {
            return;
        }
        for (layer, state) in &self.layers {
            for kind in Kind::ALL {
                self.metrics
                    .objects
                    .with_label_values(&[layer.name(), kind.name()])
                    .set(state.store.len(kind) as i64);
            }
        }
        let store = self.merged();
        let translation = translate(&store, &self.options);
        self.report(&translation.problems);
        let mut view = translation.view;
        let next = self.views.borrow().version + 1;
        // The first view goes out even when empty: it is version 1.
        let first = !*self.ready.borrow();
        self.views.send_if_modified(|current| {
            view.version = current.version;
            if *current == view && !first {
                return false;
            }
            view.version = next;
            *current = std::mem::take(&mut view);
            true
        });
        let version = self.views.borrow().version;
        tracing::info!(
            objects = Kind::ALL.iter().map(|k| store.len(*k)).sum::<usize>(),
            problems = translation.problems.len(),
            version,
            "mesh translated"
        );
        self.snapshots.send_replace(Arc::new(Snapshot {
            version,
            store,
            problems: Arc::new(translation.problems),
        }));
        self.ready
            .send_if_modified(|ready| !std::mem::replace(ready, true));
    }

    /// Every layer over the one before it; one layer is shared as it is.
    fn merged(&self) -> Arc<Store> {
        let mut layers = self.layers.values().filter(|l| !l.store.is_empty());
        let Some(first) = layers.next() else {
            return Arc::new(Store::default());
        };
        let mut merged = first.store.clone();
        for layer in layers {
            Arc::make_mut(&mut merged).overlay(&layer.store);
        }
        merged
    }

    /// Logs each problem once, when it first appears, and sets the gauge.
    fn report(&mut self, problems: &[Problem]) {
        let mut now = BTreeSet::new();
        let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for p in problems {
            let id = (p.kind, p.key.clone(), p.condition, p.reason);
            if !self.logged.contains(&id) {
                tracing::warn!(kind = p.kind, object = %p.key, condition = p.condition, reason = p.reason, message = %p.message, "translation problem");
            }
            now.insert(id);
            *counts.entry((p.kind, p.reason)).or_default() += 1;
        }
        for (kind, _, _, reason) in &self.logged {
            if !counts.contains_key(&(*kind, *reason)) {
                self.metrics
                    .problems
                    .with_label_values(&[kind, reason])
                    .set(0);
            }
        }
        for ((kind, reason), n) in counts {
            self.metrics
                .problems
                .with_label_values(&[kind, reason])
                .set(n);
        }
        self.logged = now;
    }
}

/// `<namespace>/<name>` of an object, for logs.
fn object_name(value: &serde_json::Value) -> String {
    let text = |p: &str| value.pointer(p).and_then(|v| v.as_str()).unwrap_or("");
    match text("/metadata/namespace") {
        "" => text("/metadata/name").to_owned(),
        ns => format!("{ns}/{}", text("/metadata/name")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn metrics() -> SourceMetrics {
        let m = crate::metrics::Metrics::new().unwrap();
        SourceMetrics {
            invalid: m.objects_invalid,
            objects: m.source_objects,
            problems: m.translation_problems,
        }
    }

    fn service(ns: &str, name: &str, ip: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIPs": [ip], "ports": [{"port": 80}]},
        })
    }

    fn store(objects: &[serde_json::Value]) -> Store {
        let mut s = Store::default();
        for o in objects {
            s.insert(o.clone()).unwrap();
        }
        s
    }

    async fn next(rx: &mut watch::Receiver<MeshView>) -> MeshView {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        rx.borrow_and_update().clone()
    }

    fn addresses(view: &MeshView) -> Vec<(String, String)> {
        view.by_addr
            .iter()
            .map(|(a, k)| (a.to_string(), k.clone()))
            .collect()
    }

    #[tokio::test]
    async fn nothing_is_published_until_every_layer_synced_and_later_layers_win() {
        let m = metrics();
        let mut p = Publisher::new(Options::default(), m.clone(), Duration::from_millis(10));
        let kube = p.layer(Layer::Kubernetes);
        let files = p.layer(Layer::Files);
        let mut out = p.outputs();
        tokio::spawn(p.run());
        files
            .send(Change::Replace(Box::new(store(&[service(
                "shop",
                "web",
                "10.96.0.2",
            )]))))
            .await;
        files.send(Change::Synced).await;
        kube.send(Change::Relist {
            kind: Kind::Service,
            objects: vec![
                service("shop", "web", "10.96.0.1"),
                service("shop", "api", "10.96.0.3"),
            ],
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(out.views.borrow().version, 0);
        assert!(!*out.ready.borrow());
        kube.send(Change::Synced).await;
        let view = next(&mut out.views).await;
        assert_eq!(view.version, 1);
        assert_eq!(
            addresses(&view),
            [
                ("10.96.0.2:80".to_owned(), "shop/web".to_owned()),
                ("10.96.0.3:80".to_owned(), "shop/api".to_owned())
            ]
        );
        assert!(*out.ready.borrow());
        let snapshot = out.snapshots.borrow().clone();
        assert_eq!(snapshot.version, 1);
        assert_eq!(snapshot.store.services.len(), 2);
        assert_eq!(
            m.objects
                .with_label_values(&["kubernetes", "Service"])
                .get(),
            2
        );
        assert_eq!(m.objects.with_label_values(&["files", "Service"]).get(), 1);

        // The file layer's object goes: the cluster's is uncovered.
        files.send(Change::Replace(Box::default())).await;
        let view = next(&mut out.views).await;
        assert_eq!(view.version, 2);
        assert_eq!(
            addresses(&view),
            [
                ("10.96.0.1:80".to_owned(), "shop/web".to_owned()),
                ("10.96.0.3:80".to_owned(), "shop/api".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_burst_is_one_version_and_no_change_is_no_version() {
        let m = metrics();
        let mut p = Publisher::new(Options::default(), m.clone(), Duration::from_millis(50));
        let kube = p.layer(Layer::Kubernetes);
        let mut out = p.outputs();
        tokio::spawn(p.run());
        kube.send(Change::Synced).await;
        assert_eq!(next(&mut out.views).await.version, 1);
        for i in 1..=5 {
            kube.send(Change::Apply(service(
                "shop",
                &format!("s{i}"),
                &format!("10.96.0.{i}"),
            )))
            .await;
        }
        kube.send(Change::Delete {
            api_version: "v1".into(),
            kind: "Service".into(),
            namespace: Some("shop".into()),
            name: "s5".into(),
        })
        .await;
        let mut bad = service("shop", "bad", "10.96.0.9");
        bad["spec"]["ports"] = "many".into();
        kube.send(Change::Apply(bad)).await;
        let view = next(&mut out.views).await;
        assert_eq!(view.version, 2);
        assert_eq!(
            view.destinations.keys().collect::<Vec<_>>(),
            ["shop/s1", "shop/s2", "shop/s3", "shop/s4"]
        );
        assert_eq!(m.invalid.with_label_values(&["Service"]).get(), 1);
        // The same objects again: translated, not published.
        kube.send(Change::Apply(service("shop", "s1", "10.96.0.1")))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!out.views.has_changed().unwrap());
        assert_eq!(out.views.borrow().version, 2);
    }

    #[tokio::test]
    async fn problems_are_counted_by_kind_and_reason_and_cleared() {
        let m = metrics();
        let mut p = Publisher::new(Options::default(), m.clone(), Duration::from_millis(10));
        let kube = p.layer(Layer::Kubernetes);
        let mut out = p.outputs();
        tokio::spawn(p.run());
        let route = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}]},
        });
        kube.send(Change::Relist {
            kind: Kind::HttpRoute,
            objects: vec![route],
        })
        .await;
        kube.send(Change::Synced).await;
        next(&mut out.views).await;
        let gauge = || {
            m.problems
                .with_label_values(&["HTTPRoute", "NoMatchingParent"])
                .get()
        };
        assert_eq!(gauge(), 1);
        assert_eq!(out.snapshots.borrow().problems.len(), 1);
        kube.send(Change::Apply(service("shop", "web", "10.96.0.1")))
            .await;
        next(&mut out.views).await;
        assert_eq!(gauge(), 0);
        assert_eq!(out.snapshots.borrow().problems.len(), 0);
    }
}
