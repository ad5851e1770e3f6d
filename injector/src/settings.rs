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
