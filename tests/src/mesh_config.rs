//! Mesh configs for standalone-mode proxies: typed builders over the
//! `remora-api` model, a config file that the proxy watches, and the admin
//! view of what the proxy applied (`/config_dump`).
//!
//! Configs are built from `remora_api` types, checked with the model's own
//! validation (so a typo in a test fails loudly at once), and written as
//! JSON, which the proxy's loader accepts when the text starts with `{`.
//! Tests that need an invalid file write JSON values directly.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use remora_api::{
    Backend, BackendRef, HashOn, HeaderMatch, HeaderModifier, HttpHeader, HttpMethod, LoadBalancer,
    MatchType, MeshConfig, PathMatch, PathMatchType, PathModifier, QueryParamMatch,
    RequestRedirect, Retry, Route, RouteFilter, RouteMatch, Service, ServicePort, Timeouts,
    UrlRewrite,
};
use serde_json::{json, Value};

use crate::http_apps::{eventually, HttpApp, HttpClient};
use crate::netns::{Pod, TestNet};
use crate::proxy::ProxyHandle;

/// The virtual IP tests give their main service: nothing owns it, the
/// client pod's capture sends connections to it to the proxy.
pub const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
/// The port of the main service.
pub const VIP_PORT: u16 = 80;
/// The main service's name (the `service` metric label).
pub const SERVICE: &str = "web.default";
/// The port of the first app in [`Standalone`]'s server pod; the next app
/// gets the next port.
pub const FIRST_APP_PORT: u16 = 8081;

/// `VIP:VIP_PORT`.
pub fn vip() -> SocketAddr {
    SocketAddr::new(VIP, VIP_PORT)
}

/// Makes config directories unique across parallel tests in one process.
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A mesh config file in its own directory, for `remora-proxy --config`.
/// The directory is removed on drop.
#[derive(Debug)]
pub struct ConfigFile {
    dir: PathBuf,
    path: PathBuf,
    path_text: String,
}

impl ConfigFile {
    /// A new, empty directory for `test_name`'s config. Readable by the
    /// proxy's uid (1337), which watches the directory.
    pub fn new(test_name: &str) -> ConfigFile {
        let dir = std::env::temp_dir().join(format!(
            "remora-e2e-{test_name}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        set_mode(&dir, 0o755);
        let path = dir.join("mesh.json");
        let path_text = path.to_str().expect("temp paths are UTF-8").to_owned();
        ConfigFile {
            dir,
            path,
            path_text,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `["--config", <path>]`, the proxy flags for standalone mode.
    pub fn proxy_args(&self) -> [&str; 2] {
        ["--config", &self.path_text]
    }

    /// Validates `config` (a test's own mistake fails here, with the path of
    /// the bad field) and writes it atomically.
    pub fn write(&self, config: &MeshConfig) {
        if let Err(e) = config.validate() {
            panic!("the test built an invalid config: {e}");
        }
        let text = serde_json::to_string_pretty(config).expect("a MeshConfig serializes");
        self.write_text(&text);
    }

    /// Writes any JSON value, valid or not.
    pub fn write_json(&self, value: &Value) {
        self.write_text(&serde_json::to_string_pretty(value).expect("JSON serializes"));
    }

    /// Writes `text` to a temporary file in the same directory and renames
    /// it over the config, as editors and ConfigMap updates do: the proxy
    /// never reads half a file.
    pub fn write_text(&self, text: &str) {
        let tmp = self.dir.join(".mesh.json.tmp");
        std::fs::write(&tmp, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
        set_mode(&tmp, 0o644);
        std::fs::rename(&tmp, &self.path)
            .unwrap_or_else(|e| panic!("cannot rename over {}: {e}", self.path.display()));
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A config with nothing but `version` (every other field defaulted).
pub fn mesh(version: &str) -> MeshConfig {
    MeshConfig::from_json(&json!({ "version": version }).to_string())
        .expect("the minimal config is valid")
}

/// An HTTP service reached at `vip:port`, with `routes` on that port.
pub fn service(name: &str, vip: IpAddr, port: u16, routes: Vec<Route>) -> Service {
    Service {
        name: name.to_owned(),
        addresses: vec![vip],
        hostnames: Vec::new(),
        ports: vec![http_port(port, routes)],
        plugins: Default::default(),
    }
}

/// An HTTP service known only by host names, with `routes` on `port`.
pub fn host_service(name: &str, hostnames: &[&str], port: u16, routes: Vec<Route>) -> Service {
    Service {
        name: name.to_owned(),
        addresses: Vec::new(),
        hostnames: hostnames.iter().map(|h| (*h).to_owned()).collect(),
        ports: vec![http_port(port, routes)],
        plugins: Default::default(),
    }
}

fn http_port(port: u16, routes: Vec<Route>) -> ServicePort {
    serde_json::from_value::<ServicePort>(json!({ "port": port }))
        .map(|mut p| {
            p.routes = routes;
            p
        })
        .expect("a bare port is valid")
}

/// A backend over `endpoints` (weight 1, plaintext), every policy defaulted.
pub fn backend(endpoints: &[SocketAddr]) -> Backend {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|a| json!({ "address": a.to_string() }))
        .collect();
    serde_json::from_value(json!({ "endpoints": endpoints })).expect("a plain backend is valid")
}

/// [`backend`] with round robin: the deterministic spread tests want.
pub fn round_robin(endpoints: &[SocketAddr]) -> Backend {
    let mut b = backend(endpoints);
    b.load_balancer = LoadBalancer::RoundRobin;
    b
}

/// Consistent hashing on a request header.
pub fn hash_on_header(header: &str) -> LoadBalancer {
    LoadBalancer::ConsistentHash(HashOn::Header(header.to_owned()))
}

/// Builds one [`Route`].
#[derive(Debug, Clone)]
pub struct RouteBuilder(Route);

/// A route that matches every request and goes nowhere yet.
pub fn route() -> RouteBuilder {
    RouteBuilder(Route {
        name: None,
        matches: Vec::new(),
        filters: Vec::new(),
        backend_refs: Vec::new(),
        timeouts: Timeouts::default(),
        retry: None,
        plugins: Default::default(),
    })
}

impl RouteBuilder {
    /// The `route` label in metrics.
    pub fn name(mut self, name: &str) -> Self {
        self.0.name = Some(name.to_owned());
        self
    }

    /// Adds a match (any one match accepts a request).
    pub fn matching(mut self, m: Match) -> Self {
        self.0.matches.push(m.0);
        self
    }

    /// Adds a route filter.
    pub fn filter(mut self, f: RouteFilter) -> Self {
        self.0.filters.push(f);
        self
    }

    /// Sends to `backend` with weight 1.
    pub fn to(self, backend: &str) -> Self {
        self.to_weighted(backend, 1)
    }

    /// Adds `backend` to the weighted split.
    pub fn to_weighted(mut self, backend: &str, weight: u32) -> Self {
        self.0.backend_refs.push(BackendRef {
            name: backend.to_owned(),
            weight,
            filters: Vec::new(),
        });
        self
    }

    /// `timeouts.request`.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.0.timeouts.request = Some(timeout);
        self
    }

    /// Retries `attempts` times on `codes` (and on connect failure), with
    /// backoff base `backoff`.
    pub fn retry(mut self, attempts: u32, codes: &[u16], backoff: Duration) -> Self {
        self.0.retry = Some(Retry {
            attempts,
            backoff: Some(backoff),
            codes: codes.to_vec(),
            grpc_codes: Vec::new(),
            on_connect_failure: true,
        });
        self
    }

    /// Attaches APISIX plugin `name` with its JSON config.
    pub fn plugin(mut self, name: &str, config: Value) -> Self {
        self.0.plugins.insert(name.to_owned(), config);
        self
    }

    /// The finished route.
    pub fn build(self) -> Route {
        self.0
    }
}

impl From<RouteBuilder> for Route {
    fn from(b: RouteBuilder) -> Route {
        b.0
    }
}

/// Builds one [`RouteMatch`]; every condition set must hold.
#[derive(Debug, Clone, Default)]
pub struct Match(RouteMatch);

impl Match {
    /// A match with no conditions.
    pub fn any() -> Match {
        Match::default()
    }

    /// `path: {type: Exact}`.
    pub fn exact(path: &str) -> Match {
        Match::any().path(PathMatchType::Exact, path)
    }

    /// `path: {type: PathPrefix}`.
    pub fn prefix(path: &str) -> Match {
        Match::any().path(PathMatchType::PathPrefix, path)
    }

    /// `path: {type: RegularExpression}`.
    pub fn regex(path: &str) -> Match {
        Match::any().path(PathMatchType::RegularExpression, path)
    }

    fn path(mut self, kind: PathMatchType, value: &str) -> Match {
        self.0.path = Some(PathMatch {
            kind,
            value: value.to_owned(),
        });
        self
    }

    /// `method`.
    pub fn method(mut self, method: HttpMethod) -> Match {
        self.0.method = Some(method);
        self
    }

    /// An `Exact` header condition.
    pub fn header(mut self, name: &str, value: &str) -> Match {
        self.0.headers.push(HeaderMatch {
            kind: MatchType::Exact,
            name: name.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    /// A `RegularExpression` header condition.
    pub fn header_regex(mut self, name: &str, value: &str) -> Match {
        self.0.headers.push(HeaderMatch {
            kind: MatchType::RegularExpression,
            name: name.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    /// An `Exact` query parameter condition.
    pub fn query(mut self, name: &str, value: &str) -> Match {
        self.0.query_params.push(QueryParamMatch {
            kind: MatchType::Exact,
            name: name.to_owned(),
            value: value.to_owned(),
        });
        self
    }
}

fn headers(pairs: &[(&str, &str)]) -> Vec<HttpHeader> {
    pairs
        .iter()
        .map(|(name, value)| HttpHeader {
            name: (*name).to_owned(),
            value: (*value).to_owned(),
        })
        .collect()
}

/// `RequestHeaderModifier` with `set`, `add` and `remove`.
pub fn request_headers(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> RouteFilter {
    RouteFilter::RequestHeaderModifier(HeaderModifier {
        set: headers(set),
        add: headers(add),
        remove: remove.iter().map(|n| (*n).to_owned()).collect(),
    })
}

/// `ResponseHeaderModifier` with `set`, `add` and `remove`.
pub fn response_headers(
    set: &[(&str, &str)],
    add: &[(&str, &str)],
    remove: &[&str],
) -> RouteFilter {
    RouteFilter::ResponseHeaderModifier(HeaderModifier {
        set: headers(set),
        add: headers(add),
        remove: remove.iter().map(|n| (*n).to_owned()).collect(),
    })
}

/// `URLRewrite` with `ReplacePrefixMatch` and, optionally, a host name.
pub fn rewrite_prefix(prefix: &str, hostname: Option<&str>) -> RouteFilter {
    RouteFilter::UrlRewrite(UrlRewrite {
        hostname: hostname.map(str::to_owned),
        path: Some(PathModifier::ReplacePrefixMatch(prefix.to_owned())),
    })
}

/// `RequestRedirect` to `hostname` and full path `path` with `status`.
pub fn redirect(hostname: &str, path: &str, status: u16) -> RouteFilter {
    RouteFilter::RequestRedirect(RequestRedirect {
        scheme: None,
        hostname: Some(hostname.to_owned()),
        path: Some(PathModifier::ReplaceFullPath(path.to_owned())),
        port: None,
        status_code: status,
    })
}

/// What `/config_dump` says: the version in force and the last rejection.
#[derive(Debug, Clone)]
pub struct ConfigDump {
    pub version: String,
    pub last_error: Option<String>,
    pub raw: Value,
}

/// `GET /config_dump` from inside the proxy's pod.
pub async fn config_dump(proxy: &ProxyHandle) -> ConfigDump {
    let response = proxy
        .get("/config_dump")
        .await
        .unwrap_or_else(|e| panic!("GET /config_dump: {e}"));
    assert_eq!(response.status, 200, "GET /config_dump: {}", response.body);
    let raw: Value = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("/config_dump is not JSON ({e}): {}", response.body));
    ConfigDump {
        version: raw["version"].as_str().unwrap_or_default().to_owned(),
        last_error: raw["lastError"].as_str().map(str::to_owned),
        raw,
    }
}

/// `GET /config_dump?backend=NAME` from inside the proxy's pod: the
/// backend's `name`, `config`, `endpoints` (as its balancer sees them),
/// `ejectedNow` and `ejectionsTotal`.
pub async fn backend_dump(proxy: &ProxyHandle, name: &str) -> Value {
    let path = format!("/config_dump?backend={name}");
    let response = proxy
        .get(&path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(response.status, 200, "GET {path}: {}", response.body);
    let raw: Value = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {}", response.body));
    raw["backend"].clone()
}

/// Waits (at most 5 s) until `/config_dump` shows `version` in force.
pub async fn wait_version(proxy: &ProxyHandle, version: &str) -> ConfigDump {
    eventually(
        Duration::from_secs(5),
        &format!("config version {version:?} in /config_dump"),
        || async {
            let dump = config_dump(proxy).await;
            if dump.version == version {
                Ok(dump)
            } else {
                Err(format!(
                    "version {:?}, lastError {:?}",
                    dump.version, dump.last_error
                ))
            }
        },
    )
    .await
}

/// Named HTTP apps, all in one server pod on consecutive ports.
#[derive(Debug)]
pub struct Apps(Vec<HttpApp>);

impl Apps {
    /// The app called `name`.
    pub fn get(&self, name: &str) -> &HttpApp {
        self.0
            .iter()
            .find(|a| a.name() == name)
            .unwrap_or_else(|| panic!("no app called {name:?}"))
    }

    /// The app called `name`, to stop it.
    pub fn get_mut(&mut self, name: &str) -> &mut HttpApp {
        self.0
            .iter_mut()
            .find(|a| a.name() == name)
            .unwrap_or_else(|| panic!("no app called {name:?}"))
    }

    /// The endpoint address of the app called `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.get(name).addr()
    }

    /// One round-robin backend per app, named as the app.
    pub fn one_backend_each(&self) -> BTreeMap<String, Backend> {
        self.0
            .iter()
            .map(|a| (a.name().to_owned(), round_robin(&[a.addr()])))
            .collect()
    }

    /// Requests received by every app, by name.
    pub fn received(&self) -> BTreeMap<String, usize> {
        self.0
            .iter()
            .map(|a| (a.name().to_owned(), a.received()))
            .collect()
    }

    /// Requests received by all apps together.
    pub fn total_received(&self) -> usize {
        self.0.iter().map(HttpApp::received).sum()
    }
}

/// The usual shape of an HTTP routing test: a meshed `client` pod whose
/// proxy runs in standalone mode on a config file, and an unmeshed `srv`
/// pod running named apps that the config's backends point at.
#[derive(Debug)]
pub struct Standalone {
    pub proxy: ProxyHandle,
    pub apps: Apps,
    pub file: ConfigFile,
    pub client: Pod,
    pub server: Pod,
    pub net: TestNet,
}

impl Standalone {
    /// Creates the pods, starts one app per name in `srv` (ports from
    /// [`FIRST_APP_PORT`]), writes `config(&apps)` and meshes the client
    /// with it; returns once the proxy shows that config's version.
    pub async fn start(
        test: &str,
        app_names: &[&str],
        config: impl FnOnce(&Apps) -> MeshConfig,
    ) -> Standalone {
        let net = TestNet::new(test);
        let client = net.pod("client");
        let server = net.pod("srv");
        let apps = Apps(
            app_names
                .iter()
                .zip(FIRST_APP_PORT..)
                .map(|(name, port)| server.spawn_http_app(port, name))
                .collect(),
        );
        let file = ConfigFile::new(test);
        let config = config(&apps);
        file.write(&config);
        let proxy = client.mesh_with(&[], &file.proxy_args()).await;
        wait_version(&proxy, &config.version).await;
        Standalone {
            proxy,
            apps,
            file,
            client,
            server,
            net,
        }
    }

    /// A new keep-alive client in the client pod for the main service.
    pub fn http(&self) -> HttpClient {
        HttpClient::new(&self.client, vip())
    }

    /// Writes `config` and waits until the proxy shows its version.
    pub async fn apply(&self, config: &MeshConfig) {
        self.file.write(config);
        wait_version(&self.proxy, &config.version).await;
    }
}

/// A server pod whose proxy runs standalone with inbound plugins: an
/// unmeshed `client` pod and an app `srv` on port [`INBOUND_APP_PORT`]
/// behind the `srv` pod's sidecar, configured with `inbound.ports` and
/// `consumers` as given (JSON).
#[derive(Debug)]
pub struct InboundStandalone {
    pub proxy: ProxyHandle,
    pub app: HttpApp,
    pub file: ConfigFile,
    pub client: Pod,
    pub server: Pod,
    pub net: TestNet,
}

/// The port of [`InboundStandalone`]'s app.
pub const INBOUND_APP_PORT: u16 = 8080;

impl InboundStandalone {
    pub async fn start(test: &str, ports: Value, consumers: Value) -> InboundStandalone {
        let net = TestNet::new(test);
        let client = net.pod("client");
        let server = net.pod("srv");
        let app = server.spawn_http_app(INBOUND_APP_PORT, "srv");
        let file = ConfigFile::new(test);
        let config = MeshConfig::from_json(
            &json!({"version": "in-1", "inbound": {"ports": ports}, "consumers": consumers})
                .to_string(),
        )
        .expect("a valid inbound config");
        file.write(&config);
        let proxy = server.mesh_with(&[], &file.proxy_args()).await;
        wait_version(&proxy, "in-1").await;
        InboundStandalone {
            proxy,
            app,
            file,
            client,
            server,
            net,
        }
    }

    /// The app's address, as a client outside the pod dials it.
    pub fn app_addr(&self) -> SocketAddr {
        self.server.addr4(INBOUND_APP_PORT)
    }
}

/// A config with one service, [`SERVICE`] at [`vip()`], holding `routes`,
/// and `backends`.
pub fn web(
    version: &str,
    routes: Vec<RouteBuilder>,
    backends: BTreeMap<String, Backend>,
) -> MeshConfig {
    let mut config = mesh(version);
    config.outbound.services.push(service(
        SERVICE,
        VIP,
        VIP_PORT,
        routes.into_iter().map(Route::from).collect(),
    ));
    config.backends = backends;
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the builders make survives the trip through the JSON the proxy
    /// reads, with every field the tests set.
    #[test]
    fn built_configs_round_trip_through_json() {
        let a: SocketAddr = "10.99.0.3:8081".parse().unwrap();
        let mut pool = backend(&[a]);
        pool.load_balancer = hash_on_header("x-user");
        pool.circuit_breaker.max_requests = 1;
        let config = web(
            "v7",
            vec![
                route()
                    .name("r")
                    .matching(Match::exact("/x").method(HttpMethod::Get))
                    .matching(Match::regex("/y/[0-9]+").header_regex("x-a", "b+"))
                    .filter(request_headers(&[("x-s", "1")], &[("x-a", "2")], &["x-r"]))
                    .filter(response_headers(&[], &[("x-b", "3")], &[]))
                    .request_timeout(Duration::from_millis(500))
                    .retry(2, &[503], Duration::from_millis(1))
                    .to_weighted("pool", 90)
                    .to_weighted("rr", 10),
                route()
                    .matching(Match::prefix("/old").query("q", "1"))
                    .filter(rewrite_prefix("/new", Some("h.internal"))),
                route().matching(Match::exact("/moved")).filter(redirect(
                    "n.example",
                    "/landing",
                    301,
                )),
            ],
            BTreeMap::from([
                ("pool".to_owned(), pool),
                ("rr".to_owned(), round_robin(&[a])),
            ]),
        );
        config.validate().unwrap();
        let text = serde_json::to_string(&config).unwrap();
        assert!(
            text.starts_with('{'),
            "the loader takes JSON by its first byte"
        );
        assert_eq!(MeshConfig::from_json(&text).unwrap(), config);
    }
}
