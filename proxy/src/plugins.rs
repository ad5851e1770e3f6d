//! The plugin runtime: APISIX-style plugins in the HTTP request path, both
//! directions.
//!
//! This module owns the phase trait ([`Plugin`]), the per-request context
//! ([`Ctx`]), the registry of known plugins, how the `plugins` maps of a
//! config compile into ready-to-run chains (global rules, service or inbound
//! port, route, consumer), and running a chain's phases in APISIX's order.
//! It does not own routing (the chain is picked by the route the request
//! matched) nor forwarding. Each plugin is one file under `plugins/`.
//!
//! Phases, in order (docs/plugins.md draws them):
//! `rewrite` → (consumer merge) → `access` → `before_proxy` → upstream →
//! `header_filter` → `body_filter` → `log`. The first three may end the
//! request with a response; `log` runs for every request, ended early or
//! not, and is synchronous: a plugin that does I/O there hands it off.
//! Phases are plain method calls; a plugin that must wait returns
//! [`Flow::Wait`], so only waiting plugins pay for a boxed future.

mod access_log;
mod api_breaker;
mod basic_auth;
mod batch;
mod consumer_restriction;
mod cors;
mod edits;
mod expr;
mod fault_injection;
mod file_logger;
mod hmac_auth;
mod http_logger;
mod ip_restriction;
mod jwt_auth;
mod key_auth;
mod limit_conn;
mod limit_count;
mod limit_req;
mod limits;
mod log_format;
mod opentelemetry;
mod prometheus;
mod proxy_rewrite;
mod request_id;
mod response_rewrite;
#[cfg(test)]
mod testing;
mod uri_blocker;
mod vars;

// The second set of security and traffic plugins.
mod anonymous;
mod csrf;
mod proxy_mirror;
mod referer_restriction;
mod traffic_split;
mod ua_restriction;

pub(crate) use proxy_mirror::MirrorTarget;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, request, response, HeaderName, HeaderValue, Response, StatusCode};
use remora_api::{MeshConfig, Plugins};
use serde::de::DeserializeOwned;

use crate::body::{full, Body};
use crate::direction::Direction;
use crate::metrics::Metrics;
use crate::route::{RouteError, RouteTable};

/// The header that tells the app which consumer authenticated; a client's
/// own is stripped at admission.
pub(crate) const CONSUMER_HEADER: HeaderName = HeaderName::from_static("x-remora-consumer");

/// What a phase tells the runtime.
pub(crate) enum Flow {
    /// Go on with the next plugin.
    Continue,
    /// End the request with this response; the remaining request phases
    /// and the upstream are skipped, the response phases and `log` run.
    Respond(Response<Body>),
    /// Go on, with these headers for the response (what a waiting plugin
    /// learnt, e.g. a remote counter's quota).
    ContinueWith(Vec<(HeaderName, HeaderValue)>),
    /// Wait for this, then act on what it says (e.g. a delay, a remote
    /// counter).
    Wait(Pin<Box<dyn Future<Output = Flow> + Send>>),
}

impl fmt::Debug for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flow::Continue => f.write_str("Continue"),
            Flow::ContinueWith(h) => write!(f, "ContinueWith({} headers)", h.len()),
            Flow::Respond(r) => write!(f, "Respond({})", r.status()),
            Flow::Wait(_) => f.write_str("Wait"),
        }
    }
}

/// The phase trait. Every method has a no-op default; a plugin overrides
/// the phases it acts in. A compiled plugin is shared by every request of
/// the route it is attached to, so per-request state goes in [`Ctx`].
pub(crate) trait Plugin: Send + Sync + fmt::Debug {
    /// Before anything else; authentication runs here, as in APISIX.
    fn rewrite(&self, _ctx: &mut Ctx<'_>, _req: &mut request::Parts) -> Flow {
        Flow::Continue
    }
    /// After the consumer's plugins merged in: access control, limits.
    fn access(&self, _ctx: &mut Ctx<'_>, _req: &mut request::Parts) -> Flow {
        Flow::Continue
    }
    /// Right before the request goes upstream (the backend is chosen).
    fn before_proxy(&self, _ctx: &mut Ctx<'_>, _req: &mut request::Parts) -> Flow {
        Flow::Continue
    }
    /// The response head, whoever made it (upstream, proxy, a plugin).
    fn header_filter(&self, _ctx: &mut Ctx<'_>, _res: &mut response::Parts) {}
    /// The response body; a plugin may wrap or replace it.
    fn body_filter(&self, _ctx: &mut Ctx<'_>, body: Body) -> Body {
        body
    }
    /// Once the response is ready, for every request. Must not block.
    fn log(&self, _ctx: &Ctx<'_>, _entry: &LogEntry<'_>) {}
}

/// What `log` learns about the finished exchange.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogEntry<'a> {
    pub(crate) status: StatusCode,
    /// From the request's arrival to its response head.
    pub(crate) latency: Duration,
    /// The response's headers, as the client gets them.
    pub(crate) headers: &'a http::HeaderMap,
    /// The endpoint that answered, when one did.
    pub(crate) upstream: Option<SocketAddr>,
}

/// The endpoint that answered a request, put on the response by the
/// forwarder, for `log`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamAddr(pub(crate) SocketAddr);

/// One plugin of a chain, with what the registry knows about it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) name: &'static str,
    pub(crate) priority: i32,
    /// Its `log` needs the request as it arrived ([`Ctx::request`]).
    records: bool,
    plugin: Arc<dyn Plugin>,
}

/// Plugins in the order they run: highest priority first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chain(Arc<[Entry]>);

impl Chain {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a plugin of the chain logs the request as it arrived.
    fn records(&self) -> bool {
        self.0.iter().any(|e| e.records)
    }

    #[cfg(test)]
    pub(crate) fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|e| e.name)
    }

    /// `base`'s plugins with `over`'s winning for the same name, by
    /// priority. Shared plugins stay shared (a service's limit counts
    /// across its routes).
    fn merged(base: &[Entry], over: &[Entry]) -> Self {
        let mut by_name: BTreeMap<&'static str, Entry> = BTreeMap::new();
        for e in base.iter().chain(over) {
            by_name.insert(e.name, e.clone());
        }
        let mut entries: Vec<Entry> = by_name.into_values().collect();
        entries.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(b.name)));
        Chain(entries.into())
    }
}

/// An authenticated caller: `consumers[]` compiled.
#[derive(Debug)]
pub(crate) struct Consumer {
    pub(crate) name: Arc<str>,
    header: HeaderValue,
    /// Its plugins other than credentials, which merge over the route's.
    plugins: Vec<Entry>,
}

/// Every consumer, and the credential tables the auth plugins look in.
#[derive(Debug, Default)]
pub(crate) struct Consumers {
    /// By username, for `anonymous_consumer`.
    pub(crate) by_name: HashMap<Arc<str>, Arc<Consumer>>,
    pub(crate) key_auth: HashMap<String, Arc<Consumer>>,
    pub(crate) basic_auth: basic_auth::Users,
    pub(crate) jwt: jwt_auth::Keys,
    pub(crate) hmac: hmac_auth::Keys,
}

/// One inbound port's plugins: its own, and its routes'.
#[derive(Debug)]
pub(crate) struct InboundPlugins {
    routes: RouteTable,
    /// By route index; the last is the port's own chain (no route matched).
    chains: Vec<Chain>,
    /// Route labels, by index, for metrics and logs.
    labels: Vec<Arc<str>>,
}

impl InboundPlugins {
    /// Whether `label` names one of this port's routes.
    pub(crate) fn has_route(&self, label: &str) -> bool {
        self.labels.iter().any(|l| !l.is_empty() && &**l == label)
    }

    /// The chain for a request to this port, and the route's label.
    pub(crate) fn select(&self, req: &request::Parts) -> (&Chain, Arc<str>) {
        let index = self
            .routes
            .select(req)
            .map_or(self.chains.len() - 1, |s| s.route_index);
        match (self.chains.get(index), self.labels.get(index)) {
            (Some(chain), Some(label)) => (chain, label.clone()),
            _ => (&self.chains[self.chains.len() - 1], Arc::from("")),
        }
    }
}

/// The plugin parts of a snapshot that are not per service.
#[derive(Debug, Default)]
pub(crate) struct Compiled {
    pub(crate) global: Chain,
    pub(crate) consumers: Consumers,
    pub(crate) inbound: HashMap<u16, InboundPlugins>,
}

impl Compiled {
    pub(crate) fn inbound_port(&self, port: u16) -> Option<&InboundPlugins> {
        self.inbound.get(&port)
    }
}

/// What compiling a plugin may need from the process.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    apisix: prometheus::ApisixMetrics,
    /// `remora_plugin_degraded_total{plugin}`: requests a plugin let
    /// through (or refused) because what it depends on did not answer.
    degraded: ::prometheus::IntCounterVec,
    /// `remora_plugin_dropped_total{plugin, reason}`: log entries and spans
    /// a plugin gave up on (its queue full, its endpoint down).
    dropped: ::prometheus::IntCounterVec,
    /// The config's backend and consumer names, for plugins that refer to
    /// them (traffic-split's `upstream_id`, `anonymous_consumer`).
    names: Arc<Names>,
    /// `remora_plugin_body_skipped_total{plugin,reason}`.
    body_skipped: ::prometheus::IntCounterVec,
    /// Check only (remora-cp): configs are compiled to be checked, nothing
    /// is started and nothing on this host is opened.
    checking: bool,
}

/// Names a config defines.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Names {
    backends: std::collections::BTreeSet<String>,
    consumers: std::collections::BTreeSet<String>,
}

impl Names {
    pub(crate) fn of(config: &MeshConfig) -> Self {
        Names {
            backends: config.backends.keys().cloned().collect(),
            consumers: config
                .consumers
                .iter()
                .map(|c| c.username.clone())
                .collect(),
        }
    }
}

impl Env {
    /// Registers APISIX's metrics beside Remora's, once per process.
    pub(crate) fn new(metrics: &Metrics) -> Self {
        Env {
            apisix: prometheus::ApisixMetrics::register(metrics),
            degraded: prometheus::degraded(metrics),
            dropped: prometheus::dropped(metrics),
            names: Arc::default(),
            body_skipped: response_rewrite::body_skipped(metrics),
            checking: false,
        }
    }

    /// An environment that only checks: its metrics are in a registry of
    /// its own that nothing serves, made once per process.
    fn checking(names: Names) -> Self {
        static BASE: std::sync::OnceLock<Env> = std::sync::OnceLock::new();
        let base = BASE.get_or_init(|| Env {
            checking: true,
            ..Env::new(&Metrics::new())
        });
        base.with_names(names)
    }

    /// Whether configs are only checked (see [`check`]): a plugin that
    /// would start a task or open a file of the proxy's host skips that.
    pub(crate) fn is_checking(&self) -> bool {
        self.checking
    }

    /// This environment for compiling `config`, which defines `names`.
    pub(crate) fn with_names(&self, names: Names) -> Self {
        Env {
            names: Arc::new(names),
            ..self.clone()
        }
    }

    pub(crate) fn has_consumer(&self, name: &str) -> bool {
        self.names.consumers.contains(name)
    }

    pub(crate) fn has_backend(&self, name: &str) -> bool {
        self.names.backends.contains(name)
    }

    /// Drops APISIX's series of the services and routes
    /// `keep(service, route)` says are gone.
    pub(crate) fn retain_series(&self, keep: &dyn Fn(&str, &str) -> bool) {
        self.apisix.retain(keep);
    }
}

/// A plugin config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PluginError {
    #[error("{at}.{plugin}: unknown plugin {plugin:?}; known plugins: {known}")]
    Unknown {
        at: String,
        plugin: String,
        known: String,
    },
    #[error("{at}.{plugin}{field}: plugin {plugin}: {message}")]
    Field {
        at: String,
        plugin: &'static str,
        /// `.count`, `.vars[0]`; empty for the config as a whole.
        field: String,
        message: String,
    },
    #[error("inbound.ports[{port}].{source}")]
    Route {
        port: usize,
        #[source]
        source: RouteError,
    },
}

/// What is wrong with one field of one plugin's config, before the
/// runtime says where the config sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    /// `.count`, or empty for the whole config.
    pub(crate) field: String,
    pub(crate) message: String,
}

impl Fault {
    pub(crate) fn new(field: &str, message: impl Into<String>) -> Self {
        Fault {
            field: if field.is_empty() {
                String::new()
            } else {
                format!(".{field}")
            },
            message: message.into(),
        }
    }
}

/// Parses a plugin's config into its serde type, naming the field at fault.
pub(crate) fn parse<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, Fault> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        Fault::new(&field, e.into_inner().to_string())
    })
}

/// A header name from config, for the field `field`.
pub(crate) fn header_name(field: &str, text: &str) -> Result<HeaderName, Fault> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| Fault::new(field, format!("{text:?} is not a header name")))
}

/// A value that must lie in `range`, for config checks.
pub(crate) fn in_range<T: PartialOrd + fmt::Display>(
    field: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), Fault> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(Fault::new(
            field,
            format!(
                "{value} is out of range: {} to {}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// How the registry compiles one plugin.
type CompileFn = fn(&serde_json::Value, &Env) -> Result<Arc<dyn Plugin>, Fault>;
/// How an auth plugin files one consumer's credential.
type CredentialFn = fn(&serde_json::Value, &Arc<Consumer>, &mut Consumers) -> Result<(), Fault>;

/// A known plugin: APISIX's name and default priority, its config's JSON
/// Schema, and how its configs compile.
pub(crate) struct Descriptor {
    pub(crate) name: &'static str,
    pub(crate) priority: i32,
    #[cfg_attr(not(test), allow(dead_code))] // For docs and editors.
    pub(crate) schema: fn() -> serde_json::Value,
    compile: CompileFn,
    /// Auth plugins: the consumer side (`consumers[].plugins.<name>`).
    credential: Option<(CredentialFn, fn() -> serde_json::Value)>,
    /// Loggers: the runtime keeps the request as it arrived for `log`.
    records: bool,
}

impl Descriptor {
    /// A plugin that takes no consumer config.
    const fn new(
        name: &'static str,
        priority: i32,
        schema: fn() -> serde_json::Value,
        compile: CompileFn,
    ) -> Self {
        Descriptor {
            name,
            priority,
            schema,
            compile,
            credential: None,
            records: false,
        }
    }

    /// A logger: `log` sees the request as it arrived ([`Ctx::request`]).
    const fn recording(self) -> Self {
        Descriptor {
            records: true,
            ..self
        }
    }

    /// An auth plugin: consumers carry its credential.
    const fn auth(self, file: CredentialFn, schema: fn() -> serde_json::Value) -> Self {
        Descriptor {
            credential: Some((file, schema)),
            ..self
        }
    }
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Descriptor")
            .field("name", &self.name)
            .field("priority", &self.priority)
            .finish()
    }
}

/// The JSON Schema of `T`, for a [`Descriptor`].
fn schema_of<T: schemars::JsonSchema>() -> serde_json::Value {
    schemars::schema_for!(T).to_value()
}

/// Every plugin the proxy knows.
pub(crate) const REGISTRY: &[Descriptor] = &[
    request_id::DESCRIPTOR,
    fault_injection::DESCRIPTOR,
    cors::DESCRIPTOR,
    ip_restriction::DESCRIPTOR,
    uri_blocker::DESCRIPTOR,
    hmac_auth::DESCRIPTOR,
    basic_auth::DESCRIPTOR,
    jwt_auth::DESCRIPTOR,
    key_auth::DESCRIPTOR,
    consumer_restriction::DESCRIPTOR,
    proxy_rewrite::DESCRIPTOR,
    api_breaker::DESCRIPTOR,
    limit_conn::DESCRIPTOR,
    limit_count::DESCRIPTOR,
    limit_req::DESCRIPTOR,
    response_rewrite::DESCRIPTOR,
    prometheus::DESCRIPTOR,
    // Observability: traces and access logs.
    opentelemetry::DESCRIPTOR,
    http_logger::DESCRIPTOR,
    file_logger::DESCRIPTOR,
    // The second set of security and traffic plugins.
    ua_restriction::DESCRIPTOR,
    referer_restriction::DESCRIPTOR,
    csrf::DESCRIPTOR,
    proxy_mirror::DESCRIPTOR,
    traffic_split::DESCRIPTOR,
];

fn descriptor(name: &str) -> Option<&'static Descriptor> {
    REGISTRY.iter().find(|d| d.name == name)
}

fn unknown(at: &str, plugin: &str) -> PluginError {
    let mut known: Vec<&str> = REGISTRY.iter().map(|d| d.name).collect();
    known.sort_unstable();
    PluginError::Unknown {
        at: at.to_owned(),
        plugin: plugin.to_owned(),
        known: known.join(", "),
    }
}

/// Compiles one `plugins` map found at `at` (e.g.
/// `outbound.services[0].plugins`), unsorted.
pub(crate) fn compile_layer(
    at: &str,
    plugins: &Plugins,
    env: &Env,
) -> Result<Vec<Entry>, PluginError> {
    let mut entries = Vec::with_capacity(plugins.len());
    for (name, value) in plugins {
        let d = descriptor(name).ok_or_else(|| unknown(at, name))?;
        let plugin = (d.compile)(value, env).map_err(|f| PluginError::Field {
            at: at.to_owned(),
            plugin: d.name,
            field: f.field,
            message: f.message,
        })?;
        entries.push(Entry {
            name: d.name,
            priority: d.priority,
            records: d.records,
            plugin,
        });
    }
    Ok(entries)
}

/// A chain of one or more layers, later layers winning per plugin name.
pub(crate) fn chain_of(base: &[Entry], over: &[Entry]) -> Chain {
    Chain::merged(base, over)
}

/// Compiles global rules, consumers and inbound ports.
pub(crate) fn compile(config: &MeshConfig, env: &Env) -> Result<Compiled, PluginError> {
    let env = &env.with_names(Names::of(config));
    let mut global = Vec::new();
    for (i, rule) in config.global_rules.iter().enumerate() {
        let layer = compile_layer(&format!("globalRules[{i}].plugins"), &rule.plugins, env)?;
        // Two rules with the same plugin: the later one wins, as APISIX
        // would run both with one config each; one config is clearer.
        global = Chain::merged(&global, &layer).0.to_vec();
    }
    let consumers = compile_consumers(&config.consumers, env, &|i| format!("consumers[{i}]"))?;
    let mut inbound = HashMap::new();
    for (pi, port) in config.inbound.ports.iter().enumerate() {
        if port.plugins.is_empty() && port.routes.iter().all(|r| r.plugins.is_empty()) {
            continue;
        }
        let at = format!("inbound.ports[{pi}]");
        let own = compile_layer(&format!("{at}.plugins"), &port.plugins, env)?;
        let routes = RouteTable::new(&port.routes)
            .map_err(|source| PluginError::Route { port: pi, source })?;
        let mut chains = Vec::with_capacity(port.routes.len() + 1);
        let mut labels = Vec::with_capacity(port.routes.len() + 1);
        for (ri, route) in port.routes.iter().enumerate() {
            let layer = compile_layer(&format!("{at}.routes[{ri}].plugins"), &route.plugins, env)?;
            chains.push(Chain::merged(&own, &layer));
            labels.push(Arc::from(route.name.as_deref().unwrap_or_default()));
        }
        chains.push(Chain::merged(&own, &[]));
        labels.push(Arc::from(""));
        inbound.insert(
            port.port,
            InboundPlugins {
                routes,
                chains,
                labels,
            },
        );
    }
    Ok(Compiled {
        global: Chain::merged(&global, &[]),
        consumers,
        inbound,
    })
}

/// Compiles `list`; `at(i)` names where consumer `i` sits.
fn compile_consumers(
    list: &[remora_api::Consumer],
    env: &Env,
    at: &dyn Fn(usize) -> String,
) -> Result<Consumers, PluginError> {
    let mut consumers = Consumers::default();
    for (ci, c) in list.iter().enumerate() {
        let place = at(ci);
        let at = format!("{place}.plugins");
        let mut plugins = Vec::new();
        let mut credentials = Vec::new();
        for (name, value) in &c.plugins {
            let d = descriptor(name).ok_or_else(|| unknown(&at, name))?;
            match d.credential {
                Some((file, _)) => credentials.push((d, file, value)),
                None => {
                    let single = BTreeMap::from([(name.clone(), value.clone())]);
                    plugins.extend(compile_layer(&at, &single, env)?);
                }
            }
        }
        let header = HeaderValue::from_str(&c.username).map_err(|_| PluginError::Field {
            at: place.clone(),
            plugin: "consumer",
            field: ".username".into(),
            message: "not a header value".into(),
        })?;
        let consumer = Arc::new(Consumer {
            name: Arc::from(c.username.as_str()),
            header,
            plugins,
        });
        consumers
            .by_name
            .insert(consumer.name.clone(), consumer.clone());
        for (d, file, value) in credentials {
            file(value, &consumer, &mut consumers).map_err(|f| PluginError::Field {
                at: at.clone(),
                plugin: d.name,
                field: f.field,
                message: f.message,
            })?;
        }
    }
    Ok(consumers)
}

/// Plugin configs checked as the proxy compiles them, for remora-cp: the
/// same registry, schemas and range checks, so a bad field is caught before
/// any proxy sees it. What only the proxy's host can tell (a log file that
/// cannot be opened there) is left to the proxy.
#[derive(Debug)]
pub struct PluginCheck {
    env: Env,
}

impl PluginCheck {
    /// A check for configs that may refer to these backends
    /// (traffic-split's `upstream_id`) and consumers (`anonymous_consumer`).
    pub fn new(
        backends: impl IntoIterator<Item = String>,
        consumers: impl IntoIterator<Item = String>,
    ) -> Self {
        PluginCheck {
            env: Env::checking(Names {
                backends: backends.into_iter().collect(),
                consumers: consumers.into_iter().collect(),
            }),
        }
    }

    /// Checks one `plugins` map (a service's, a route's, a policy's); `at`
    /// names where it sits, e.g. `spec.plugins`. The error names the
    /// plugin and the field.
    pub fn plugins(&self, at: &str, plugins: &Plugins) -> Result<(), String> {
        compile_layer(at, plugins, &self.env)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Checks one consumer's plugins, credentials included; `at` names
    /// the consumer, e.g. `spec` (its plugins are `spec.plugins`).
    pub fn consumer(&self, at: &str, consumer: &remora_api::Consumer) -> Result<(), String> {
        compile_consumers(std::slice::from_ref(consumer), &self.env, &|_| {
            at.to_owned()
        })
        .map(drop)
        .map_err(|e| e.to_string())
    }
}

/// What a check compiles a plugin into when building the real one would
/// touch the proxy's host (see [`Env::is_checking`]); it never runs.
#[derive(Debug)]
struct Checked;

impl Plugin for Checked {}

/// A JSON error response in APISIX's shape: `{"message": "..."}`.
pub(crate) fn reject(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string() + "\n";
    json_response(status, body)
}

/// Marks a value that is new on every request (a request id, a trace
/// context, a remaining quota) so that HPACK never adds it to an HTTP/2
/// connection's dynamic table (RFC 7541 §6.2.3; h2 calls it "sensitive").
/// Indexed, each one would evict entries that are reused (RFC 7541 §7.1.3
/// advises against indexing such values), and the encoder would walk its
/// same-name entries on every request. HTTP/1.1 ignores the mark.
pub(crate) fn unindexed(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// A response with a JSON body (text as given).
pub(crate) fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// One request's plugin state, shared by every plugin on its path.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    #[allow(dead_code)] // For plugins that act by direction.
    pub(crate) direction: Direction,
    pub(crate) remote_addr: SocketAddr,
    /// The matched service (outbound) and route, empty when none.
    pub(crate) service: Arc<str>,
    pub(crate) route: Arc<str>,
    /// Who authenticated, once an auth plugin said so.
    pub(crate) consumer: Option<Arc<Consumer>>,
    /// Outbound: the backend traffic-split chose instead of the route's.
    pub(crate) upstream: Option<Arc<str>>,
    /// Outbound: where proxy-mirror sends a copy.
    pub(crate) mirror: Option<Arc<MirrorTarget>>,
    compiled: &'a Compiled,
    /// The service/port + route chain (consumer-merged after `rewrite`).
    chain: Chain,
    /// Headers plugins put on the response, whoever makes it: replacing
    /// (true) or only where the response has none (false).
    response_headers: Vec<(HeaderName, HeaderValue, bool)>,
    /// When the request arrived.
    started: Instant,
    /// Plugins' notes to their own later phases (which matched, ...).
    marks: Vec<&'static str>,
    /// What plugins hold until the request is over, finished or dropped
    /// (a limit-conn slot).
    held: Vec<Held>,
    /// The request as it arrived, kept only when a logger is on its path.
    pub(crate) request: Option<Box<access_log::Request>>,
    /// This hop's W3C trace context, once opentelemetry set it.
    pub(crate) trace: Option<opentelemetry::Hop>,
    /// Log entries waiting for the response body's size; empty (and no
    /// counting) unless a logger needs it.
    unsent: Mutex<Vec<access_log::Unsent>>,
}

/// Something a plugin holds for the rest of a request; dropped with it.
pub(crate) struct Held(#[allow(dead_code)] Box<dyn Send>);

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        direction: Direction,
        remote_addr: SocketAddr,
        compiled: &'a Compiled,
    ) -> Self {
        Ctx {
            direction,
            remote_addr,
            service: Arc::default(),
            route: Arc::default(),
            consumer: None,
            upstream: None,
            mirror: None,
            compiled,
            chain: Chain::default(),
            response_headers: Vec::new(),
            started: Instant::now(),
            marks: Vec::new(),
            held: Vec::new(),
            request: None,
            trace: None,
            unsent: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn consumers(&self) -> &Consumers {
        &self.compiled.consumers
    }

    /// The consumer's name, if one authenticated.
    pub(crate) fn consumer_name(&self) -> Option<&str> {
        self.consumer.as_deref().map(|c| &*c.name)
    }

    /// Sets a header on the response, whoever makes it.
    pub(crate) fn set_response_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.response_headers.push((name, value, true));
    }

    /// Sets a header on the response unless the response has it already.
    pub(crate) fn default_response_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.response_headers.push((name, value, false));
    }

    /// Notes `mark` for a later phase of the same plugin.
    pub(crate) fn mark(&mut self, mark: &'static str) {
        self.marks.push(mark);
    }

    /// Keeps `guard` until the request is over (answered, or dropped when
    /// the client goes away), so a slot it stands for is always given back.
    pub(crate) fn hold(&mut self, guard: impl Send + 'static) {
        self.held.push(Held(Box::new(guard)));
    }

    /// Whether `mark` was noted earlier in this request.
    pub(crate) fn marked(&self, mark: &'static str) -> bool {
        self.marks.contains(&mark)
    }

    /// Queues `entry` once the response body is over (ended, failed or
    /// dropped), with the bytes it sent. From `log`.
    pub(crate) fn after_body(&self, entry: access_log::Unsent) {
        self.unsent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(entry);
    }

    /// Entries waiting for the body, taken (tests send them by hand).
    pub(crate) fn take_unsent(&mut self) -> Vec<access_log::Unsent> {
        std::mem::take(
            self.unsent
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Keeps the request as it is now for the loggers, once.
    fn record(&mut self, req: &request::Parts) {
        if self.request.is_none() {
            self.request = Some(Box::new(access_log::Request::of(req)));
        }
    }

    /// Whether any plugin would run for this request.
    fn idle(&self) -> bool {
        self.compiled.global.is_empty() && self.chain.is_empty()
    }

    /// Runs `rewrite`, merges the consumer's plugins, runs `access`: global
    /// rules first in each phase, then `chain`. `Some` ends the request.
    pub(crate) async fn enter(
        &mut self,
        chain: &Chain,
        req: &mut request::Parts,
    ) -> Option<Response<Body>> {
        self.chain = chain.clone();
        if self.idle() {
            return None;
        }
        let global = self.compiled.global.clone();
        if global.records() || self.chain.records() {
            self.record(req);
        }
        if let Some(r) = self.run(&global, req, Phase::Rewrite).await {
            return Some(r);
        }
        let chain = self.chain.clone();
        if let Some(r) = self.run(&chain, req, Phase::Rewrite).await {
            return Some(r);
        }
        if let Some(consumer) = self.consumer.clone() {
            req.headers.insert(CONSUMER_HEADER, consumer.header.clone());
            if !consumer.plugins.is_empty() {
                // The consumer's own plugins: their rewrite runs now, then
                // every plugin's access on the merged set.
                let own = Chain::merged(&consumer.plugins, &[]);
                if let Some(r) = self.run(&own, req, Phase::Rewrite).await {
                    return Some(r);
                }
                self.chain = Chain::merged(&self.chain.0, &consumer.plugins);
                if self.chain.records() {
                    self.record(req);
                }
            }
        }
        self.run_all(req, Phase::Access).await
    }

    /// Runs `before_proxy`. `Some` ends the request.
    pub(crate) async fn before_proxy(
        &mut self,
        req: &mut request::Parts,
    ) -> Option<Response<Body>> {
        if self.idle() {
            return None;
        }
        self.run_all(req, Phase::BeforeProxy).await
    }

    /// [`Ctx::enter`] then [`Ctx::before_proxy`], for a request that goes
    /// upstream with no backend to choose (inbound, pass-through).
    pub(crate) async fn request_phases(
        &mut self,
        chain: &Chain,
        req: &mut request::Parts,
    ) -> Option<Response<Body>> {
        match self.enter(chain, req).await {
            Some(r) => Some(r),
            None => self.before_proxy(req).await,
        }
    }

    /// One phase of the global rules, then of the request's chain.
    async fn run_all(&mut self, req: &mut request::Parts, phase: Phase) -> Option<Response<Body>> {
        let global = self.compiled.global.clone();
        if let Some(r) = self.run(&global, req, phase).await {
            return Some(r);
        }
        let chain = self.chain.clone();
        self.run(&chain, req, phase).await
    }

    async fn run(
        &mut self,
        chain: &Chain,
        req: &mut request::Parts,
        phase: Phase,
    ) -> Option<Response<Body>> {
        for entry in chain.0.iter() {
            let mut flow = match phase {
                Phase::Rewrite => entry.plugin.rewrite(self, req),
                Phase::Access => entry.plugin.access(self, req),
                Phase::BeforeProxy => entry.plugin.before_proxy(self, req),
            };
            loop {
                match flow {
                    Flow::Continue => break,
                    Flow::ContinueWith(headers) => {
                        for (name, value) in headers {
                            self.set_response_header(name, value);
                        }
                        break;
                    }
                    Flow::Respond(r) => return Some(r),
                    Flow::Wait(wait) => flow = wait.await,
                }
            }
        }
        None
    }

    /// Runs `header_filter`, `body_filter` and `log` on the response the
    /// client will get, whoever made it.
    pub(crate) fn respond(&mut self, response: Response<Body>) -> Response<Body> {
        if self.idle() {
            return response;
        }
        let (mut head, mut body) = response.into_parts();
        for (name, value, replace) in self.response_headers.drain(..) {
            if replace || !head.headers.contains_key(&name) {
                head.headers.insert(name, value);
            }
        }
        let global = self.compiled.global.clone();
        let chain = self.chain.clone();
        for entry in global.0.iter().chain(chain.0.iter()) {
            entry.plugin.header_filter(self, &mut head);
        }
        for entry in global.0.iter().chain(chain.0.iter()) {
            body = entry.plugin.body_filter(self, body);
        }
        let log = LogEntry {
            status: head.status,
            latency: self.started.elapsed(),
            headers: &head.headers,
            upstream: head.extensions.get::<UpstreamAddr>().map(|u| u.0),
        };
        for entry in global.0.iter().chain(chain.0.iter()) {
            entry.plugin.log(self, &log);
        }
        let unsent = self.take_unsent();
        if !unsent.is_empty() {
            // Only a measured response pays for the count.
            let head_len = access_log::response_head_len(&head);
            body = crate::body::counted(body, move |sent| {
                let sent = access_log::Sent {
                    body: sent,
                    head: head_len,
                };
                for entry in unsent {
                    entry.send(sent);
                }
            });
        }
        if let Some(consumer) = self.consumer_name() {
            tracing::debug!(
                consumer,
                status = head.status.as_u16(),
                route = &*self.route,
                "request authenticated"
            );
        }
        Response::from_parts(head, body)
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Rewrite,
    Access,
    BeforeProxy,
}

/// Every plugin's config schema by name, for docs and editors.
#[cfg(test)]
pub(crate) fn schemas() -> BTreeMap<&'static str, serde_json::Value> {
    REGISTRY.iter().map(|d| (d.name, (d.schema)())).collect()
}

#[cfg(test)]
mod tests;
