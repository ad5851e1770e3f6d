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

use super::gateway::{
    self, GrpcRoute, GrpcRouteFilter, HttpRoute, HttpRouteFilter, ParentRef, ServiceRef,
};
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
    backend_refs: Vec<RuleBackend<'a>>,
    timeouts: remora_api::Timeouts,
    retry: Option<remora_api::Retry>,
}

/// A backendRef of a rule, with its own filters.
struct RuleBackend<'a> {
    target: &'a ServiceRef,
    weight: u32,
    filters: Vec<Filter<'a>>,
}

enum Filter<'a> {
    /// Already in the model's shape.
    Model(RouteFilter),
    /// A mirror to a Service port, resolved to a backend on attachment.
    Mirror(&'a gateway::Mirror),
}

/// A route kind's filter as attachment reads it.
trait AsFilter {
    fn as_filter(&self) -> Filter<'_>;
}

impl AsFilter for HttpRouteFilter {
    fn as_filter(&self) -> Filter<'_> {
        match self {
            Self::RequestHeaderModifier {
                request_header_modifier: m,
            } => model(RouteFilter::RequestHeaderModifier, m),
            Self::ResponseHeaderModifier {
                response_header_modifier: m,
            } => model(RouteFilter::ResponseHeaderModifier, m),
            Self::RequestRedirect { request_redirect } => {
                model(RouteFilter::RequestRedirect, request_redirect)
            }
            Self::UrlRewrite { url_rewrite } => model(RouteFilter::UrlRewrite, url_rewrite),
            Self::RequestMirror { request_mirror } => Filter::Mirror(request_mirror),
        }
    }
}

impl AsFilter for GrpcRouteFilter {
    fn as_filter(&self) -> Filter<'_> {
        match self {
            Self::RequestHeaderModifier {
                request_header_modifier: m,
            } => model(RouteFilter::RequestHeaderModifier, m),
            Self::ResponseHeaderModifier {
                response_header_modifier: m,
            } => model(RouteFilter::ResponseHeaderModifier, m),
            Self::RequestMirror { request_mirror } => Filter::Mirror(request_mirror),
        }
    }
}

/// A filter already in the model's shape.
fn model<'a, T: Clone>(make: fn(T) -> RouteFilter, settings: &T) -> Filter<'a> {
    Filter::Model(make(settings.clone()))
}

fn filters_of<F: AsFilter>(filters: &[F]) -> Vec<Filter<'_>> {
    filters.iter().map(AsFilter::as_filter).collect()
}

fn backends_of<F: AsFilter>(refs: &[gateway::BackendRef<F>]) -> Vec<RuleBackend<'_>> {
    refs.iter()
        .map(|r| RuleBackend {
            target: &r.target,
            weight: r.weight,
            filters: filters_of(&r.filters),
        })
        .collect()
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
                filters: filters_of(&rule.filters),
                backend_refs: backends_of(&rule.backend_refs),
                timeouts: rule.timeouts.unwrap_or_default(),
                retry: rule.retry.clone(),
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
            .map(|rule| Rule {
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
                filters: filters_of(&rule.filters),
                backend_refs: backends_of(&rule.backend_refs),
                timeouts: remora_api::Timeouts::default(),
                retry: None,
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
        // Each rule once, whatever its parents: its references resolved and
        // checked as the proxy will check it. The proxy refuses a port
        // with a route name twice: a name an earlier rule of this route has
        // leaves the later rule out (below, one another route on the port
        // has is qualified with this route's `<ns>/<name>/`).
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let translated: Vec<Route> = route
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let name = rule
                    .name
                    .map_or_else(|| format!("{ns}/{route_name}/rule-{i}"), str::to_owned);
                if let Some(first) = names.get(&name) {
                    problems.push(problem(
                        "Accepted",
                        "UnsupportedValue",
                        format!("rules[{i}].name: {name:?} is also the name of rules[{first}]"),
                    ));
                    return None;
                }
                names.insert(name.clone(), i);
                self.rule(route, i, name, rule, &key, &problem, problems)
            })
            .collect();
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
            for translated in &translated {
                for port in &free {
                    for m in match_keys(translated) {
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
                    let on_port = attached.routes.entry((svc_key.clone(), *port)).or_default();
                    let mut translated = translated.clone();
                    let taken = |r: &Route, on_port: &[Route]| {
                        on_port.iter().any(|other| other.name == r.name)
                    };
                    if taken(&translated, on_port) {
                        let name = translated.name.take().unwrap_or_default();
                        translated.name = Some(format!("{ns}/{route_name}/{name}"));
                        if taken(&translated, on_port) {
                            problems.push(problem(
                                "Accepted",
                                "Conflicted",
                                format!(
                                    "rule name {name:?} on {svc_key}:{port} is taken by an older \
                                     route"
                                ),
                            ));
                            continue;
                        }
                    }
                    on_port.push(translated);
                }
            }
            ports_attached.extend(free.into_iter().map(|p| (svc_key.clone(), p)));
        }
        ports_attached
    }

    /// One rule as a model route, or `None` when the proxy would refuse
    /// it: the model's own checks (`MeshConfig::validate`, what the proxy
    /// runs on every config it loads) run on the rule alone, and each
    /// problem is reported as `Accepted=False` `UnsupportedValue` with the
    /// rule's field. Only that rule is left out; the route's other rules
    /// attach.
    #[allow(clippy::too_many_arguments)]
    fn rule(
        &self,
        route: &RouteObject<'_>,
        i: usize,
        name: String,
        rule: &Rule<'_>,
        key: &str,
        problem: &impl Fn(&'static str, &'static str, String) -> Problem,
        problems: &mut Vec<Problem>,
    ) -> Option<Route> {
        let (filters, filter_at) = self.filters(split(key).0, &rule.filters, problem, problems);
        let mut backend_refs = Vec::new();
        let mut ref_at = Vec::new();
        for (j, backend) in rule.backend_refs.iter().enumerate() {
            match self.resolve(split(key).0, backend.target) {
                Ok(name) => {
                    let (filters, at) =
                        self.filters(split(key).0, &backend.filters, problem, problems);
                    backend_refs.push(remora_api::BackendRef {
                        name,
                        weight: backend.weight,
                        filters,
                    });
                    ref_at.push((j, at));
                }
                Err((reason, message)) => problems.push(problem("ResolvedRefs", reason, message)),
            }
        }
        let translated = Route {
            name: Some(name),
            matches: rule.matches.clone(),
            filters,
            backend_refs,
            timeouts: rule.timeouts,
            retry: rule.retry.clone(),
            plugins: self.plugins.get(route.kind, key),
        };
        let errors = check(&translated, self.backends);
        if errors.is_empty() {
            return Some(translated);
        }
        for e in errors {
            let field = field_path(route.kind, &e.path, &filter_at, &ref_at);
            problems.push(problem(
                "Accepted",
                "UnsupportedValue",
                format!("rules[{i}]{field}: {}", e.message),
            ));
        }
        None
    }

    /// Filters in the model's shape, with the index each had in the
    /// object. A mirror whose target does not resolve, or whose share is
    /// not a percentage, is left out and reported: the requests themselves
    /// still go to their backends.
    fn filters(
        &self,
        ns: &str,
        filters: &[Filter<'_>],
        problem: &impl Fn(&'static str, &'static str, String) -> Problem,
        problems: &mut Vec<Problem>,
    ) -> (Vec<RouteFilter>, Vec<usize>) {
        let (mut out, mut at) = (Vec::new(), Vec::new());
        for (i, filter) in filters.iter().enumerate() {
            match filter {
                Filter::Model(f) => {
                    out.push(f.clone());
                    at.push(i);
                }
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
                            }));
                            at.push(i);
                        }
                        Err((reason, message)) => {
                            problems.push(problem("ResolvedRefs", reason, message))
                        }
                    }
                }
            }
        }
        (out, at)
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

/// Where the model's checks put the one route of [`check`]'s config.
const PROBE: &str = "outbound.services[0].ports[0].routes[0]";

/// The model's checks on one route, alone on an HTTP port with the
/// backends it names: the problems in the route itself (its own path under
/// [`PROBE`]). Plugins are left out: they are the PluginPolicy's, checked
/// on their own.
fn check(route: &Route, backends: &BTreeMap<String, Backend>) -> Vec<remora_api::FieldError> {
    let named = route
        .backend_refs
        .iter()
        .flat_map(|b| std::iter::once(&b.name).chain(mirrors(&b.filters)))
        .chain(mirrors(&route.filters));
    let mut used = BTreeMap::new();
    for name in named {
        if let Some(b) = backends.get(name) {
            used.insert(name.clone(), b.clone());
        }
    }
    let config = remora_api::MeshConfig {
        version: "check".into(),
        outbound: remora_api::OutboundConfig {
            services: vec![remora_api::Service {
                name: "check".into(),
                addresses: Vec::new(),
                hostnames: vec!["check".into()],
                ports: vec![remora_api::ServicePort {
                    port: 80,
                    name: None,
                    protocol: remora_api::Protocol::Http,
                    routes: vec![Route {
                        plugins: remora_api::Plugins::new(),
                        ..route.clone()
                    }],
                    backend_refs: Vec::new(),
                }],
                plugins: remora_api::Plugins::new(),
            }],
        },
        inbound: remora_api::InboundConfig::default(),
        backends: used,
        http: remora_api::HttpSettings::default(),
        global_rules: Vec::new(),
        consumers: Vec::new(),
    };
    match config.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e
            .errors()
            .filter_map(|e| {
                let rest = e.path.strip_prefix(PROBE)?;
                Some(remora_api::FieldError {
                    path: rest.to_owned(),
                    message: e.message.clone(),
                })
            })
            .collect(),
    }
}

/// The backends a filter list mirrors to.
pub(super) fn mirrors(filters: &[RouteFilter]) -> impl Iterator<Item = &String> {
    filters.iter().filter_map(|f| match f {
        RouteFilter::RequestMirror(m) => Some(&m.backend_ref.name),
        _ => None,
    })
}

/// A path in the model's route (`.backendRefs[0].filters[1].x`) as the
/// route object's: list indices as the object has them (filters or refs
/// left out shift the model's), and a GRPCRoute's `method` for the model's
/// `grpcMethod`.
fn field_path(
    kind: &str,
    path: &str,
    filter_at: &[usize],
    ref_at: &[(usize, Vec<usize>)],
) -> String {
    let mut out = String::new();
    let mut rest = path;
    let mut filters = filter_at;
    while !rest.is_empty() {
        let cut = rest
            .char_indices()
            .skip(1)
            .find(|(_, c)| matches!(c, '.' | '['))
            .map_or(rest.len(), |(n, _)| n);
        let (segment, tail) = rest.split_at(cut);
        let index = tail
            .strip_prefix('[')
            .and_then(|t| t.split_once(']'))
            .and_then(|(n, t)| Some((n.parse::<usize>().ok()?, t)));
        match (segment, index) {
            (".filters", Some((n, t))) => {
                out.push_str(&format!(
                    ".filters[{}]",
                    filters.get(n).copied().unwrap_or(n)
                ));
                rest = t;
            }
            (".backendRefs", Some((n, t))) => {
                let (j, at) = ref_at.get(n).map_or((n, &[][..]), |(j, at)| (*j, &at[..]));
                out.push_str(&format!(".backendRefs[{j}]"));
                filters = at;
                rest = t;
            }
            (".grpcMethod", _) if kind == GRPC_ROUTE => {
                out.push_str(".method");
                rest = tail;
            }
            _ => {
                out.push_str(segment);
                rest = tail;
            }
        }
    }
    out
}
