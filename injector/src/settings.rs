//! Injector-wide settings: what every injected pod gets unless an annotation
//! overrides it. They are inputs of the pure injection function, so the
//! webhook, the CLI and the demo inject exactly the same thing from the same
//! settings. Parsing flags into them lives in `config`.

use std::time::Duration;

use crate::quantity::Quantity;

/// The proxy's user and group (DESIGN.md); remora-init never captures their
/// traffic.
pub const PROXY_UID: i64 = remora_iptables::config::DEFAULT_PROXY_UID as i64;
pub const PROXY_GID: i64 = remora_iptables::config::DEFAULT_PROXY_GID as i64;
/// The proxy's admin port: /live, /ready, /metrics and the app probes.
pub const PROXY_ADMIN_PORT: u16 = remora_iptables::config::DEFAULT_PROXY_ADMIN_PORT;

/// The audience of the identity token, the mesh's name in DESIGN.md.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "remora.dev";
/// remora-cp's certificate service as the chart installs it by default.
pub const DEFAULT_CA_ADDR: &str = "remora-cp.remora-system.svc:15012";
/// remora-cp's discovery service as the chart installs it by default: the
/// same TLS port as the certificate service (DESIGN.md, port 15012).
pub const DEFAULT_DISCOVERY_ADDR: &str = DEFAULT_CA_ADDR;
/// At most this many discovery addresses (the proxy's own limit).
pub const MAX_DISCOVERY_ADDRS: usize = 16;
/// The ConfigMap, in each meshed namespace, that holds the trust roots
/// remora-cp's serving certificate chains to (key [`CA_ROOTS_KEY`]).
pub const DEFAULT_CA_ROOTS_CONFIG_MAP: &str = "remora-ca-roots";
pub const CA_ROOTS_KEY: &str = "roots.pem";

/// Settings that apply to every injection.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub proxy_image: String,
    pub init_image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// Inject the proxy as a native sidecar (an init container with
    /// `restartPolicy: Always`, Kubernetes 1.29 and later) rather than as
    /// the first regular container.
    pub native_sidecar: bool,
    pub proxy_cpu: Quantity,
    pub proxy_cpu_limit: Option<Quantity>,
    pub proxy_memory: Quantity,
    pub proxy_memory_limit: Option<Quantity>,
    /// The proxy's `RUST_LOG`.
    pub proxy_log_level: String,
    /// Audience and lifetime of the projected service-account token.
    pub token_audience: String,
    pub token_expiration: Duration,
    /// How long the proxy may take to become ready before kubelet restarts it
    /// (native sidecar) or the app's start fails (regular container).
    pub proxy_startup_timeout: Duration,
    /// How the injected proxy gets its workload identity; `None` injects a
    /// proxy without one (no certificate, no mTLS).
    pub identity: Option<Identity>,
    /// remora-cp's discovery service, HOST:PORT entries the proxy fails over
    /// between in order (the proxy's `--discovery-addr`). The proxy trusts
    /// the identity's roots and server name for it, so it is injected only
    /// with an identity; `None` leaves the proxy without a mesh config
    /// source (it passes everything through).
    pub discovery_addrs: Option<Vec<String>>,
}

/// Where the injected proxy asks for its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// remora-cp's certificate service, HOST:PORT (the proxy's `--ca-addr`).
    pub ca_addr: String,
    /// The DNS name remora-cp's serving certificate must carry (the proxy's
    /// `--ca-server-name`): the host of `ca_addr` unless set apart.
    pub ca_server_name: String,
    /// The ConfigMap with the PEM roots for the first connection, projected
    /// beside the token (the proxy's `--ca-roots`).
    pub ca_roots_config_map: String,
}

impl Identity {
    /// The identity settings for remora-cp at `ca_addr` (HOST:PORT), its
    /// server name being that host.
    pub fn for_ca(ca_addr: &str) -> Self {
        let host = ca_addr
            .rsplit_once(':')
            .map_or(ca_addr, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        Identity {
            ca_addr: ca_addr.to_owned(),
            ca_server_name: host.to_owned(),
            ca_roots_config_map: DEFAULT_CA_ROOTS_CONFIG_MAP.to_owned(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Settings {
            proxy_image: format!("remora/proxy:{version}"),
            init_image: format!("remora/init:{version}"),
            image_pull_policy: "IfNotPresent".to_owned(),
            native_sidecar: true,
            proxy_cpu: quantity("100m"),
            proxy_cpu_limit: None,
            proxy_memory: quantity("64Mi"),
            proxy_memory_limit: Some(quantity("256Mi")),
            proxy_log_level: "info".to_owned(),
            token_audience: DEFAULT_TOKEN_AUDIENCE.to_owned(),
            token_expiration: Duration::from_secs(3600),
            proxy_startup_timeout: Duration::from_secs(120),
            identity: Some(Identity::for_ca(DEFAULT_CA_ADDR)),
            discovery_addrs: Some(vec![DEFAULT_DISCOVERY_ADDR.to_owned()]),
        }
    }
}

impl Settings {
    /// What the postStart hook of a proxy that is a regular container runs to
    /// hold the app until the proxy is ready: `remora-proxy wait-ready
    /// --timeout <startup timeout>`, a contract for the proxy image
    /// (docs/injector.md).
    pub fn await_command(&self) -> Vec<String> {
        let timeout = humantime::format_duration(self.proxy_startup_timeout).to_string();
        vec![
            "remora-proxy".to_owned(),
            "wait-ready".to_owned(),
            "--timeout".to_owned(),
            timeout,
        ]
    }
}

fn quantity(text: &str) -> Quantity {
    match Quantity::parse(text) {
        Ok(q) => q,
        Err(e) => unreachable!("built-in default {text}: {e}"),
    }
}
