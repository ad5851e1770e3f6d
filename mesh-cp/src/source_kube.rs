//! The Kubernetes source (`--kubernetes`): one kube-rs watcher per kind the
//! store holds, each restarted with back-off, feeding the publisher's
//! Kubernetes layer (`source`).
//!
//! This module owns what is watched (and with which selector), trimming
//! objects before they are stored, and the watch metrics. Objects are read
//! as `DynamicObject`s, so one object that Remora's types cannot read is
//! reported by the publisher alone instead of failing its whole list.
//! Translation and layering are the publisher's.
//!
//! A watcher's initial list (`Init`, `InitApply`…, `InitDone`) becomes one
//! [`Change::Relist`] of its kind, so the store never holds half a list;
//! kube's watcher relists by itself after a 410 Gone or a failed list. The
//! layer is synced (and `/ready` can turn ready) once every kind has been
//! listed once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use prometheus::IntCounterVec;

use crate::crds;
use crate::source::{Change, SourceSender};
use crate::translate::Kind;

/// Only Secrets with this label are watched: the ones Consumers take their
/// credentials from. Watching every Secret would hold the whole cluster's
/// secrets in memory (see docs/control-plane.md).
pub const SECRET_SELECTOR: &str = "remora.dev/credentials=true";

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The watch metrics, by kind.
#[derive(Debug, Clone)]
pub struct WatchMetrics {
    /// `remora_cp_kubernetes_watch_errors_total{kind}`.
    pub errors: IntCounterVec,
    /// `remora_cp_kubernetes_relists_total{kind}`.
    pub relists: IntCounterVec,
}

/// What the API serves a kind as.
pub fn api_resource(kind: Kind) -> ApiResource {
    let gateway = |kind: &str, plural: &str| ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    match kind {
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
        Kind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
        Kind::Secret => ApiResource::erase::<Secret>(&()),
        Kind::HttpRoute => gateway("HTTPRoute", "httproutes"),
        Kind::GrpcRoute => gateway("GRPCRoute", "grpcroutes"),
        Kind::Consumer => ApiResource::erase::<crds::Consumer>(&()),
        Kind::AuthorizationPolicy => ApiResource::erase::<crds::AuthorizationPolicy>(&()),
        Kind::MeshTlsPolicy => ApiResource::erase::<crds::MeshTLSPolicy>(&()),
        Kind::TrafficPolicy => ApiResource::erase::<crds::TrafficPolicy>(&()),
        Kind::PluginPolicy => ApiResource::erase::<crds::PluginPolicy>(&()),
    }
}

/// The list and watch parameters of a kind: only labelled Secrets.
fn watch_config(kind: Kind) -> watcher::Config {
    match kind {
        Kind::Secret => watcher::Config::default().labels(SECRET_SELECTOR),
        _ => watcher::Config::default(),
    }
}

/// Whether translation or status write-back reads a kind's `status`: the
/// routes' and policies' own conditions are what status write-back
/// compares with.
fn keeps_status(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::Consumer
            | Kind::AuthorizationPolicy
            | Kind::MeshTlsPolicy
            | Kind::TrafficPolicy
            | Kind::PluginPolicy
    )
}

/// The object as the store takes it (JSON with apiVersion and kind), with
/// what nothing reads dropped: managed fields, owner references, the
/// last-applied annotation (for a Secret, a plaintext copy of its data),
/// `status` where it is not read, and all of a Pod's spec but its service
/// account. A ServiceAccount keeps its metadata only.
pub fn trim(kind: Kind, resource: &ApiResource, object: DynamicObject) -> serde_json::Value {
    let DynamicObject {
        mut metadata,
        mut data,
        ..
    } = object;
    metadata.managed_fields = None;
    metadata.owner_references = None;
    if let Some(annotations) = &mut metadata.annotations {
        if kind == Kind::Secret {
            annotations.clear();
        }
        annotations.remove(LAST_APPLIED);
    }
    if !data.is_object() {
        data = serde_json::Value::Object(Default::default());
    }
    if let Some(fields) = data.as_object_mut() {
        if !keeps_status(kind) {
            fields.remove("status");
        }
        match kind {
            Kind::Pod => {
                let account = fields
                    .get("spec")
                    .and_then(|s| s.get("serviceAccountName"))
                    .cloned();
                let mut spec = serde_json::Map::new();
                spec.insert("containers".into(), serde_json::Value::Array(Vec::new()));
                if let Some(account) = account {
                    spec.insert("serviceAccountName".into(), account);
                }
                fields.insert("spec".into(), serde_json::Value::Object(spec));
            }
            Kind::ServiceAccount => fields.clear(),
            _ => {}
        }
        fields.insert("apiVersion".into(), resource.api_version.clone().into());
        fields.insert("kind".into(), resource.kind.clone().into());
        fields.insert(
            "metadata".into(),
            serde_json::to_value(&metadata).unwrap_or_default(),
        );
    }
    data
}

/// Starts a watcher for every kind of the store; each runs until the
/// publisher is gone. The layer is marked synced once all of them listed.
pub fn spawn(
    client: kube::Client,
    publisher: SourceSender,
    metrics: WatchMetrics,
) -> Vec<tokio::task::JoinHandle<()>> {
    let pending = Arc::new(AtomicUsize::new(Kind::ALL.len()));
    Kind::ALL
        .into_iter()
        .map(|kind| {
            tokio::spawn(watch_kind(
                client.clone(),
                kind,
                publisher.clone(),
                metrics.clone(),
                pending.clone(),
            ))
        })
        .collect()
}

async fn watch_kind(
    client: kube::Client,
    kind: Kind,
    publisher: SourceSender,
    metrics: WatchMetrics,
    pending: Arc<AtomicUsize>,
) {
    let resource = api_resource(kind);
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut events = watcher(api, watch_config(kind)).default_backoff().boxed();
    let label = [kind.name()];
    let mut listed: Option<Vec<serde_json::Value>> = None;
    let mut synced = false;
    while let Some(event) = events.next().await {
        let change = match event {
            Ok(Event::Init) => {
                metrics.relists.with_label_values(&label).inc();
                listed = Some(Vec::new());
                continue;
            }
            Ok(Event::InitApply(object)) => {
                listed
                    .get_or_insert_with(Vec::new)
                    .push(trim(kind, &resource, object));
                continue;
            }
            Ok(Event::InitDone) => {
                let objects = listed.take().unwrap_or_default();
                tracing::info!(kind = kind.name(), objects = objects.len(), "listed");
                Change::Relist { kind, objects }
            }
            Ok(Event::Apply(object)) => Change::Apply(trim(kind, &resource, object)),
            Ok(Event::Delete(object)) => Change::Delete {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
                namespace: object.metadata.namespace,
                name: object.metadata.name.unwrap_or_default(),
            },
            Err(e) => {
                metrics.errors.with_label_values(&label).inc();
                tracing::warn!(kind = kind.name(), error = %e, "Kubernetes watch failed; retrying with back-off (check remora-cp's RBAC and the API server)");
                continue;
            }
        };
        let relisted = matches!(change, Change::Relist { .. });
        if !publisher.send(change).await {
            return;
        }
        if relisted && !synced {
            synced = true;
            if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                tracing::info!("every Kubernetes kind listed");
                if !publisher.send(Change::Synced).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
