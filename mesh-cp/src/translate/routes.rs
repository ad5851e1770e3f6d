//! Route attachment: GAMMA HTTPRoutes and GRPCRoutes (a Service as their
//! parentRef) become the routes of that Service's ports.
//!
//! This module owns the order Gateway API gives routes (oldest first, then
//! by `<namespace>/<name>`), match conflicts between routes of one kind,
//! the rule that a GRPCRoute takes a Service port from HTTPRoutes
//! (GEP-1426, "Route types"), and resolving backendRefs and mirror targets.
//! A GRPCRoute method match becomes the model's `grpcMethod`, which the
//! proxy matches against the `/<service>/<method>` path with GRPCRoute's
//! precedence; choosing a route for a request is the proxy's
//! (`proxy/src/route/select.rs`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use remora_api::{Backend, Route, RouteFilter, RouteMatch};

use super::gateway::{self, GrpcRoute, GrpcRouteFilter, HttpRoute, ParentRef, ServiceRef};
use super::{age_key, backend_key, key_of, split, Key, PluginAttachments, Problem, Store};

const GRPC_ROUTE: &str = "GRPCRoute";
const HTTP_ROUTE: &str = "HTTPRoute";

/// A route object of either kind, as attachment reads it.
struct RouteObject<'a> {
    kind: &'static str,
    meta: &'a ObjectMeta,
    parent_refs: &'a [ParentRef],
    rules: Vec<Rule<'a>>,
}

/// One rule in the model's terms, its references still unresolved.
struct Rule<'a> {
    name: Option<&'a str>,
    matches: Vec<RouteMatch>,
    filters: Vec<Filter<'a>>,
    backend_refs: &'a [gateway::BackendRef],
    timeouts: remora_api::Timeouts,
    retry: Option<remora_api::Retry>,
    /// Why the rule cannot be used (it is left out and reported).
    invalid: Option<String>,
}

enum Filter<'a> {
    /// Already in the model's shape.
    Model(RouteFilter),
    /// A mirror to a Service port, resolved to a backend on attachment.
    Mirror(&'a gateway::Mirror),
}

impl<'a> RouteObject<'a> {
    fn http(route: &'a HttpRoute) -> Self {
        let rules = route
            .spec
            .rules
            .iter()
            .map(|rule| Rule {
                name: rule.name.as_deref(),
                matches: rule.matches.clone(),
                filters: rule.filters.iter().cloned().map(Filter::Model).collect(),
                backend_refs: &rule.backend_refs,
                timeouts: rule.timeouts.unwrap_or_default(),
                retry: rule.retry.clone(),
                invalid: None,
            })
            .collect();
        Self {
            kind: HTTP_ROUTE,
            meta: &route.metadata,
            parent_refs: &route.spec.parent_refs,
            rules,
        }
    }

    fn grpc(route: &'a GrpcRoute) -> Self {
        let rules = route
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let invalid = rule
                    .matches
                    .iter()
                    .position(|m| {
                        m.method
                            .as_ref()
                            .is_some_and(|m| m.service.is_none() && m.method.is_none())
                    })
                    .map(|j| {
                        format!("rules[{i}].matches[{j}].method: set service, method or both")
                    });
                Rule {
                    name: rule.name.as_deref(),
                    matches: rule
                        .matches
                        .iter()
                        .map(|m| RouteMatch {
                            grpc_method: m.method.clone(),
                            headers: m.headers.clone(),
                            ..RouteMatch::default()
                        })
                        .collect(),
                    filters: rule
                        .filters
                        .iter()
                        .map(|f| match f {
                            GrpcRouteFilter::RequestHeaderModifier {
                                request_header_modifier,
                            } => Filter::Model(RouteFilter::RequestHeaderModifier(
                                request_header_modifier.clone(),
                            )),
                            GrpcRouteFilter::ResponseHeaderModifier {
                                response_header_modifier,
                            } => Filter::Model(RouteFilter::ResponseHeaderModifier(
                                response_header_modifier.clone(),
                            )),
                            GrpcRouteFilter::RequestMirror { request_mirror } => {
                                Filter::Mirror(request_mirror)
                            }
                        })
                        .collect(),
                    backend_refs: &rule.backend_refs,
                    timeouts: remora_api::Timeouts::default(),
                    retry: None,
                    invalid,
                }
            })
            .collect();
        Self {
            kind: GRPC_ROUTE,
            meta: &route.metadata,
            parent_refs: &route.spec.parent_refs,
            rules,
        }
    }
}

/// What attachment builds: routes per (Service key, port) and which route
/// claimed each (port, match) first, for conflict reports.
#[derive(Default)]
struct Attached {
    routes: BTreeMap<(Key, u16), Vec<Route>>,
    claimed: BTreeMap<(Key, u16, String), Key>,
}

/// Routes per (Service key, port), in the order Gateway API breaks ties:
/// the oldest route's rules first, then by name. A port that a GRPCRoute
/// attaches to carries only GRPCRoutes; an HTTPRoute there is `Conflicted`.
pub(super) fn attach_routes(
    store: &Store,
    backends: &BTreeMap<String, Backend>,
    plugins: &PluginAttachments,
    problems: &mut Vec<Problem>,
) -> BTreeMap<(Key, u16), Vec<Route>> {
    let mut grpc: Vec<RouteObject<'_>> =
        store.grpc_routes.values().map(RouteObject::grpc).collect();
    grpc.sort_by_cached_key(|r| age_key(r.meta));
    let mut http: Vec<RouteObject<'_>> =
        store.http_routes.values().map(RouteObject::http).collect();
    http.sort_by_cached_key(|r| age_key(r.meta));
    let ctx = Context {
        store,
        backends,
        plugins,
    };
    let mut attached = Attached::default();
    let mut grpc_ports = BTreeSet::new();
    for route in &grpc {
        grpc_ports.extend(ctx.attach(route, &BTreeSet::new(), &mut attached, problems));
    }
    for route in &http {
        ctx.attach(route, &grpc_ports, &mut attached, problems);
    }
    attached.routes
}

struct Context<'a> {
    store: &'a Store,
    backends: &'a BTreeMap<String, Backend>,
    plugins: &'a PluginAttachments,
}

impl Context<'_> {
    /// Attaches one route to its parents, except to the Service ports in
    /// `taken` (held by a route kind that wins). Returns the ports it
    /// attached to.
    fn attach(
        &self,
        route: &RouteObject<'_>,
        taken: &BTreeSet<(Key, u16)>,
        attached: &mut Attached,
        problems: &mut Vec<Problem>,
    ) -> BTreeSet<(Key, u16)> {
        let key = key_of(route.meta);
        let (ns, route_name) = split(&key);
        let problem = |condition, reason, message| Problem {
            kind: route.kind,
            key: key.clone(),
            condition,
            reason,
            message,
        };
        let mut ports_attached = BTreeSet::new();
        if route.parent_refs.is_empty() {
            problems.push(problem(
                "Accepted",
                "NoMatchingParent",
                "the route has no parentRefs".into(),
            ));
        }
        for why in route.rules.iter().filter_map(|r| r.invalid.as_ref()) {
            problems.push(problem("Accepted", "UnsupportedValue", why.clone()));
        }
        for parent in route.parent_refs {
            let is_service = parent.kind.as_deref() == Some("Service")
                && matches!(parent.group.as_deref(), Some("" | "core"));
            if !is_service {
                continue;
            }
            let svc_key = format!(
                "{}/{}",
                parent.namespace.as_deref().unwrap_or(ns),
                parent.name
            );
            let Some(svc) = self.store.services.get(&svc_key) else {
                problems.push(problem(
                    "Accepted",
                    "NoMatchingParent",
                    format!("parentRef Service {svc_key} does not exist"),
                ));
                continue;
            };
            let ports: Vec<u16> = svc
                .spec
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .filter_map(|p| u16::try_from(p.port).ok())
                .filter(|p| parent.port.is_none_or(|want| want == *p))
                .collect();
            if ports.is_empty() {
                problems.push(problem(
                    "Accepted",
                    "NoMatchingParent",
                    format!("Service {svc_key} has no port {:?}", parent.port),
                ));
                continue;
            }
            let mut free = Vec::new();
            for port in ports {
                if taken.contains(&(svc_key.clone(), port)) {
                    problems.push(problem(
                        "Accepted",
                        "Conflicted",
                        format!(
                            "{svc_key}:{port} has a GRPCRoute, which takes the port from \
                             HTTPRoutes (GEP-1426)"
                        ),
                    ));
                } else {
                    free.push(port);
                }
            }
            for (i, rule) in route.rules.iter().enumerate() {
                if rule.invalid.is_some() {
                    continue;
                }
                let translated = Route {
                    name: Some(
                        rule.name
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("{ns}/{route_name}/rule-{i}")),
                    ),
                    matches: rule.matches.clone(),
                    filters: self.filters(ns, rule, &problem, problems),
                    backend_refs: self.backend_refs(ns, rule, &problem, problems),
                    timeouts: rule.timeouts,
                    retry: rule.retry.clone(),
                    plugins: self.plugins.get(route.kind, &key),
                };
                for port in &free {
                    for m in match_keys(&translated) {
                        let slot = (svc_key.clone(), *port, m.clone());
                        match attached.claimed.get(&slot) {
                            Some(owner) if *owner != key => problems.push(problem(
                                "Accepted",
                                "Conflicted",
                                format!(
                                    "match {m} on {svc_key}:{port} is also in the older route \
                                     {owner}, which wins"
                                ),
                            )),
                            _ => {
                                attached.claimed.insert(slot, key.clone());
                            }
                        }
                    }
                    attached
                        .routes
                        .entry((svc_key.clone(), *port))
                        .or_default()
                        .push(translated.clone());
                }
            }
            ports_attached.extend(free.into_iter().map(|p| (svc_key.clone(), p)));
        }
        ports_attached
    }

    fn backend_refs(
        &self,
        ns: &str,
        rule: &Rule<'_>,
        problem: &impl Fn(&'static str, &'static str, String) -> Problem,
        problems: &mut Vec<Problem>,
    ) -> Vec<remora_api::BackendRef> {
        let mut refs = Vec::new();
        for backend in rule.backend_refs {
            match self.resolve(ns, &backend.target) {
                Ok(name) => refs.push(remora_api::BackendRef {
                    name,
                    weight: backend.weight,
                    filters: Vec::new(),
                }),
                Err((reason, message)) => problems.push(problem("ResolvedRefs", reason, message)),
            }
        }
        refs
    }

    /// The rule's filters in the model's shape. A mirror whose target does
    /// not resolve, or whose share is not a percentage, is left out and
    /// reported: the requests themselves still go to their backends.
    fn filters(
        &self,
        ns: &str,
        rule: &Rule<'_>,
        problem: &impl Fn(&'static str, &'static str, String) -> Problem,
        problems: &mut Vec<Problem>,
    ) -> Vec<RouteFilter> {
        let mut out = Vec::new();
        for filter in &rule.filters {
            match filter {
                Filter::Model(f) => out.push(f.clone()),
                Filter::Mirror(mirror) => {
                    let percent = match (mirror.percent, mirror.fraction) {
                        (Some(p), None) if p <= 100 => p,
                        (None, None) => 100,
                        (None, Some(f)) if f.denominator > 0 && f.numerator <= f.denominator => {
                            // Rounded down to the model's whole percent.
                            u8::try_from(u64::from(f.numerator) * 100 / u64::from(f.denominator))
                                .unwrap_or(100)
                        }
                        (p, f) => {
                            problems.push(problem(
                                "Accepted",
                                "UnsupportedValue",
                                format!(
                                    "requestMirror takes percent (0 to 100) or a fraction of at \
                                     most 1, not percent {p:?} fraction {f:?}"
                                ),
                            ));
                            continue;
                        }
                    };
                    match self.resolve(ns, &mirror.backend_ref) {
                        Ok(name) => {
                            out.push(RouteFilter::RequestMirror(remora_api::RequestMirror {
                                backend_ref: remora_api::BackendObjectRef { name },
                                percent,
                            }))
                        }
                        Err((reason, message)) => {
                            problems.push(problem("ResolvedRefs", reason, message))
                        }
                    }
                }
            }
        }
        out
    }

    /// The backend a Service reference names, or a ResolvedRefs reason.
    fn resolve(&self, ns: &str, backend: &ServiceRef) -> Result<String, (&'static str, String)> {
        if backend.kind.as_deref().is_some_and(|k| k != "Service")
            || backend
                .group
                .as_deref()
                .is_some_and(|g| !g.is_empty() && g != "core")
        {
            return Err((
                "InvalidKind",
                format!("backendRef {} is not a Service", backend.name),
            ));
        }
        let target_ns = backend.namespace.as_deref().unwrap_or(ns);
        if target_ns != ns {
            return Err((
                "RefNotPermitted",
                format!(
                    "backendRef {target_ns}/{} is in another namespace (ReferenceGrant is not \
                     supported)",
                    backend.name
                ),
            ));
        }
        let svc = format!("{target_ns}/{}", backend.name);
        if !self.store.services.contains_key(&svc) {
            return Err(("BackendNotFound", format!("Service {svc} does not exist")));
        }
        let Some(port) = backend.port else {
            return Err(("UnsupportedValue", format!("backendRef {svc} needs a port")));
        };
        let name = backend_key(&svc, port);
        if !self.backends.contains_key(&name) {
            return Err((
                "BackendNotFound",
                format!("Service {svc} has no port {port}"),
            ));
        }
        Ok(name)
    }
}

/// Each match of a route as text, for conflict detection.
fn match_keys(route: &Route) -> BTreeSet<String> {
    if route.matches.is_empty() {
        return BTreeSet::from(["{}".to_owned()]);
    }
    route
        .matches
        .iter()
        .map(|m| serde_json::to_string(m).unwrap_or_default())
        .collect()
}
