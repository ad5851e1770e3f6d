//! Status write-back: the conditions Gateway API users expect on their
//! routes, and on the remora.dev policies, written by the leader only.
//!
//! Input is a [`Input`] on a `watch` channel: the object store a source
//! holds (with each object's live `status` and `resourceVersion`) and the
//! [`Problem`]s translation found in it. From them, [`plan`] (pure) computes
//! each object's status and keeps only those that differ from what is
//! there; [`Writer`] sends those as JSON merge patches on the `/status`
//! subresource, each guarded by the resourceVersion it was computed from,
//! paced to `writes_per_second`, and only while leader.
//!
//! - HTTPRoute (and GRPCRoute, the same shape): `status.parents[]`, one
//!   entry per Service parentRef (GAMMA) with controllerName
//!   [`CONTROLLER_NAME`] and the conditions `Accepted` (reasons `Accepted`,
//!   `NoMatchingParent`, or the translation's, e.g. `Conflicted`) and
//!   `ResolvedRefs` (`ResolvedRefs`, `BackendNotFound`, `RefNotPermitted`,
//!   `InvalidKind`, `UnsupportedValue`). Other controllers' entries are kept
//!   as they are. Parents that are not Services (Gateways) are another
//!   controller's, and get no entry from us.
//! - PluginPolicy, AuthorizationPolicy, TrafficPolicy, MeshTLSPolicy,
//!   Consumer: `status.conditions`, `Accepted` (and `ResolvedRefs` on
//!   Consumers, whose Secrets are references).
//!
//! Every condition has `observedGeneration` = `metadata.generation`, and
//! keeps its `lastTransitionTime` while its `status` stays the same.
//! This module does not read Kubernetes; the source does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use prometheus::IntCounterVec;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::crds::Condition;
use crate::translate::gateway::ParentRef;
use crate::translate::{Key, Problem, Store};

/// The `controllerName` of Remora's `status.parents` entries.
pub const CONTROLLER_NAME: &str = "remora.dev/mesh";
/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "remora-cp";
/// Gateway API allows at most this many `status.parents` entries.
const MAX_PARENTS: usize = 32;
/// A condition's message is cut here (metav1.Condition allows 32 KiB).
const MAX_MESSAGE: usize = 1024;
/// Back-off after a pass with failed writes.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What status write-back reads: the latest store and translation's
/// problems in it, published whole by the source on a `watch` channel.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub store: Arc<Store>,
    pub problems: Arc<Vec<Problem>>,
}

/// A kind whose status is written, and where its API lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub kind: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
}

impl Kind {
    fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: format!("{}/{}", self.group, self.version),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

const fn gateway(kind: &'static str, plural: &'static str) -> Kind {
    Kind {
        kind,
        group: "gateway.networking.k8s.io",
        version: "v1",
        plural,
    }
}

const fn remora(kind: &'static str, plural: &'static str) -> Kind {
    Kind {
        kind,
        group: crate::crds::GROUP,
        version: "v1alpha1",
        plural,
    }
}

pub const HTTP_ROUTE: Kind = gateway("HTTPRoute", "httproutes");
pub const GRPC_ROUTE: Kind = gateway("GRPCRoute", "grpcroutes");
pub const PLUGIN_POLICY: Kind = remora("PluginPolicy", "pluginpolicies");
pub const CONSUMER: Kind = remora("Consumer", "consumers");
pub const AUTHORIZATION_POLICY: Kind = remora("AuthorizationPolicy", "authorizationpolicies");
pub const MESH_TLS_POLICY: Kind = remora("MeshTLSPolicy", "meshtlspolicies");
pub const TRAFFIC_POLICY: Kind = remora("TrafficPolicy", "trafficpolicies");

/// One status to write: the whole new `status`, and the resourceVersion
/// of the object it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub resource_version: Option<String>,
    pub status: Value,
}

impl Write {
    fn key(&self) -> (&'static str, Key) {
        (self.kind.kind, format!("{}/{}", self.namespace, self.name))
    }

    /// The merge patch: the status, guarded by the resourceVersion (a
    /// 409 Conflict when the object changed since).
    pub fn patch(&self) -> Value {
        match &self.resource_version {
            Some(rv) => json!({"metadata": {"resourceVersion": rv}, "status": self.status}),
            None => json!({"status": self.status}),
        }
    }
}

/// What this replica wrote last, per object: a newer store may not show
/// it yet, and must not make it write the same again.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    entries: HashMap<(&'static str, Key), SentEntry>,
}

#[derive(Debug, Clone)]
struct SentEntry {
    status: Value,
    /// The resourceVersion written against, and the one the write made.
    versions: [Option<String>; 2],
}

impl Sent {
    fn record(&mut self, write: &Write, after: Option<String>) {
        self.entries.insert(
            write.key(),
            SentEntry {
                status: write.status.clone(),
                versions: [write.resource_version.clone(), after],
            },
        );
    }

    /// The status an object has or is about to have: what we wrote, when
    /// the store still shows the object as it was around that write.
    fn previous<'a>(
        &'a self,
        kind: &'static str,
        key: &str,
        rv: Option<&String>,
        live: Option<&'a Value>,
    ) -> Option<&'a Value> {
        match self.entries.get(&(kind, key.to_owned())) {
            Some(e) if e.versions.iter().any(|v| v.as_ref() == rv) => Some(&e.status),
            _ => live,
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    /// Forgets objects the store no longer has, so this stays as large as
    /// the store at most.
    fn prune(&mut self, store: &Store) {
        let mut present: std::collections::HashSet<(&'static str, Key)> = routes(store)
            .iter()
            .map(|r| {
                let (ns, name) = key_of(r.metadata);
                (r.kind.kind, format!("{ns}/{name}"))
            })
            .collect();
        let policies = [
            (
                PLUGIN_POLICY,
                store.plugin_policies.keys().collect::<Vec<_>>(),
            ),
            (CONSUMER, store.consumers.keys().collect()),
            (
                AUTHORIZATION_POLICY,
                store.authorization_policies.keys().collect(),
            ),
            (MESH_TLS_POLICY, store.mesh_tls_policies.keys().collect()),
            (TRAFFIC_POLICY, store.traffic_policies.keys().collect()),
        ];
        for (kind, keys) in policies {
            present.extend(keys.into_iter().map(|k| (kind.kind, k.clone())));
        }
        self.entries.retain(|k, _| present.contains(k));
    }
}

fn key_of(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

fn rfc3339(now: Timestamp) -> String {
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn cut(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// A condition, its `lastTransitionTime` kept from `previous` when its
/// status did not change.
fn condition(
    kind: &str,
    outcome: Result<&'static str, (&'static str, String)>,
    ok_message: &str,
    generation: Option<i64>,
    previous: &[Condition],
    now: &str,
) -> Condition {
    let (status, reason, message) = match outcome {
        Ok(reason) => ("True", reason, ok_message.to_owned()),
        Err((reason, message)) => ("False", reason, message),
    };
    let since = previous
        .iter()
        .find(|c| c.kind == kind && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_owned());
    Condition {
        kind: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: cut(message),
        observed_generation: generation,
        last_transition_time: Some(since),
    }
}

/// The first problem of `condition` among `problems`, all their messages
/// joined; `None` when there is none.
fn failing(problems: &[&Problem], condition: &str) -> Option<(&'static str, String)> {
    let mut matching = problems.iter().filter(|p| p.condition == condition);
    let first = matching.next()?;
    let mut message = first.message.clone();
    for p in matching {
        message.push_str("; ");
        message.push_str(&p.message);
    }
    Some((first.reason, message))
}

fn conditions_of(status: Option<&Value>) -> Vec<Condition> {
    status
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

/// A route as status write-back reads it (HTTPRoute and GRPCRoute alike).
#[derive(Debug, Clone, Copy)]
pub struct RouteObject<'a> {
    pub kind: Kind,
    pub metadata: &'a ObjectMeta,
    pub parent_refs: &'a [ParentRef],
    pub status: Option<&'a Value>,
}

/// The routes of a store whose status is written. GRPCRoutes join here
/// once the store holds them.
pub fn routes(store: &Store) -> Vec<RouteObject<'_>> {
    store
        .http_routes
        .values()
        .map(|r| RouteObject {
            kind: HTTP_ROUTE,
            metadata: &r.metadata,
            parent_refs: &r.spec.parent_refs,
            status: r.status.as_ref(),
        })
        .chain(store.grpc_routes.values().map(|r| RouteObject {
            kind: GRPC_ROUTE,
            metadata: &r.metadata,
            parent_refs: &r.spec.parent_refs,
            status: r.status.as_ref(),
        }))
        .collect()
}

/// A parentRef Remora answers for: a Service (GAMMA), as translation reads it.
fn is_service(parent: &ParentRef) -> bool {
    parent.kind.as_deref() == Some("Service")
        && matches!(parent.group.as_deref(), Some("" | "core"))
}

fn parent_ref_json(parent: &ParentRef) -> Value {
    let mut out = json!({
        "group": parent.group.clone().unwrap_or_default(),
        "kind": "Service",
        "name": parent.name,
    });
    if let Some(namespace) = &parent.namespace {
        out["namespace"] = json!(namespace);
    }
    if let Some(port) = parent.port {
        out["port"] = json!(port);
    }
    out
}

/// Whether a Service parent exists with the port it names.
fn parent_accepted(store: &Store, ns: &str, parent: &ParentRef) -> Result<(), String> {
    let svc = format!(
        "{}/{}",
        parent.namespace.as_deref().unwrap_or(ns),
        parent.name
    );
    let Some(service) = store.services.get(&svc) else {
        return Err(format!("parentRef Service {svc} does not exist"));
    };
    let has_port = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .any(|p| parent.port.is_none_or(|want| i32::from(want) == p.port));
    if !has_port {
        return Err(match parent.port {
            Some(port) => format!("Service {svc} has no port {port}"),
            None => format!("Service {svc} has no ports"),
        });
    }
    Ok(())
}

/// A route's new `status`, or `None` when ours is what `previous` has.
fn route_status(
    store: &Store,
    route: &RouteObject<'_>,
    problems: &[&Problem],
    previous: Option<&Value>,
    now: &str,
) -> Option<Value> {
    let (ns, _) = key_of(route.metadata);
    let generation = route.metadata.generation;
    let live: Vec<Value> = previous
        .and_then(|s| s.get("parents"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ours_now =
        |e: &Value| e.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME);
    let (live_ours, others): (Vec<Value>, Vec<Value>) = live.into_iter().partition(ours_now);
    // Translation reports a missing parent per route; it is worked out per
    // parent here. Its other Accepted problems (a conflict) hold for all.
    let route_problems: Vec<&Problem> = problems
        .iter()
        .copied()
        .filter(|p| !(p.condition == "Accepted" && p.reason == "NoMatchingParent"))
        .collect();
    let resolved = failing(&route_problems, "ResolvedRefs");
    let accepted_problem = failing(&route_problems, "Accepted");
    let mut ours = Vec::new();
    for parent in route.parent_refs.iter().filter(|p| is_service(p)) {
        let parent_ref = parent_ref_json(parent);
        if ours.iter().any(|e: &Value| e["parentRef"] == parent_ref) {
            continue;
        }
        let before: Vec<Condition> = live_ours
            .iter()
            .find(|e| e["parentRef"] == parent_ref)
            .map(|e| conditions_of(Some(e)))
            .unwrap_or_default();
        let accepted = match parent_accepted(store, &ns, parent) {
            Err(message) => Err(("NoMatchingParent", message)),
            Ok(()) => accepted_problem.clone().map_or(Ok("Accepted"), Err),
        };
        let conditions = [
            condition(
                "Accepted",
                accepted,
                "accepted by the mesh",
                generation,
                &before,
                now,
            ),
            condition(
                "ResolvedRefs",
                resolved.clone().map_or(Ok("ResolvedRefs"), Err),
                "all backendRefs resolved",
                generation,
                &before,
                now,
            ),
        ];
        ours.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions,
        }));
    }
    if ours == live_ours {
        return None;
    }
    let mut parents = others;
    parents.extend(ours);
    parents.truncate(MAX_PARENTS);
    let mut status = previous.cloned().unwrap_or_else(|| json!({}));
    if !status.is_object() {
        status = json!({});
    }
    status["parents"] = Value::Array(parents);
    Some(status)
}

/// A policy's new `status`, or `None` when its conditions are what
/// `previous` has.
fn policy_status(
    kind: Kind,
    metadata: &ObjectMeta,
    problems: &[&Problem],
    previous: Option<&Value>,
    now: &str,
) -> Option<Value> {
    let before = conditions_of(previous);
    let generation = metadata.generation;
    let mut conditions = Vec::new();
    let unresolved = failing(problems, "ResolvedRefs");
    let accepted = match (failing(problems, "Accepted"), &unresolved) {
        (Some(problem), _) => Err(problem),
        // A consumer with a missing Secret is left out of the mesh.
        (None, Some((_, message))) => Err(("Invalid", message.clone())),
        (None, None) => Ok("Accepted"),
    };
    conditions.push(condition(
        "Accepted",
        accepted,
        "accepted by the mesh",
        generation,
        &before,
        now,
    ));
    if kind == CONSUMER {
        conditions.push(condition(
            "ResolvedRefs",
            unresolved.map_or(Ok("ResolvedRefs"), Err),
            "all secretRefs resolved",
            generation,
            &before,
            now,
        ));
    }
    if conditions == before {
        return None;
    }
    let mut status = previous.cloned().unwrap_or_else(|| json!({}));
    if !status.is_object() {
        status = json!({});
    }
    status["conditions"] = json!(conditions);
    Some(status)
}

/// Every status that differs from what is (or, per `sent`, is about to
/// be) on the object, in a fixed order. Objects without a resourceVersion
/// are not from the API server (the file layer) and get none. Pure.
pub fn plan(input: &Input, sent: &Sent, now: Timestamp) -> Vec<Write> {
    let now = rfc3339(now);
    let store = &input.store;
    let mut by_object: HashMap<(&str, &str), Vec<&Problem>> = HashMap::new();
    for p in input.problems.iter() {
        by_object
            .entry((p.kind, p.key.as_str()))
            .or_default()
            .push(p);
    }
    let problems_of = |kind: &str, key: &str| -> Vec<&Problem> {
        by_object.get(&(kind, key)).cloned().unwrap_or_default()
    };
    let mut out = Vec::new();
    for route in routes(store) {
        if route.metadata.resource_version.is_none() {
            continue;
        }
        let (namespace, name) = key_of(route.metadata);
        let key = format!("{namespace}/{name}");
        let rv = route.metadata.resource_version.as_ref();
        let previous = sent.previous(route.kind.kind, &key, rv, route.status);
        let problems = problems_of(route.kind.kind, &key);
        if let Some(status) = route_status(store, &route, &problems, previous, &now) {
            out.push(Write {
                kind: route.kind,
                namespace,
                name,
                resource_version: rv.cloned(),
                status,
            });
        }
    }
    let mut policy = |kind: Kind, metadata: &ObjectMeta, live: Option<Value>| {
        if metadata.resource_version.is_none() {
            return;
        }
        let (namespace, name) = key_of(metadata);
        let key = format!("{namespace}/{name}");
        let rv = metadata.resource_version.as_ref();
        let previous = sent.previous(kind.kind, &key, rv, live.as_ref());
        let problems = problems_of(kind.kind, &key);
        if let Some(status) = policy_status(kind, metadata, &problems, previous, &now) {
            out.push(Write {
                kind,
                namespace,
                name,
                resource_version: rv.cloned(),
                status,
            });
        }
    };
    let live = |s: &Option<crate::crds::PolicyStatus>| {
        s.as_ref().and_then(|s| serde_json::to_value(s).ok())
    };
    for p in store.plugin_policies.values() {
        policy(PLUGIN_POLICY, &p.metadata, live(&p.status));
    }
    for p in store.consumers.values() {
        policy(CONSUMER, &p.metadata, live(&p.status));
    }
    for p in store.authorization_policies.values() {
        policy(AUTHORIZATION_POLICY, &p.metadata, live(&p.status));
    }
    for p in store.mesh_tls_policies.values() {
        policy(MESH_TLS_POLICY, &p.metadata, live(&p.status));
    }
    for p in store.traffic_policies.values() {
        policy(TRAFFIC_POLICY, &p.metadata, live(&p.status));
    }
    out
}

/// How status write-back paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Status writes per second at most (1 to 1000).
    pub writes_per_second: u32,
    /// How long to wait after a change for the rest of a burst.
    pub debounce: Duration,
    /// One write's bound.
    pub request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            writes_per_second: 20,
            debounce: Duration::from_millis(200),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The range of `writes_per_second`.
pub const WRITES_PER_SECOND_RANGE: (u32, u32) = (1, 1000);

/// How one write ended, as counted in
/// `remora_cp_status_writes_total{kind, result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The object changed since it was read: the next store has it.
    Conflict,
    /// The object is gone (or not in Kubernetes: a file-source object).
    NotFound,
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
        }
    }
}

pub(crate) async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

/// Spaces writes to a rate: each waits for its slot, one `gap` after the
/// last; a pause does not save up slots for a burst.
#[derive(Debug)]
pub(crate) struct Pacer {
    gap: Duration,
    next_slot: Instant,
}

impl Pacer {
    pub(crate) fn new(writes_per_second: u32) -> Self {
        Self {
            gap: Duration::from_secs(1) / writes_per_second.max(1),
            next_slot: Instant::now(),
        }
    }

    /// Waits for the next slot.
    pub(crate) async fn wait(&mut self) {
        sleep_until(self.next_slot).await;
        self.next_slot = Instant::now().max(self.next_slot) + self.gap;
    }
}

/// Writes statuses while this replica leads.
pub struct Writer {
    client: kube::Client,
    settings: Settings,
    writes: IntCounterVec,
    clock: fn() -> Timestamp,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// `writes` is `remora_cp_status_writes_total` (labels kind, result).
    pub fn new(client: kube::Client, settings: Settings, writes: IntCounterVec) -> Self {
        Self {
            client,
            settings,
            writes,
            clock: Timestamp::now,
        }
    }

    /// Uses `clock` for `lastTransitionTime` (tests fix it).
    pub fn with_clock(mut self, clock: fn() -> Timestamp) -> Self {
        self.clock = clock;
        self
    }

    async fn write(&self, write: &Write) -> (Outcome, Option<String>) {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &write.namespace,
            &write.kind.resource(),
        );
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = write.patch();
        let sent = timeout(
            self.settings.request_timeout,
            api.patch_status(&write.name, &params, &Patch::Merge(&patch)),
        )
        .await;
        let (ns, name, kind) = (&write.namespace, &write.name, write.kind.kind);
        match sent {
            Ok(Ok(object)) => (Outcome::Ok, object.metadata.resource_version),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                tracing::debug!(kind, %ns, %name, "status conflict; the next store has the newer object");
                (Outcome::Conflict, None)
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                tracing::debug!(kind, %ns, %name, "no such object in Kubernetes; status not written");
                (Outcome::NotFound, None)
            }
            Ok(Err(e)) => {
                tracing::warn!(kind, %ns, %name, error = %e, "status write failed; retrying (remora-cp's service account needs patch on the kind's status)");
                (Outcome::Error, None)
            }
            Err(_) => {
                tracing::warn!(kind, %ns, %name, "status write timed out; retrying");
                (Outcome::Error, None)
            }
        }
    }

    /// Runs until `drain` turns true or `input` closes.
    pub async fn run(
        self,
        mut input: watch::Receiver<Arc<Input>>,
        mut leader: watch::Receiver<bool>,
        mut drain: watch::Receiver<bool>,
    ) {
        let mut pacer = Pacer::new(self.settings.writes_per_second);
        let mut sent = Sent::default();
        'follow: loop {
            tokio::select! {
                closed = async { leader.wait_for(|l| *l).await.is_err() } => if closed { return },
                _ = drained(&mut drain) => return,
            }
            // Another leader may have written in between.
            sent.clear();
            let mut backoff = BACKOFF_MIN;
            loop {
                let snapshot = input.borrow_and_update().clone();
                sent.prune(&snapshot.store);
                let writes = plan(&snapshot, &sent, (self.clock)());
                let mut failed = false;
                for write in &writes {
                    if !*leader.borrow() || *drain.borrow() {
                        continue 'follow;
                    }
                    if input.has_changed().unwrap_or(false) {
                        break;
                    }
                    pacer.wait().await;
                    if !*leader.borrow() {
                        continue 'follow;
                    }
                    let (outcome, after) = self.write(write).await;
                    self.writes
                        .with_label_values(&[write.kind.kind, outcome.label()])
                        .inc();
                    match outcome {
                        Outcome::Error => failed = true,
                        // A conflict or a missing object: wait for the
                        // store to change rather than retry the same.
                        _ => sent.record(write, after),
                    }
                }
                if input.has_changed().unwrap_or(false) {
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
                    r = input.changed() => {
                        if r.is_err() { return }
                        sleep(self.settings.debounce).await;
                        backoff = BACKOFF_MIN;
                    }
                    _ = retry => backoff = (backoff * 2).min(BACKOFF_MAX),
                    closed = async { leader.wait_for(|l| !*l).await.is_err() } => {
                        if closed { return }
                        continue 'follow;
                    }
                    _ = drained(&mut drain) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
