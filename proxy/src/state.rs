//! Dynamic mesh config: the snapshot every request reads, and how a new
//! config becomes the next snapshot.
//!
//! A new `MeshConfig` is compiled outside any lock (route tables, service
//! indexes, backends) and swapped in whole with one atomic store. A config
//! that fails to compile is rejected as a whole; the last good snapshot stays
//! in force. Requests load the snapshot once, when they start, and finish on
//! it even if a newer one is swapped in meanwhile.
//!
//! Backends keep their runtime state across swaps: a backend whose name
//! survives keeps its balancer (endpoint stats, ejections) and its pool of
//! connections, and only its endpoint set is rebuilt.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use remora_api::{
    Backend, BackendRef, HealthCheck, HttpSettings, InboundConfig, MeshConfig, Protocol, Route,
    Service,
};
use tracing::{info, warn};

use crate::authz::Authorizer;
use crate::balance::{spawn_health_checks, Balancer};
use crate::config::{Config, INBOUND_SOURCE_V4, INBOUND_SOURCE_V6};
use crate::metrics::Metrics;
use crate::plugins::{self, Chain, PluginError};
use crate::pool::{Pool, PoolSettings};
use crate::resilience::{CircuitBreaker, RetryBudget};
use crate::route::{RouteError, RouteTable};
use crate::source::discovery::Discovery;
use crate::transport::Connector;
use crate::FastMap;
use tokio_util::task::AbortOnDropHandle;

/// Why a config was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("outbound.services[{service}].ports[{port}].{source}")]
    Route {
        service: usize,
        port: usize,
        #[source]
        source: RouteError,
    },
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// One service port, ready for requests.
#[derive(Debug)]
pub(crate) struct ServicePort {
    pub(crate) service: Arc<str>,
    pub(crate) port: u16,
    pub(crate) protocol: Protocol,
    /// The port's routes; a port with no routes but `backendRefs` gets one
    /// catch-all route to them.
    pub(crate) routes: RouteTable,
    /// A `tcp` port's backends, for connection-level balancing.
    pub(crate) tcp_backends: Vec<BackendRef>,
    /// An HTTP port with neither routes nor `backendRefs`: requests go to
    /// the original destination (counted under the service).
    pub(crate) passthrough: bool,
    /// Each route's plugins (the service's merged under the route's), by
    /// route index.
    pub(crate) plugins: Vec<Chain>,
}

/// A backend with its runtime state.
#[derive(Debug)]
pub(crate) struct BackendState {
    pub(crate) name: Arc<str>,
    pub(crate) config: Backend,
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) breaker: Arc<CircuitBreaker>,
    pub(crate) budget: Arc<RetryBudget>,
    /// Some endpoint is meshed (has an identity): a stream its sidecar
    /// refuses may be retried on another endpoint even without a retry
    /// policy.
    pub(crate) meshed: bool,
}

/// A backend's running active health checks.
#[derive(Debug)]
struct HealthTask {
    check: HealthCheck,
    balancer: Arc<Balancer>,
    /// Stops the checks when this entry is replaced or removed.
    _task: AbortOnDropHandle<()>,
}

/// Everything a request reads, immutable once built.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// The config as loaded, for `/config_dump`; `None` before the first.
    pub(crate) config: Option<Arc<MeshConfig>>,
    /// Each service's compiled ports, by service name.
    services: FastMap<String, Vec<Arc<ServicePort>>>,
    by_addr: FastMap<SocketAddr, Arc<ServicePort>>,
    by_host: FastMap<(String, u16), Arc<ServicePort>>,
    /// Wildcard host names (`*.example.com`) by their suffix with its dot
    /// (`.example.com`).
    by_wildcard: FastMap<(String, u16), Arc<ServicePort>>,
    host_ports: HashSet<u16>,
    pub(crate) backends: FastMap<String, Arc<BackendState>>,
    pub(crate) inbound: InboundConfig,
    /// `inbound.authorization`, compiled.
    pub(crate) authorizer: Arc<Authorizer>,
    pub(crate) http: HttpSettings,
    /// Global rules, consumers and inbound ports' plugins.
    pub(crate) plugins: Arc<plugins::Compiled>,
}

impl Snapshot {
    pub(crate) fn version(&self) -> &str {
        self.config.as_ref().map_or("", |c| c.version.as_str())
    }

    /// The service port a connection to `dst` is for, by virtual address.
    pub(crate) fn service_by_addr(&self, dst: SocketAddr) -> Option<&Arc<ServicePort>> {
        self.by_addr.get(&dst)
    }

    /// Whether some service on `port` is known by host name, so HTTP
    /// requests to an unknown address on that port are worth a look at
    /// their `Host`.
    pub(crate) fn has_hostnames_on(&self, port: u16) -> bool {
        self.host_ports.contains(&port)
    }

    /// The service port a request is for: by the original destination, then
    /// by its host name (port stripped, case-insensitive).
    pub(crate) fn service_for(
        &self,
        dst: SocketAddr,
        authority: &str,
    ) -> Option<&Arc<ServicePort>> {
        if let Some(port) = self.by_addr.get(&dst) {
            return Some(port);
        }
        if !self.host_ports.contains(&dst.port()) {
            return None;
        }
        let host = strip_port(authority).to_ascii_lowercase();
        let port = dst.port();
        if let Some(found) = self.by_host.get(&(host.clone(), port)) {
            return Some(found);
        }
        if self.by_wildcard.is_empty() {
            return None;
        }
        // Gateway API: `*.example.com` matches one or more labels before
        // `.example.com` (not `example.com` itself); the longest suffix,
        // the most specific, wins. Suffixes are tried longest first.
        host.match_indices('.')
            .filter(|(at, _)| *at > 0)
            .find_map(|(at, _)| self.by_wildcard.get(&(host[at..].to_owned(), port)))
    }

    /// Whether some service, route or backend of `previous` is gone or
    /// rebuilt here, so metric series may need dropping.
    fn drops_resources_of(&self, previous: &Snapshot) -> bool {
        previous.services.iter().any(|(name, ports)| {
            self.services
                .get(name)
                .is_none_or(|now| !now.iter().zip(ports).all(|(a, b)| Arc::ptr_eq(a, b)))
        }) || previous
            .backends
            .keys()
            .any(|name| !self.backends.contains_key(name))
            || !Arc::ptr_eq(&self.plugins, &previous.plugins)
    }

    /// Whether a metric series labelled with `service`, `route` and
    /// `backend` (empty when not about one) names only what this snapshot
    /// has.
    fn has_series(&self, service: &str, route: &str, backend: &str) -> bool {
        let service_ok = service.is_empty()
            || self.services.get(service).is_some_and(|ports| {
                route.is_empty()
                    || ports
                        .iter()
                        .any(|p| p.routes.routes().iter().any(|r| &**r.label() == route))
            });
        // No service: inbound, whose routes are the inbound ports'.
        let inbound_ok = !service.is_empty()
            || route.is_empty()
            || self.plugins.inbound.values().any(|p| p.has_route(route));
        service_ok && inbound_ok && (backend.is_empty() || self.backends.contains_key(backend))
    }

    /// The protocol declared for an inbound port.
    pub(crate) fn inbound_protocol(&self, port: u16) -> Protocol {
        self.inbound
            .ports
            .iter()
            .find(|p| p.port == port)
            .map_or(self.inbound.default_protocol, |p| p.protocol)
    }
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The snapshot in force, and the record of updates.
#[derive(Debug)]
pub(crate) struct State {
    current: ArcSwap<Snapshot>,
    /// The most recent rejection, shown by `/config_dump`. Its lock is also
    /// the commit lock: an update swaps the snapshot, clears or sets this
    /// and counts itself (`remora_config_updates_total`, dropped series)
    /// while holding it, and [`State::in_force`] reads under it, so whoever
    /// sees a config version in `/config_dump` finds the rest of that update
    /// in the dump and in `/metrics` too.
    last_error: Mutex<Option<String>>,
    metrics: Metrics,
    startup: Arc<Config>,
    /// One health checker per backend that asks for one, owned here rather
    /// than by snapshots, so that a snapshot kept alive by a long request
    /// never keeps an outdated checker running.
    health: Mutex<HashMap<String, HealthTask>>,
    /// Whether config can still be applied, for `/ready`.
    config_health: Mutex<ConfigHealth>,
    /// The one connector every upstream dial goes through.
    connector: Arc<Connector>,
    /// What plugins compile with (APISIX's metrics).
    plugin_env: plugins::Env,
    /// The discovery client's shared state, with `--discovery-addr`.
    discovery: std::sync::OnceLock<Arc<Discovery>>,
}

/// What `/ready` needs to know about applying config.
#[derive(Debug, Default)]
struct ConfigHealth {
    /// When the apply in progress started.
    applying_since: Option<std::time::Instant>,
    /// Why the config source stopped, if it did.
    source_stopped: Option<&'static str>,
}

/// An apply running longer than this means the proxy is wedged: `/ready`
/// fails so that the kubelet restarts it.
pub(crate) const APPLY_STALL: std::time::Duration = std::time::Duration::from_secs(30);

impl State {
    #[cfg(any(test, fuzzing))]
    pub(crate) fn new(startup: Arc<Config>, metrics: Metrics) -> Self {
        Self::with_connector(startup, metrics, Arc::new(Connector::plaintext()))
    }

    /// A state whose upstream dials all go through `connector`.
    pub(crate) fn with_connector(
        startup: Arc<Config>,
        metrics: Metrics,
        connector: Arc<Connector>,
    ) -> Self {
        State {
            current: ArcSwap::from_pointee(Snapshot::default()),
            last_error: Mutex::new(None),
            metrics: metrics.clone(),
            startup,
            health: Mutex::default(),
            config_health: Mutex::default(),
            connector,
            plugin_env: plugins::Env::new(&metrics),
            discovery: std::sync::OnceLock::new(),
        }
    }

    /// The discovery client's shared state, in discovery mode: unknown
    /// destinations are asked for there.
    pub(crate) fn discovery(&self) -> Option<&Arc<Discovery>> {
        self.discovery.get()
    }

    /// Set once, when the discovery client starts.
    pub(crate) fn set_discovery(&self, discovery: Arc<Discovery>) {
        let _ = self.discovery.set(discovery);
    }

    /// The startup settings.
    pub(crate) fn startup(&self) -> &Arc<Config> {
        &self.startup
    }

    /// The connector every upstream dial goes through.
    pub(crate) fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    fn lock_config_health(&self) -> std::sync::MutexGuard<'_, ConfigHealth> {
        self.config_health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the config source can no longer deliver updates.
    pub(crate) fn source_stopped(&self, reason: &'static str) {
        warn!(
            reason,
            "the config source stopped; no further config will be applied"
        );
        self.lock_config_health().source_stopped = Some(reason);
    }

    /// Why the proxy cannot apply config, if it cannot: the source stopped,
    /// or an apply has been running for longer than [`APPLY_STALL`].
    pub(crate) fn config_problem(&self) -> Option<String> {
        if let Some(waiting) = self.discovery().and_then(|d| d.waiting()) {
            return Some(waiting);
        }
        let health = self.lock_config_health();
        if let Some(reason) = health.source_stopped {
            return Some(format!("config: {reason}"));
        }
        let running = health.applying_since?.elapsed();
        (running > APPLY_STALL).then(|| {
            format!(
                "config: an update has been applying for {}s",
                running.as_secs()
            )
        })
    }

    /// The snapshot in force. Hold it for the whole request.
    pub(crate) fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    fn lock_last_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The snapshot in force and the last rejection's reason, as one
    /// update left them (for `/config_dump`; requests use [`State::load`]).
    pub(crate) fn in_force(&self) -> (Arc<Snapshot>, Option<String>) {
        let last_error = self.lock_last_error();
        (self.current.load_full(), last_error.clone())
    }

    /// Records a config that could not even be parsed.
    pub(crate) fn reject(&self, reason: String) {
        warn!(%reason, "config rejected; the last good config stays in force");
        let mut last_error = self.lock_last_error();
        *last_error = Some(reason);
        // Counted once the dump names the reason.
        self.metrics.config_update(false);
    }

    /// Compiles `config` and swaps it in, or rejects it with the reason.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn apply(&self, config: MeshConfig) -> Result<(), StateError> {
        self.apply_retiring(config).map(drop)
    }

    /// [`State::apply`], handing back the snapshot it replaced, so that the
    /// caller (the config thread) can drop it once requests in flight are
    /// done with it: dropping a large snapshot is work the data plane should
    /// not do.
    pub(crate) fn apply_retiring(&self, config: MeshConfig) -> Result<Arc<Snapshot>, StateError> {
        let previous = self.current.load_full();
        let started = std::time::Instant::now();
        self.lock_config_health().applying_since = Some(started);
        let compiled = self.compile(config, &previous);
        self.lock_config_health().applying_since = None;
        match compiled {
            Ok(next) => {
                self.sync_health_checks(&next);
                let next = Arc::new(next);
                // One commit for the readers of /config_dump: the version,
                // lastError, the update counter and the dropped series.
                let mut last_error = self.lock_last_error();
                self.current.store(next.clone());
                if next.drops_resources_of(&previous) {
                    let keep = |service: &str, route: &str, backend: &str| {
                        next.has_series(service, route, backend)
                    };
                    self.metrics.retain_series(&keep);
                    self.plugin_env
                        .retain_series(&|service, route| keep(service, route, ""));
                }
                *last_error = None;
                self.metrics.config_applied_in(started.elapsed());
                self.metrics.config_update(true);
                drop(last_error);
                info!(version = next.version(), "config applied");
                Ok(previous)
            }
            Err(e) => {
                self.reject(e.to_string());
                Err(e)
            }
        }
    }

    fn compile(&self, config: MeshConfig, previous: &Snapshot) -> Result<Snapshot, StateError> {
        // First everything that can fail, so that a rejected config touches
        // no live state.
        // Incremental: a service whose config is unchanged keeps its
        // compiled ports (route tables, compiled regexes) as they are.
        let previous_configs: HashMap<&str, &Service> = previous
            .config
            .iter()
            .flat_map(|c| c.outbound.services.iter())
            .map(|s| (s.name.as_str(), s))
            .collect();
        // Global rules, consumers and inbound plugins are kept when their
        // config is unchanged, so their counters survive the update.
        let plugins = match previous.config.as_deref() {
            Some(old)
                if old.global_rules == config.global_rules
                    && old.consumers == config.consumers
                    && old.inbound.ports == config.inbound.ports =>
            {
                previous.plugins.clone()
            }
            _ => Arc::new(plugins::compile(&config, &self.plugin_env)?),
        };
        // Plugins may name backends and consumers (traffic-split,
        // anonymous_consumer): a service is only kept while those are too.
        let names = plugins::Names::of(&config);
        let same_names = previous
            .config
            .as_deref()
            .is_some_and(|old| plugins::Names::of(old) == names);
        let env = self.plugin_env.with_names(names);
        let mut services =
            FastMap::with_capacity_and_hasher(config.outbound.services.len(), Default::default());
        for (si, service) in config.outbound.services.iter().enumerate() {
            let unchanged = same_names
                && previous_configs
                    .get(service.name.as_str())
                    .is_some_and(|old| *old == service);
            let ports = match previous.services.get(&service.name) {
                Some(ports) if unchanged => ports.clone(),
                _ => compile_service(si, service, &env)?,
            };
            services.insert(service.name.clone(), ports);
        }
        let ports = config
            .outbound
            .services
            .iter()
            .enumerate()
            .flat_map(|(si, s)| {
                services
                    .get(&s.name)
                    .into_iter()
                    .flatten()
                    .map(move |port| (si, port.clone()))
            });

        let mut by_addr = FastMap::default();
        let mut by_host = FastMap::default();
        let mut by_wildcard = FastMap::default();
        let mut host_ports = HashSet::new();
        for (si, port) in ports {
            let service = &config.outbound.services[si];
            for ip in &service.addresses {
                by_addr.insert(SocketAddr::new(*ip, port.port), port.clone());
            }
            for host in &service.hostnames {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => {
                        by_wildcard.insert((suffix.to_owned(), port.port), port.clone())
                    }
                    None => by_host.insert((host, port.port), port.clone()),
                };
                host_ports.insert(port.port);
            }
        }

        let backends = config
            .backends
            .iter()
            .map(|(name, backend)| {
                let state = self.backend(name, backend, previous.backends.get(name));
                (name.clone(), state)
            })
            .collect();

        Ok(Snapshot {
            services,
            by_addr,
            by_host,
            by_wildcard,
            host_ports,
            backends,
            inbound: config.inbound.clone(),
            authorizer: Arc::new(Authorizer::new(&config.inbound.authorization)),
            http: config.http.clone(),
            plugins,
            config: Some(Arc::new(config)),
        })
    }

    /// Starts, restarts and stops health checkers to match `snapshot`.
    fn sync_health_checks(&self, snapshot: &Snapshot) {
        let mut tasks = self.health.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|name, task| {
            snapshot.backends.get(name).is_some_and(|backend| {
                backend.config.health_check.as_ref() == Some(&task.check)
                    && Arc::ptr_eq(&backend.balancer, &task.balancer)
            })
        });
        for (name, backend) in &snapshot.backends {
            let Some(check) = &backend.config.health_check else {
                continue;
            };
            tasks.entry(name.clone()).or_insert_with(|| HealthTask {
                check: check.clone(),
                balancer: backend.balancer.clone(),
                _task: AbortOnDropHandle::new(spawn_health_checks(
                    backend.balancer.clone(),
                    check.clone(),
                    self.connector.clone(),
                    std::future::pending(),
                )),
            });
        }
    }

    /// Builds a backend's runtime state, carrying over what survives.
    fn backend(
        &self,
        name: &str,
        config: &Backend,
        previous: Option<&Arc<BackendState>>,
    ) -> Arc<BackendState> {
        if let Some(prev) = previous {
            if prev.config == *config {
                return prev.clone();
            }
        }
        let balancer = match previous {
            Some(prev) => {
                prev.balancer.update(config);
                prev.balancer.clone()
            }
            None => Arc::new(Balancer::new(
                name,
                config,
                Some(self.metrics.ejections(name)),
            )),
        };
        // Limits change in place, so permits held by requests in flight
        // stay counted against the new limits.
        let breaker = match previous {
            Some(prev) => {
                prev.breaker.update(&config.circuit_breaker);
                prev.breaker.clone()
            }
            None => Arc::new(CircuitBreaker::new(name, &config.circuit_breaker)),
        };
        let budget = match previous {
            Some(prev) if prev.config.retry_budget == config.retry_budget => prev.budget.clone(),
            _ => Arc::new(RetryBudget::new(&config.retry_budget)),
        };
        let pool = match previous {
            Some(prev)
                if prev.config.connect_timeout == config.connect_timeout
                    && prev.config.idle_timeout == config.idle_timeout =>
            {
                prev.pool.clone()
            }
            _ => Pool::new(
                PoolSettings {
                    source_v4: None,
                    source_v6: None,
                    connect_timeout: config.connect_timeout,
                    idle_timeout: config.idle_timeout,
                    max_idle_per_endpoint: self.startup.max_idle_per_endpoint,
                },
                self.connector.clone(),
                Some(breaker.clone()),
            ),
        };
        Arc::new(BackendState {
            name: Arc::from(name),
            config: config.clone(),
            balancer,
            pool,
            breaker,
            budget,
            meshed: config.endpoints.iter().any(|e| e.identity.is_some()),
        })
    }
}

/// Compiles one service's ports: route tables, and how each port is used.
fn compile_service(
    si: usize,
    service: &Service,
    env: &plugins::Env,
) -> Result<Vec<Arc<ServicePort>>, StateError> {
    let name: Arc<str> = Arc::from(service.name.as_str());
    let mut ports = Vec::with_capacity(service.ports.len());
    // The service's plugins are compiled once, so that its routes share
    // them (one limit-count counter for the whole service).
    let at = format!("outbound.services[{si}]");
    let own = plugins::compile_layer(&format!("{at}.plugins"), &service.plugins, env)?;
    for (pi, port) in service.ports.iter().enumerate() {
        let mut chains = Vec::with_capacity(port.routes.len().max(1));
        for (ri, route) in port.routes.iter().enumerate() {
            let layer = plugins::compile_layer(
                &format!("{at}.ports[{pi}].routes[{ri}].plugins"),
                &route.plugins,
                env,
            )?;
            chains.push(plugins::chain_of(&own, &layer));
        }
        if port.routes.is_empty() {
            chains.push(plugins::chain_of(&own, &[]));
        }
        let routes = if port.routes.is_empty() && !port.backend_refs.is_empty() {
            RouteTable::new(&[catch_all(&port.backend_refs)])
        } else {
            RouteTable::new(&port.routes)
        }
        .map_err(|source| StateError::Route {
            service: si,
            port: pi,
            source,
        })?;
        ports.push(Arc::new(ServicePort {
            service: name.clone(),
            port: port.port,
            protocol: port.protocol,
            routes,
            tcp_backends: port.backend_refs.clone(),
            passthrough: port.routes.is_empty() && port.backend_refs.is_empty(),
            plugins: chains,
        }));
    }
    Ok(ports)
}

/// The route a port with `backendRefs` and no routes sends everything to.
fn catch_all(backend_refs: &[BackendRef]) -> Route {
    Route {
        name: None,
        matches: Vec::new(),
        filters: Vec::new(),
        backend_refs: backend_refs.to_vec(),
        timeouts: Default::default(),
        retry: None,
        plugins: Default::default(),
    }
}

/// Settings of the pool that carries inbound requests to the app.
pub(crate) fn inbound_pool_settings(config: &Config) -> PoolSettings {
    PoolSettings {
        source_v4: Some(IpAddr::V4(INBOUND_SOURCE_V4)),
        source_v6: Some(IpAddr::V6(INBOUND_SOURCE_V6)),
        connect_timeout: config.connect_timeout,
        idle_timeout: std::time::Duration::from_secs(60),
        max_idle_per_endpoint: config.max_idle_per_endpoint,
    }
}

/// Settings of the pool for outbound destinations the config doesn't name.
pub(crate) fn passthrough_pool_settings(config: &Config) -> PoolSettings {
    PoolSettings {
        source_v4: None,
        source_v6: None,
        ..inbound_pool_settings(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_inbound_applies_with_per_port_overrides() {
        let startup = Arc::new(crate::config::defaults());
        let state = State::new(startup, Metrics::new());
        let config = MeshConfig::from_yaml(
            "version: a\ninbound: {mode: strict, ports: [{port: 8080, mode: permissive}]}\n",
        )
        .expect("valid");
        state.apply(config).expect("strict applies");
        let snapshot = state.load();
        assert_eq!(
            snapshot.inbound.mode_for(8080),
            remora_api::InboundMode::Permissive
        );
        assert_eq!(
            snapshot.inbound.mode_for(8081),
            remora_api::InboundMode::Strict
        );
    }

    #[tokio::test]
    async fn the_documented_example_applies() {
        let startup = Arc::new(crate::config::defaults());
        let state = State::new(startup, Metrics::new());
        let config = MeshConfig::from_yaml(include_str!("../../api/examples/mesh.yaml"))
            .expect("the example is valid");
        state.apply(config).expect("the proxy takes the example");
        let snapshot = state.load();
        assert_eq!(snapshot.version(), "2024-06-01.1");
        let reviews = "10.96.0.20:9080".parse().expect("addr");
        assert!(snapshot.service_by_addr(reviews).is_some());
    }

    #[tokio::test]
    async fn wildcard_host_names_match_one_or_more_labels_most_specific_first() {
        let startup = Arc::new(crate::config::defaults());
        let state = State::new(startup, Metrics::new());
        let config = MeshConfig::from_json(
            r#"{"version": "w", "outbound": {"services": [
                {"name": "any", "hostnames": ["*.example.com"], "ports": [{"port": 80}]},
                {"name": "api", "hostnames": ["*.api.example.com"], "ports": [{"port": 80}]},
                {"name": "exact", "hostnames": ["www.example.com"], "ports": [{"port": 80}]}
            ]}}"#,
        )
        .expect("valid");
        state.apply(config).expect("applies");
        let snapshot = state.load();
        let dst: SocketAddr = "10.1.2.3:80".parse().expect("addr");
        let service = |host: &str| {
            snapshot
                .service_for(dst, host)
                .map(|p| p.service.to_string())
        };
        assert_eq!(service("foo.example.com").as_deref(), Some("any"));
        assert_eq!(service("a.b.example.com:80").as_deref(), Some("any"));
        assert_eq!(service("FOO.Example.COM").as_deref(), Some("any"));
        assert_eq!(service("v1.api.example.com").as_deref(), Some("api"));
        assert_eq!(service("www.example.com").as_deref(), Some("exact"));
        assert_eq!(service("example.com"), None, "the wildcard needs a label");
        assert_eq!(service(".example.com"), None);
        assert_eq!(service("example.com.evil"), None);
        assert_eq!(service("fooexample.com"), None);
        let other_port: SocketAddr = "10.1.2.3:81".parse().expect("addr");
        assert!(snapshot
            .service_for(other_port, "foo.example.com")
            .is_none());
    }

    fn two_services(version: &str, b_route: &str, with_b: bool) -> MeshConfig {
        let b = if with_b {
            format!(
                r#",{{"name": "b", "addresses": ["10.0.0.2"], "ports": [{{"port": 80,
                    "routes": [{{"name": "{b_route}", "backendRefs": [{{"name": "bb"}}]}}]}}]}}"#
            )
        } else {
            String::new()
        };
        let bb = if with_b {
            r#","bb": {"endpoints": [{"address": "10.1.0.2:80"}]}"#
        } else {
            ""
        };
        MeshConfig::from_json(&format!(
            r#"{{"version": "{version}", "outbound": {{"services": [
                {{"name": "a", "addresses": ["10.0.0.1"], "ports": [{{"port": 80,
                    "routes": [{{"name": "ra", "backendRefs": [{{"name": "aa"}}]}}]}}]}}{b}
            ]}},
            "backends": {{"aa": {{"endpoints": [{{"address": "10.1.0.1:80"}}]}}{bb}}}}}"#
        ))
        .expect("valid")
    }

    #[tokio::test]
    async fn unchanged_services_keep_their_compiled_ports_and_changed_ones_are_rebuilt() {
        let state = State::new(Arc::new(crate::config::defaults()), Metrics::new());
        state.apply(two_services("1", "rb", true)).expect("applies");
        let first = state.load();
        state
            .apply(two_services("2", "rb2", true))
            .expect("applies");
        let second = state.load();
        let a = |s: &Snapshot| s.services["a"][0].clone();
        let b = |s: &Snapshot| s.services["b"][0].clone();
        assert!(Arc::ptr_eq(&a(&first), &a(&second)), "a is unchanged: kept");
        assert!(!Arc::ptr_eq(&b(&first), &b(&second)), "b changed: rebuilt");
        assert!(
            Arc::ptr_eq(&first.backends["aa"], &second.backends["aa"]),
            "unchanged backends keep their state, balancer and pool"
        );
    }

    #[tokio::test]
    async fn metric_series_of_removed_services_routes_and_backends_are_dropped() {
        let metrics = Metrics::new();
        let state = State::new(Arc::new(crate::config::defaults()), metrics.clone());
        state.apply(two_services("1", "rb", true)).expect("applies");
        let count = |service: &str, route: &str, backend: &str| {
            let labels = crate::metrics::RequestLabels {
                service: Arc::from(service),
                route: Arc::from(route),
                backend: Arc::from(backend),
                ..Default::default()
            };
            metrics.request(
                crate::direction::Direction::Outbound,
                &labels,
                http::StatusCode::OK,
                std::time::Duration::from_millis(1),
            );
        };
        count("a", "ra", "aa");
        count("b", "rb", "bb");
        count("", "", "");
        let text = metrics.render();
        assert!(text.contains(r#"service="b""#), "{text}");

        // b's route renamed: the old route's series go, a's stay.
        state
            .apply(two_services("2", "rb2", true))
            .expect("applies");
        let text = metrics.render();
        assert!(!text.contains(r#"route="rb""#), "{text}");
        assert!(text.contains(r#"route="ra""#), "{text}");

        // b and its backend removed.
        count("b", "rb2", "bb");
        state
            .apply(two_services("3", "rb2", false))
            .expect("applies");
        let text = metrics.render();
        assert!(!text.contains(r#"service="b""#), "{text}");
        assert!(!text.contains(r#"backend="bb""#), "{text}");
        assert!(
            text.contains(r#"remora_requests_total{backend="aa""#),
            "{text}"
        );
        assert!(
            text.contains(r#"remora_requests_total{backend="",class="2xx",client_id="",direction="outbound",route="",service="",status="200"} 1"#),
            "series about no resource stay\n{text}"
        );
    }

    #[test]
    fn a_stopped_config_source_is_a_readiness_problem() {
        let state = State::new(Arc::new(crate::config::defaults()), Metrics::new());
        assert_eq!(state.config_problem(), None);
        state.source_stopped("the config thread panicked");
        assert_eq!(
            state.config_problem().as_deref(),
            Some("config: the config thread panicked")
        );
    }

    #[test]
    fn an_apply_running_past_the_stall_limit_is_a_readiness_problem() {
        let state = State::new(Arc::new(crate::config::defaults()), Metrics::new());
        let now = std::time::Instant::now();
        state.lock_config_health().applying_since = Some(now);
        assert_eq!(state.config_problem(), None, "a fresh apply is fine");
        if let Some(long_ago) = now.checked_sub(APPLY_STALL + std::time::Duration::from_secs(5)) {
            state.lock_config_health().applying_since = Some(long_ago);
            let problem = state.config_problem().unwrap_or_default();
            assert!(
                problem.starts_with("config: an update has been applying for 3"),
                "{problem}"
            );
        }
    }

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(strip_port("reviews:9080"), "reviews");
        assert_eq!(strip_port("reviews"), "reviews");
        assert_eq!(strip_port("[fd00::1]:80"), "fd00::1");
        assert_eq!(strip_port("10.0.0.1:80"), "10.0.0.1");
    }
}
