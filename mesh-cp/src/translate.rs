//! Translation: a pure function from the object store (Kubernetes objects,
//! Gateway API routes, Remora CRDs) to the [`MeshView`] discovery serves.
//!
//! This module owns the rules that turn objects into services,
//! backends, routes and inbound configs, and the problems it reports (route
//! conditions with Gateway API's reasons). A bad object is reported and
//! left out; it never breaks the translation of anything else.

pub mod gateway;
mod routes;
mod store;

pub use store::{Key, Kind, ObjectError, Store};

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use remora_api::{
    Authorization, AuthzAction, AuthzRule, Backend, Endpoint, InboundConfig, InboundMode,
    InboundPort, Protocol, ServicePort,
};

use crate::crds::{
    AuthorizationPolicy, Consumer, MeshTLSPolicy, PluginPolicy, PolicyTargetRef, TrafficPolicy,
};
use crate::view::{Destination, Globals, MeshView, Workload};
use remora_proxy::PluginCheck;
use routes::attach_routes;

/// The annotation the injector sets on every pod it injected: such a pod is
/// meshed (its endpoints carry an identity, it gets an inbound config).
pub const MESHED_ANNOTATION: &str = "remora.dev/status";
/// The EndpointSlice label naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Startup settings translation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub trust_domain: String,
    pub cluster_domain: String,
    /// MeshTLSPolicies here without a selector apply to the whole mesh.
    pub root_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            root_namespace: "remora-system".into(),
        }
    }
}

/// A status condition translation would write on an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// e.g. `HTTPRoute`, `Consumer`.
    pub kind: &'static str,
    pub key: Key,
    /// `Accepted` or `ResolvedRefs`.
    pub condition: &'static str,
    /// Gateway API's reason, e.g. `BackendNotFound`.
    pub reason: &'static str,
    pub message: String,
}

/// What translation made of a store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    pub view: MeshView,
    pub problems: Vec<Problem>,
}

/// Translates the whole store. Pure: no I/O, the same store gives the same
/// view (with `version` 0; the publisher numbers it).
pub fn translate(store: &Store, options: &Options) -> Translation {
    let mut problems = Vec::new();
    let backends = backends(store, options);
    let check = plugin_check(store, &backends);
    let plugins = PluginAttachments::new(store, &check, &mut problems);
    let routes = attach_routes(store, &backends, &plugins, &mut problems);
    let mut view = MeshView {
        globals: Globals {
            consumers: consumers(store, &check, &mut problems),
            ..Globals::default()
        },
        ..MeshView::default()
    };
    for (key, svc) in &store.services {
        let Some(spec) = &svc.spec else { continue };
        let (ns, name) = split(key);
        let addresses: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let hostnames = vec![
            format!("{name}.{ns}.svc.{}", options.cluster_domain),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}"),
        ];
        let mut ports = Vec::new();
        let mut named = BTreeMap::new();
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let backend = backend_key(key, number);
            let mut sp = ServicePort {
                port: number,
                name: port.name.clone(),
                protocol: protocol(port.app_protocol.as_deref()),
                routes: Vec::new(),
                backend_refs: Vec::new(),
            };
            match routes.get(&(key.clone(), number)) {
                Some(rs) if sp.protocol.is_http() => sp.routes = rs.clone(),
                _ => {
                    sp.backend_refs = vec![remora_api::BackendRef {
                        name: backend.clone(),
                        weight: 1,
                        filters: Vec::new(),
                    }]
                }
            }
            // Every backend the port names, mirror targets too: a proxy
            // gets this destination alone and refuses a name it lacks.
            for name in sp
                .routes
                .iter()
                .flat_map(|r| {
                    r.backend_refs
                        .iter()
                        .flat_map(|b| std::iter::once(&b.name).chain(routes::mirrors(&b.filters)))
                        .chain(routes::mirrors(&r.filters))
                })
                .chain(sp.backend_refs.iter().map(|b| &b.name))
            {
                if let Some(b) = backends.get(name) {
                    named.insert(name.clone(), b.clone());
                }
            }
            for addr in &addresses {
                view.by_addr
                    .insert(SocketAddr::new(*addr, number), key.clone());
            }
            for host in &hostnames {
                view.by_host.insert((host.clone(), number), key.clone());
            }
            ports.push(sp);
        }
        if ports.is_empty() {
            continue;
        }
        view.destinations.insert(
            key.clone(),
            Destination {
                service: remora_api::Service {
                    name: format!("{name}.{ns}"),
                    addresses,
                    hostnames,
                    ports,
                    plugins: plugins.get("Service", key),
                },
                backends: named,
            },
        );
    }
    view.workloads = workloads(store, options);
    Translation { view, problems }
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

fn key_of(meta: &ObjectMeta) -> Key {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The backend of one Service port: `<namespace>/<name>:<port>`.
pub fn backend_key(service: &str, port: u16) -> String {
    format!("{service}:{port}")
}

fn protocol(app_protocol: Option<&str>) -> Protocol {
    match app_protocol {
        Some("kubernetes.io/h2c" | "http2") => Protocol::Http2,
        Some("grpc") => Protocol::Grpc,
        Some("tcp") => Protocol::Tcp,
        Some("opaque") => Protocol::Opaque,
        _ => Protocol::Http,
    }
}

/// The SPIFFE ID of a ServiceAccount.
pub fn identity(options: &Options, ns: &str, sa: &str) -> String {
    format!("spiffe://{}/ns/{ns}/sa/{sa}", options.trust_domain)
}

fn is_meshed(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MESHED_ANNOTATION))
}

fn pod_identity(options: &Options, pod: &Pod) -> String {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    identity(options, ns, sa)
}

/// A backend for every TCP port of every Service, with the ready endpoints
/// of its EndpointSlices (serving, terminating ones only while none is
/// ready: they drain) and the TrafficPolicy that targets it.
fn backends(store: &Store, options: &Options) -> BTreeMap<String, Backend> {
    let mut out = BTreeMap::new();
    // One pass over the slices and policies, not one per Service: a mesh
    // of 10,000 Services must not compare 10,000 x 10,000 labels.
    let mut slices_of: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in store.endpoint_slices.values() {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(ns), Some(service)) = (slice.metadata.namespace.as_deref(), service) {
            slices_of.entry((ns, service)).or_default().push(slice);
        }
    }
    let policies = traffic_policies(store);
    for (key, svc) in &store.services {
        let (ns, name) = split(key);
        let slices = slices_of.get(&(ns, name)).map_or(&[][..], Vec::as_slice);
        let policy = policies.get(&(ns, name)).copied();
        for port in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let (mut ready, mut draining) = (Vec::new(), Vec::new());
            for slice in slices {
                let Some(target) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name == port.name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                for ep in &slice.endpoints {
                    let cond = ep.conditions.as_ref();
                    let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                    let is_ready = cond.and_then(|c| c.ready).unwrap_or(true) && !terminating;
                    let serving = cond.and_then(|c| c.serving).unwrap_or(is_ready);
                    let pod = ep
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| {
                            store.pods.get(&format!(
                                "{}/{}",
                                r.namespace.as_deref().unwrap_or(ns),
                                r.name.as_deref().unwrap_or_default()
                            ))
                        });
                    let identity = pod
                        .filter(|p| is_meshed(p))
                        .map(|p| pod_identity(options, p));
                    for addr in &ep.addresses {
                        let Ok(ip) = addr.parse::<IpAddr>() else {
                            continue;
                        };
                        let endpoint = Endpoint {
                            address: SocketAddr::new(ip, target),
                            weight: 1,
                            identity: identity.clone(),
                            zone: ep.zone.clone(),
                        };
                        if is_ready {
                            ready.push(endpoint);
                        } else if serving && terminating {
                            draining.push(endpoint);
                        }
                    }
                }
            }
            let mut endpoints = if ready.is_empty() { draining } else { ready };
            endpoints.sort_by_key(|e| e.address);
            endpoints.dedup_by_key(|e| e.address);
            let mut backend = default_backend();
            backend.endpoints = endpoints;
            if let Some(p) = policy {
                apply_traffic_policy(&mut backend, p);
            }
            out.insert(backend_key(key, number), backend);
        }
    }
    out
}

fn default_backend() -> Backend {
    // The model's defaults, as a config that names only endpoints gets them.
    serde_json::from_value(serde_json::json!({})).unwrap_or_else(|_| unreachable_default())
}

#[cold]
fn unreachable_default() -> Backend {
    Backend {
        endpoints: Vec::new(),
        load_balancer: remora_api::LoadBalancer::default(),
        health_check: None,
        outlier_detection: remora_api::OutlierDetection::default(),
        circuit_breaker: remora_api::CircuitBreaker::default(),
        connect_timeout: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(60),
        retry_budget: remora_api::RetryBudget::default(),
    }
}

/// The oldest TrafficPolicy targeting each Service (then by name), by
/// `(namespace, service name)`.
fn traffic_policies(store: &Store) -> BTreeMap<(&str, &str), &TrafficPolicy> {
    let mut list: Vec<&TrafficPolicy> = store.traffic_policies.values().collect();
    list.sort_by_key(|p| age_key(&p.metadata));
    let mut out = BTreeMap::new();
    for p in list {
        let Some(ns) = p.metadata.namespace.as_deref() else {
            continue;
        };
        for t in &p.spec.target_refs {
            if targets_service(t, &t.name) {
                out.entry((ns, t.name.as_str())).or_insert(p);
            }
        }
    }
    out
}

fn targets_service(target: &PolicyTargetRef, name: &str) -> bool {
    target.kind == "Service" && target.name == name && matches!(target.group.as_str(), "" | "core")
}

fn apply_traffic_policy(backend: &mut Backend, policy: &TrafficPolicy) {
    let spec = &policy.spec;
    if let Some(lb) = &spec.load_balancer {
        backend.load_balancer = lb.clone();
    }
    if let Some(t) = spec.connect_timeout {
        backend.connect_timeout = t;
    }
    if let Some(t) = spec.idle_timeout {
        backend.idle_timeout = t;
    }
    if let Some(b) = &spec.retry_budget {
        backend.retry_budget = b.clone();
    }
    if let Some(c) = &spec.circuit_breaker {
        backend.circuit_breaker = c.clone();
    }
    if let Some(o) = &spec.outlier_detection {
        backend.outlier_detection = o.clone();
    }
    if let Some(h) = &spec.health_check {
        backend.health_check = Some(h.clone());
    }
}

/// The proxy's own plugin compiler in check mode, knowing the backends and
/// consumers this store defines (traffic-split and anonymous consumers
/// refer to them).
fn plugin_check(store: &Store, backends: &BTreeMap<String, Backend>) -> PluginCheck {
    let consumers = store.consumers.values().map(|c| {
        c.spec
            .username
            .clone()
            .unwrap_or_else(|| c.metadata.name.clone().unwrap_or_default())
    });
    PluginCheck::new(backends.keys().cloned(), consumers)
}

/// PluginPolicies by what they target: `(kind, <namespace>/<name>)` to
/// the merged plugin configs, the oldest policy winning a plugin both name.
/// Services, HTTPRoutes and GRPCRoutes are targets; a Namespace or a port-scoped
/// target is reported (`Accepted=False`, `Unsupported`) and left out.
/// Plugin configs are checked with the proxy's plugin compiler: a policy
/// with a bad one is reported (`Accepted=False`, `Invalid`, naming the
/// plugin and field) and left out whole.
#[derive(Debug, Default)]
struct PluginAttachments {
    by_target: BTreeMap<(&'static str, Key), remora_api::Plugins>,
}

impl PluginAttachments {
    fn new(store: &Store, check: &PluginCheck, problems: &mut Vec<Problem>) -> Self {
        let mut list: Vec<&PluginPolicy> = store.plugin_policies.values().collect();
        list.sort_by_key(|p| age_key(&p.metadata));
        let mut out = Self::default();
        for policy in list {
            let key = key_of(&policy.metadata);
            let (ns, _) = split(&key);
            if let Err(message) = check.plugins("spec.plugins", &policy.spec.plugins) {
                problems.push(Problem {
                    kind: "PluginPolicy",
                    key: key.clone(),
                    condition: "Accepted",
                    reason: "Invalid",
                    message,
                });
                continue;
            }
            for target in &policy.spec.target_refs {
                let kind = match (target.kind.as_str(), target.port) {
                    ("Service", None) if matches!(target.group.as_str(), "" | "core") => "Service",
                    ("HTTPRoute", None) if target.group == "gateway.networking.k8s.io" => {
                        "HTTPRoute"
                    }
                    ("GRPCRoute", None) if target.group == "gateway.networking.k8s.io" => {
                        "GRPCRoute"
                    }
                    // As policy attachment allows: the policy's own namespace.
                    ("Namespace", None) if matches!(target.group.as_str(), "" | "core") => {
                        if target.name != ns {
                            problems.push(Problem {
                                kind: "PluginPolicy",
                                key: key.clone(),
                                condition: "ResolvedRefs",
                                reason: "RefNotPermitted",
                                message: format!(
                                    "targetRef Namespace {}: a policy attaches to its own \
                                     namespace ({ns}) only",
                                    target.name
                                ),
                            });
                            continue;
                        }
                        "Namespace"
                    }
                    _ => {
                        problems.push(Problem {
                            kind: "PluginPolicy",
                            key: key.clone(),
                            condition: "Accepted",
                            reason: "Unsupported",
                            message: format!(
                                "targetRef {} {}{}: only whole Services, HTTPRoutes, \
                                 GRPCRoutes and Namespaces are supported",
                                target.kind,
                                target.name,
                                target
                                    .port
                                    .map(|p| format!(" port {p}"))
                                    .unwrap_or_default()
                            ),
                        });
                        continue;
                    }
                };
                let target_key = match kind {
                    "Namespace" => ns.to_owned(),
                    _ => format!("{ns}/{}", target.name),
                };
                let merged = out.by_target.entry((kind, target_key)).or_default();
                for (name, config) in &policy.spec.plugins {
                    merged.entry(name.clone()).or_insert_with(|| config.clone());
                }
            }
        }
        out
    }

    fn get(&self, kind: &'static str, key: &str) -> remora_api::Plugins {
        let mut plugins = self
            .by_target
            .get(&(kind, key.to_owned()))
            .cloned()
            .unwrap_or_default();
        // A Service also gets its Namespace's policies; its own win for
        // the same plugin (the more specific target).
        if kind == "Service" {
            let (ns, _) = split(key);
            if let Some(wide) = self.by_target.get(&("Namespace", ns.to_owned())) {
                for (name, config) in wide {
                    plugins
                        .entry(name.clone())
                        .or_insert_with(|| config.clone());
                }
            }
        }
        plugins
    }
}

/// Sorts objects the way Gateway API settles conflicts: oldest first, then
/// by `<namespace>/<name>`.
fn age_key(meta: &ObjectMeta) -> (Option<k8s_openapi::jiff::Timestamp>, Key) {
    (meta.creation_timestamp.as_ref().map(|t| t.0), key_of(meta))
}

/// Mesh-wide consumers, their credentials read from Secrets. A consumer
/// whose Secret or key is missing, or whose plugin configs the proxy's
/// compiler refuses (`Invalid`), is left out and reported.
fn consumers(
    store: &Store,
    check: &PluginCheck,
    problems: &mut Vec<Problem>,
) -> Vec<remora_api::Consumer> {
    let mut out: Vec<remora_api::Consumer> = Vec::new();
    let mut list: Vec<&Consumer> = store.consumers.values().collect();
    list.sort_by_key(|c| age_key(&c.metadata));
    'each: for consumer in list {
        let key = key_of(&consumer.metadata);
        let (ns, name) = split(&key);
        let mut plugins = consumer.spec.plugins.clone();
        for cred in &consumer.spec.credentials {
            let secret = format!("{ns}/{}", cred.secret_ref.name);
            let Some(value) = store
                .secrets
                .get(&secret)
                .and_then(|s| s.data.as_ref())
                .and_then(|d| d.get(&cred.secret_ref.key))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
            else {
                problems.push(Problem {
                    kind: "Consumer",
                    key: key.clone(),
                    condition: "ResolvedRefs",
                    reason: "SecretNotFound",
                    message: format!(
                        "Secret {secret} has no UTF-8 key {:?} (from Kubernetes, only Secrets labelled {} are read)",
                        cred.secret_ref.key,
                        crate::source_kube::SECRET_SELECTOR
                    ),
                });
                continue 'each;
            };
            let config = plugins
                .entry(cred.plugin.clone())
                .or_insert_with(|| serde_json::json!({}));
            if let Some(obj) = config.as_object_mut() {
                obj.insert(cred.field.clone(), serde_json::Value::String(value));
            }
        }
        let username = consumer
            .spec
            .username
            .clone()
            .unwrap_or_else(|| name.to_owned());
        if out.iter().any(|c| c.username == username) {
            problems.push(Problem {
                kind: "Consumer",
                key: key.clone(),
                condition: "Accepted",
                reason: "Conflicted",
                message: format!("username {username} is taken by an older consumer"),
            });
            continue;
        }
        let translated = remora_api::Consumer {
            username,
            desc: consumer.spec.desc.clone(),
            plugins,
        };
        if let Err(message) = check.consumer("spec", &translated) {
            problems.push(Problem {
                kind: "Consumer",
                key: key.clone(),
                condition: "Accepted",
                reason: "Invalid",
                message,
            });
            continue;
        }
        out.push(translated);
    }
    out
}

/// Inbound configs of meshed pods: mesh TLS mode most-specific-wins
/// (workload, then namespace, then mesh; a port entry over the policy's
/// mode) and the AuthorizationPolicies of the Services that select them
/// and of their namespace.
fn workloads(store: &Store, options: &Options) -> BTreeMap<Key, Workload> {
    let mut out = BTreeMap::new();
    let mut tls: Vec<&MeshTLSPolicy> = store.mesh_tls_policies.values().collect();
    tls.sort_by_key(|p| age_key(&p.metadata));
    for (key, pod) in &store.pods {
        if !is_meshed(pod) {
            continue;
        }
        let (ns, _) = split(key);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let scope = |p: &&MeshTLSPolicy, level: u8| {
            let pns = p.metadata.namespace.as_deref().unwrap_or_default();
            match (&p.spec.selector, level) {
                (Some(sel), 0) => pns == ns && sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
                (None, 1) => pns == ns && pns != options.root_namespace,
                (None, 2) => pns == options.root_namespace,
                _ => false,
            }
        };
        let levels: Vec<Option<&MeshTLSPolicy>> = (0..3)
            .map(|l| tls.iter().find(|p| scope(p, l)).copied())
            .collect();
        let mode = levels
            .iter()
            .flatten()
            .find_map(|p| p.spec.mode)
            .map(InboundMode::from)
            .unwrap_or_default();
        let mut port_modes: BTreeMap<u16, InboundMode> = BTreeMap::new();
        let all_ports: BTreeSet<u16> = levels
            .iter()
            .flatten()
            .flat_map(|p| p.spec.ports.iter().map(|pm| pm.port))
            .collect();
        for port in all_ports {
            let m = levels.iter().flatten().find_map(|p| {
                p.spec
                    .ports
                    .iter()
                    .find(|pm| pm.port == port)
                    .map(|pm| pm.mode)
                    .or(p.spec.mode)
            });
            if let Some(m) = m.map(InboundMode::from) {
                if m != mode {
                    port_modes.insert(port, m);
                }
            }
        }
        let ports = port_modes
            .into_iter()
            .map(|(port, m)| InboundPort {
                port,
                name: None,
                protocol: Protocol::Http,
                mode: Some(m),
                plugins: BTreeMap::new(),
                routes: Vec::new(),
            })
            .collect();
        out.insert(
            key.clone(),
            Workload {
                identity: pod_identity(options, pod),
                inbound: InboundConfig {
                    mode,
                    default_protocol: Protocol::Http,
                    ports,
                    authorization: authorization(store, options, ns, &labels),
                },
            },
        );
    }
    out
}

fn authorization(
    store: &Store,
    options: &Options,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> Authorization {
    let selects = |svc: &str| {
        store
            .services
            .get(&format!("{ns}/{svc}"))
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    let mut list: Vec<&AuthorizationPolicy> = store
        .authorization_policies
        .values()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| {
            p.spec.target_refs.iter().any(|t| {
                (t.kind == "Namespace" && t.name == ns) || (t.kind == "Service" && selects(&t.name))
            })
        })
        .collect();
    list.sort_by_key(|p| key_of(&p.metadata));
    let policies: Vec<remora_api::AuthorizationPolicy> = list
        .into_iter()
        .map(|p| remora_api::AuthorizationPolicy {
            name: key_of(&p.metadata),
            action: p.spec.action,
            rules: p
                .spec
                .rules
                .iter()
                .map(|r| {
                    let mut identities = r.identities.clone();
                    identities.extend(r.service_accounts.iter().map(|sa| {
                        let (sns, sname) = split(sa);
                        identity(options, sns, sname)
                    }));
                    identities.extend(
                        r.namespaces
                            .iter()
                            .map(|n| format!("spiffe://{}/ns/{n}/*", options.trust_domain)),
                    );
                    AuthzRule {
                        identities,
                        ports: r.ports.clone(),
                        paths: r.paths.clone(),
                        methods: r.methods.clone(),
                    }
                })
                .collect(),
        })
        .collect();
    // As in Istio: once something is allowed explicitly, the rest is denied.
    let default_action = if policies.iter().any(|p| p.action == AuthzAction::Allow) {
        AuthzAction::Deny
    } else {
        AuthzAction::Allow
    };
    Authorization {
        default_action,
        policies,
    }
}

/// One proxy's config from a view: the workload's inbound side and every
/// destination, as discovery would assemble it before slicing (for checks
/// and `remora check`).
pub fn assemble(view: &MeshView, workload: Option<&str>) -> remora_api::MeshConfig {
    let mut backends = BTreeMap::new();
    let mut services = Vec::new();
    for dest in view.destinations.values() {
        services.push(dest.service.clone());
        backends.extend(dest.backends.clone());
    }
    remora_api::MeshConfig {
        version: view.version.to_string(),
        outbound: remora_api::OutboundConfig { services },
        inbound: workload
            .and_then(|w| view.workloads.get(w))
            .map(|w| w.inbound.clone())
            .unwrap_or_default(),
        backends,
        http: view.globals.http.clone(),
        global_rules: view.globals.global_rules.clone(),
        consumers: view.globals.consumers.clone(),
    }
}

#[cfg(test)]
mod tests;
