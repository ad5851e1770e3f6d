//! The injector's flags, parsed once into a validated, frozen [`Config`]:
//! how the webhook serves (address, certificate, body limits) and the
//! [`Settings`] every injection uses. Each flag can be set through the
//! environment variable named beside it; the names are the constants here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::native_sidecar;
use crate::quantity::Quantity;
use crate::settings::{
    Identity, Settings, DEFAULT_CA_ADDR, DEFAULT_CA_ROOTS_CONFIG_MAP, DEFAULT_TOKEN_AUDIENCE,
    MAX_DISCOVERY_ADDRS,
};

pub const ENV_LISTEN: &str = "REMORA_INJECTOR_LISTEN";
pub const ENV_TLS_CERT: &str = "REMORA_INJECTOR_TLS_CERT";
pub const ENV_TLS_KEY: &str = "REMORA_INJECTOR_TLS_KEY";
pub const ENV_DNS_NAMES: &str = "REMORA_INJECTOR_DNS_NAMES";
pub const ENV_WRITE_CERT: &str = "REMORA_INJECTOR_WRITE_CERT";
pub const ENV_MAX_BODY_BYTES: &str = "REMORA_INJECTOR_MAX_BODY_BYTES";
pub const ENV_BODY_TIMEOUT: &str = "REMORA_INJECTOR_BODY_TIMEOUT";
pub const ENV_MAX_CONNECTIONS: &str = "REMORA_INJECTOR_MAX_CONNECTIONS";
pub const ENV_PROXY_IMAGE: &str = "REMORA_INJECTOR_PROXY_IMAGE";
pub const ENV_INIT_IMAGE: &str = "REMORA_INJECTOR_INIT_IMAGE";
pub const ENV_IMAGE_PULL_POLICY: &str = "REMORA_INJECTOR_IMAGE_PULL_POLICY";
pub const ENV_NATIVE_SIDECAR: &str = "REMORA_INJECTOR_NATIVE_SIDECAR";
pub const ENV_PROXY_CPU: &str = "REMORA_INJECTOR_PROXY_CPU";
pub const ENV_PROXY_CPU_LIMIT: &str = "REMORA_INJECTOR_PROXY_CPU_LIMIT";
pub const ENV_PROXY_MEMORY: &str = "REMORA_INJECTOR_PROXY_MEMORY";
pub const ENV_PROXY_MEMORY_LIMIT: &str = "REMORA_INJECTOR_PROXY_MEMORY_LIMIT";
pub const ENV_PROXY_LOG_LEVEL: &str = "REMORA_INJECTOR_PROXY_LOG_LEVEL";
pub const ENV_TOKEN_AUDIENCE: &str = "REMORA_INJECTOR_TOKEN_AUDIENCE";
pub const ENV_TOKEN_EXPIRATION: &str = "REMORA_INJECTOR_TOKEN_EXPIRATION";
pub const ENV_PROXY_STARTUP_TIMEOUT: &str = "REMORA_INJECTOR_PROXY_STARTUP_TIMEOUT";
pub const ENV_CA_ADDR: &str = "REMORA_INJECTOR_CA_ADDR";
pub const ENV_CA_SERVER_NAME: &str = "REMORA_INJECTOR_CA_SERVER_NAME";
pub const ENV_CA_ROOTS_CONFIG_MAP: &str = "REMORA_INJECTOR_CA_ROOTS_CONFIG_MAP";
pub const ENV_WEBHOOK_CONFIG_NAME: &str = "REMORA_INJECTOR_WEBHOOK_CONFIG_NAME";
pub const ENV_CA_BUNDLE_RESYNC: &str = "REMORA_INJECTOR_CA_BUNDLE_RESYNC";
pub const ENV_DISCOVERY_ADDR: &str = "REMORA_INJECTOR_DISCOVERY_ADDR";

/// The DNS names of the injector's Service, for the generated certificate.
pub const DEFAULT_DNS_NAMES: &str =
    "remora-injector.remora-system.svc,remora-injector.remora-system.svc.cluster.local";

/// `remora-injector`: the mutating admission webhook that injects the mesh.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "remora-injector",
    version,
    about = "Remora's sidecar injector webhook"
)]
pub struct Args {
    /// Address the webhook listens on (HTTPS: /inject, /live, /ready).
    #[arg(long, env = ENV_LISTEN, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// PEM certificate chain to serve (e.g. from a mounted Secret). Without
    /// it a self-signed certificate is generated for --dns-names.
    #[arg(long, env = ENV_TLS_CERT, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = ENV_TLS_KEY, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Comma-separated DNS names (or IPs) for the generated certificate.
    #[arg(long, env = ENV_DNS_NAMES, default_value = DEFAULT_DNS_NAMES, value_delimiter = ',')]
    pub dns_names: Vec<String>,

    /// Write the certificate being served (PEM) to this file, e.g. to put the
    /// generated one into the webhook configuration's caBundle by hand.
    #[arg(long, env = ENV_WRITE_CERT)]
    pub write_cert: Option<PathBuf>,

    /// The MutatingWebhookConfiguration whose webhooks' caBundle the
    /// injector keeps trusting its generated certificate (needs get and
    /// patch on it); not with --tls-cert.
    #[arg(long, env = ENV_WEBHOOK_CONFIG_NAME, conflicts_with = "tls_cert")]
    pub webhook_config_name: Option<String>,

    /// How often the caBundle is checked again (10s to 1h).
    #[arg(long, env = ENV_CA_BUNDLE_RESYNC, default_value = "1m", value_parser = humantime::parse_duration)]
    pub ca_bundle_resync: Duration,

    /// Largest AdmissionReview body accepted, in bytes (1024 to 67108864).
    #[arg(long, env = ENV_MAX_BODY_BYTES, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long a client may take to send a request's headers and body.
    #[arg(long, env = ENV_BODY_TIMEOUT, default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// Most connections open at once; more wait to be accepted (1 to 100000).
    #[arg(long, env = ENV_MAX_CONNECTIONS, default_value_t = 1024)]
    pub max_connections: usize,

    /// Image of the injected proxy container.
    #[arg(long, env = ENV_PROXY_IMAGE)]
    pub proxy_image: Option<String>,

    /// Image of the injected remora-init container.
    #[arg(long, env = ENV_INIT_IMAGE)]
    pub init_image: Option<String>,

    /// imagePullPolicy of the injected containers.
    #[arg(long, env = ENV_IMAGE_PULL_POLICY, default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,

    /// Inject the proxy as a native sidecar (`true`, Kubernetes 1.29+) or as
    /// the first regular container (`false`); `auto` asks the API server's
    /// version at start and falls back to `false` when it cannot.
    #[arg(long, env = ENV_NATIVE_SIDECAR, default_value = "auto")]
    pub native_sidecar: native_sidecar::Mode,

    /// The proxy's CPU request.
    #[arg(long, env = ENV_PROXY_CPU, default_value = "100m")]
    pub proxy_cpu: String,

    /// The proxy's CPU limit; empty for none.
    #[arg(long, env = ENV_PROXY_CPU_LIMIT, default_value = "")]
    pub proxy_cpu_limit: String,

    /// The proxy's memory request.
    #[arg(long, env = ENV_PROXY_MEMORY, default_value = "64Mi")]
    pub proxy_memory: String,

    /// The proxy's memory limit; empty for none.
    #[arg(long, env = ENV_PROXY_MEMORY_LIMIT, default_value = "256Mi")]
    pub proxy_memory_limit: String,

    /// The proxy's log level.
    #[arg(long, env = ENV_PROXY_LOG_LEVEL, default_value = "info",
          value_parser = ["trace", "debug", "info", "warn", "error"])]
    pub proxy_log_level: String,

    /// Audience of the projected identity token.
    #[arg(long, env = ENV_TOKEN_AUDIENCE, default_value = DEFAULT_TOKEN_AUDIENCE)]
    pub token_audience: String,

    /// Lifetime of the projected identity token (10m to 48h).
    #[arg(long, env = ENV_TOKEN_EXPIRATION, default_value = "1h", value_parser = humantime::parse_duration)]
    pub token_expiration: Duration,

    /// How long the proxy may take to become ready (1s to 1h).
    #[arg(long, env = ENV_PROXY_STARTUP_TIMEOUT, default_value = "2m", value_parser = humantime::parse_duration)]
    pub proxy_startup_timeout: Duration,

    /// remora-cp's certificate service (HOST:PORT) the injected proxy gets
    /// its certificate from; empty injects proxies without an identity.
    #[arg(long, env = ENV_CA_ADDR, default_value = DEFAULT_CA_ADDR)]
    pub ca_addr: String,

    /// The DNS name remora-cp's serving certificate carries; empty: the
    /// host of --ca-addr.
    #[arg(long, env = ENV_CA_SERVER_NAME, default_value = "")]
    pub ca_server_name: String,

    /// The ConfigMap in each meshed namespace whose `roots.pem` holds the
    /// roots remora-cp's serving certificate chains to.
    #[arg(long, env = ENV_CA_ROOTS_CONFIG_MAP, default_value = DEFAULT_CA_ROOTS_CONFIG_MAP)]
    pub ca_roots_config_map: String,

    /// remora-cp's discovery service the injected proxy gets its mesh config
    /// from: HOST:PORT, comma separated for failover (at most 16). Unset:
    /// --ca-addr (one port serves both). It uses the identity's roots and
    /// server name, so it needs --ca-addr; `--discovery-addr=` (empty)
    /// injects proxies without a config source.
    #[arg(long, env = ENV_DISCOVERY_ADDR)]
    pub discovery_addr: Option<String>,
}

/// The identity flags: none when --ca-addr is empty.
fn identity(
    ca_addr: &str,
    server_name: &str,
    config_map: &str,
) -> Result<Option<Identity>, ConfigError> {
    let invalid = |flag, reason: String| ConfigError { flag, reason };
    let ca_addr = ca_addr.trim();
    if ca_addr.is_empty() {
        return Ok(None);
    }
    host_port("ca-addr", ca_addr)?;
    let mut identity = Identity::for_ca(ca_addr);
    let server_name = server_name.trim();
    if !server_name.is_empty() {
        if !dns_name(server_name) {
            return Err(invalid(
                "ca-server-name",
                format!("{server_name:?} is not a DNS name"),
            ));
        }
        identity.ca_server_name = server_name.to_owned();
    }
    let config_map = config_map.trim();
    // A ConfigMap name is a DNS subdomain.
    if !dns_name(config_map) || config_map.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid(
            "ca-roots-config-map",
            format!("{config_map:?} is not a ConfigMap name (lower-case DNS subdomain)"),
        ));
    }
    identity.ca_roots_config_map = config_map.to_owned();
    Ok(Some(identity))
}

/// `value` is HOST:PORT, HOST a DNS name or an IP address (`[v6]` too).
fn host_port(flag: &'static str, value: &str) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError { flag, reason };
    let (host, port) = value
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| invalid(format!("{value:?} is not HOST:PORT")))?;
    if !matches!(port.parse::<u16>(), Ok(1..)) {
        return Err(invalid(format!("{value:?}: the port must be 1 to 65535")));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_err() && !dns_name(bare) {
        return Err(invalid(format!(
            "{host:?} is neither a DNS name nor an IP address"
        )));
    }
    Ok(())
}

/// The discovery flag: unset follows the identity's CA address (none
/// without one), empty is none; it needs an identity, whose roots and
/// server name the proxy's discovery client uses.
fn discovery_addrs(
    value: Option<&str>,
    identity: Option<&Identity>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let invalid = |reason: String| ConfigError {
        flag: "discovery-addr",
        reason,
    };
    let Some(value) = value.map(str::trim) else {
        return Ok(identity.map(|i| vec![i.ca_addr.clone()]));
    };
    if value.is_empty() {
        return Ok(None);
    }
    if identity.is_none() {
        return Err(invalid(
            "needs --ca-addr: the proxy reaches discovery with the identity's roots and server \
             name"
                .to_owned(),
        ));
    }
    let addrs: Vec<String> = value.split(',').map(|a| a.trim().to_owned()).collect();
    if addrs.len() > MAX_DISCOVERY_ADDRS {
        return Err(invalid(format!(
            "{} addresses; at most {MAX_DISCOVERY_ADDRS}",
            addrs.len()
        )));
    }
    for addr in &addrs {
        host_port("discovery-addr", addr)?;
    }
    Ok(Some(addrs))
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens,
/// 253 characters at most.
fn dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

/// How the webhook serves.
#[derive(Debug, Clone)]
pub struct Serve {
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub dns_names: Vec<String>,
    pub write_cert: Option<PathBuf>,
    pub limits: Limits,
    /// `--webhook-config-name`: keep that configuration's caBundle in sync.
    pub ca_bundle: Option<CaBundle>,
}

/// The webhook configuration whose caBundle the injector manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub webhook_config_name: String,
    pub resync: Duration,
}

/// Bounds on what one client may ask of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// The validated, frozen startup configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub serve: Serve,
    /// `--native-sidecar`. With `auto`, `settings.native_sidecar` holds the
    /// fallback (false) until [`native_sidecar::decide`] has asked the API
    /// server at start.
    pub native_sidecar: native_sidecar::Mode,
    pub settings: Settings,
}

impl Config {
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let invalid = |flag, reason: String| ConfigError { flag, reason };
        let range = |flag, value: Duration, min: Duration, max: Duration| {
            if (min..=max).contains(&value) {
                return Ok(value);
            }
            Err(invalid(
                flag,
                format!(
                    "must be {} to {}, not {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max),
                    humantime::format_duration(value)
                ),
            ))
        };
        let count = |flag, value: usize, min: usize, max: usize| {
            if (min..=max).contains(&value) {
                return Ok(value);
            }
            Err(invalid(
                flag,
                format!("must be {min} to {max}, not {value}"),
            ))
        };
        let (ms, secs) = (Duration::from_millis, Duration::from_secs);
        let limits = Limits {
            max_body_bytes: count("max-body-bytes", args.max_body_bytes, 1024, 64 << 20)?,
            body_timeout: range("body-timeout", args.body_timeout, ms(100), secs(60))?,
            max_connections: count("max-connections", args.max_connections, 1, 100_000)?,
        };
        let dns_names: Vec<String> = args
            .dns_names
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        if args.tls_cert.is_none() && dns_names.is_empty() {
            return Err(invalid(
                "dns-names",
                "the generated certificate needs at least one name; give the Service's DNS name"
                    .to_owned(),
            ));
        }
        let ca_bundle = match args.webhook_config_name.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(name) => {
                if !dns_name(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(invalid(
                        "webhook-config-name",
                        format!("{name:?} is not an object name (lower-case DNS subdomain)"),
                    ));
                }
                let (min, max) = crate::ca_bundle::RESYNC_RANGE;
                Some(CaBundle {
                    webhook_config_name: name.to_owned(),
                    resync: range("ca-bundle-resync", args.ca_bundle_resync, min, max)?,
                })
            }
        };
        let quantity = |flag, text: &str| {
            Quantity::parse(text).map_err(|e| invalid(flag, format!("`{text}`: {e}")))
        };
        let optional = |flag, text: &str| {
            let text = text.trim();
            (!text.is_empty()).then(|| quantity(flag, text)).transpose()
        };
        let defaults = Settings::default();
        let mut settings = Settings {
            proxy_image: args.proxy_image.unwrap_or(defaults.proxy_image),
            init_image: args.init_image.unwrap_or(defaults.init_image),
            image_pull_policy: args.image_pull_policy,
            native_sidecar: match args.native_sidecar {
                native_sidecar::Mode::Fixed(native) => native,
                native_sidecar::Mode::Auto => false,
            },
            proxy_cpu: quantity("proxy-cpu", &args.proxy_cpu)?,
            proxy_cpu_limit: optional("proxy-cpu-limit", &args.proxy_cpu_limit)?,
            proxy_memory: quantity("proxy-memory", &args.proxy_memory)?,
            proxy_memory_limit: optional("proxy-memory-limit", &args.proxy_memory_limit)?,
            proxy_log_level: args.proxy_log_level,
            token_audience: args.token_audience,
            // Kubernetes refuses token lifetimes under 10 minutes.
            token_expiration: range(
                "token-expiration",
                args.token_expiration,
                secs(600),
                secs(48 * 3600),
            )?,
            proxy_startup_timeout: range(
                "proxy-startup-timeout",
                args.proxy_startup_timeout,
                secs(1),
                secs(3600),
            )?,
            identity: identity(
                &args.ca_addr,
                &args.ca_server_name,
                &args.ca_roots_config_map,
            )?,
            discovery_addrs: None,
        };
        settings.discovery_addrs =
            discovery_addrs(args.discovery_addr.as_deref(), settings.identity.as_ref())?;
        if settings.token_audience.trim().is_empty() {
            return Err(invalid("token-audience", "must not be empty".to_owned()));
        }
        Ok(Config {
            serve: Serve {
                listen: args.listen,
                tls_cert: args.tls_cert,
                tls_key: args.tls_key,
                dns_names,
                write_cert: args.write_cert,
                limits,
                ca_bundle,
            },
            native_sidecar: args.native_sidecar,
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("remora-injector").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_settings_defaults() {
        let config = parse(&[]).expect("defaults are valid");
        // `auto` holds the fallback until the API server is asked.
        assert_eq!(config.native_sidecar, native_sidecar::Mode::Auto);
        assert_eq!(
            config.settings,
            Settings {
                native_sidecar: false,
                ..Settings::default()
            }
        );
        assert_eq!(config.serve.listen.port(), 8443);
        assert_eq!(config.serve.limits, Limits::default());
    }

    #[test]
    fn native_sidecar_is_auto_true_or_false() {
        let mode =
            |args: &[&str]| parse(args).map(|c| (c.native_sidecar, c.settings.native_sidecar));
        use native_sidecar::Mode::{Auto, Fixed};
        assert_eq!(mode(&[]), Ok((Auto, false)));
        assert_eq!(mode(&["--native-sidecar", "auto"]), Ok((Auto, false)));
        assert_eq!(mode(&["--native-sidecar", "true"]), Ok((Fixed(true), true)));
        assert_eq!(mode(&["--native-sidecar=false"]), Ok((Fixed(false), false)));
        let err = mode(&["--native-sidecar", "yes"]).unwrap_err();
        assert!(
            err.starts_with(
                "error: invalid value 'yes' for '--native-sidecar <NATIVE_SIDECAR>': \"yes\": use \
                 auto (ask the API server), true or false"
            ),
            "{err}"
        );
    }

    #[test]
    fn identity_flags() {
        let config = parse(&["--ca-addr", "remora-cp.mesh.svc:15012"]).expect("valid");
        assert_eq!(
            config.settings.identity,
            Some(Identity {
                ca_addr: "remora-cp.mesh.svc:15012".to_owned(),
                ca_server_name: "remora-cp.mesh.svc".to_owned(),
                ca_roots_config_map: "remora-ca-roots".to_owned(),
            })
        );
        let config = parse(&[
            "--ca-addr",
            "[fd00::1]:15012",
            "--ca-server-name",
            "remora-cp.remora-system.svc",
            "--ca-roots-config-map",
            "mesh-roots",
        ])
        .expect("valid");
        assert_eq!(
            config.settings.identity,
            Some(Identity {
                ca_addr: "[fd00::1]:15012".to_owned(),
                ca_server_name: "remora-cp.remora-system.svc".to_owned(),
                ca_roots_config_map: "mesh-roots".to_owned(),
            })
        );
        assert_eq!(
            parse(&["--ca-addr", ""]).expect("valid").settings.identity,
            None
        );
    }

    #[test]
    fn bad_identity_flags_name_the_flag() {
        let cases = [
            (&["--ca-addr", "remora-cp"][..], "--ca-addr: \"remora-cp\" is not HOST:PORT"),
            (&["--ca-addr", ":15012"], "--ca-addr: \":15012\" is not HOST:PORT"),
            (&["--ca-addr", "cp:0"], "--ca-addr: \"cp:0\": the port must be 1 to 65535"),
            (&["--ca-addr", "cp:65536"], "--ca-addr: \"cp:65536\": the port must be 1 to 65535"),
            (&["--ca-addr", "bad host:1"], "--ca-addr: \"bad host\" is neither a DNS name nor an IP address"),
            (&["--ca-server-name", "x_.svc"], "--ca-server-name: \"x_.svc\" is not a DNS name"),
            (&["--ca-roots-config-map", "Roots"], "--ca-roots-config-map: \"Roots\" is not a ConfigMap name (lower-case DNS subdomain)"),
            (&["--ca-roots-config-map", ""], "--ca-roots-config-map: \"\" is not a ConfigMap name (lower-case DNS subdomain)"),
        ];
        for (args, message) in cases {
            assert_eq!(parse(args).unwrap_err(), message, "{args:?}");
        }
    }

    #[test]
    fn the_webhook_configuration_is_named_and_checked() {
        assert_eq!(parse(&[]).expect("defaults").serve.ca_bundle, None);
        let config = parse(&["--webhook-config-name", "remora-injector"]).expect("valid");
        assert_eq!(
            config.serve.ca_bundle,
            Some(CaBundle {
                webhook_config_name: "remora-injector".to_owned(),
                resync: Duration::from_secs(60),
            })
        );
        let cases = [
            (&["--webhook-config-name", "Remora"][..], "--webhook-config-name: \"Remora\" is not an object name (lower-case DNS subdomain)"),
            (&["--webhook-config-name", "x", "--ca-bundle-resync", "5s"], "--ca-bundle-resync: must be 10s to 1h, not 5s"),
        ];
        for (args, message) in cases {
            assert_eq!(parse(args).unwrap_err(), message, "{args:?}");
        }
        let err = parse(&[
            "--webhook-config-name",
            "x",
            "--tls-cert",
            "/c",
            "--tls-key",
            "/k",
        ])
        .unwrap_err();
        assert!(err.contains("cannot be used with"), "{err}");
    }

    #[test]
    fn discovery_follows_the_ca_unless_set() {
        let addrs = |args: &[&str]| parse(args).map(|c| c.settings.discovery_addrs);
        assert_eq!(
            addrs(&[]),
            Ok(Some(vec!["remora-cp.remora-system.svc:15012".to_owned()]))
        );
        assert_eq!(
            addrs(&["--ca-addr", "remora-cp.mesh.svc:15012"]),
            Ok(Some(vec!["remora-cp.mesh.svc:15012".to_owned()]))
        );
        assert_eq!(
            addrs(&["--discovery-addr", "cp-0.mesh.svc:15012, [fd00::2]:15012"]),
            Ok(Some(vec![
                "cp-0.mesh.svc:15012".to_owned(),
                "[fd00::2]:15012".to_owned()
            ]))
        );
        assert_eq!(addrs(&["--discovery-addr", ""]), Ok(None));
        // Without an identity there is no discovery, unless asked for.
        assert_eq!(addrs(&["--ca-addr", ""]), Ok(None));
        let seventeen = vec!["cp:1"; 17].join(",");
        let cases = [
            (&["--ca-addr", "", "--discovery-addr", "cp:15012"][..], "--discovery-addr: needs --ca-addr: the proxy reaches discovery with the identity's roots and server name"),
            (&["--discovery-addr", "cp:15012,"], "--discovery-addr: \"\" is not HOST:PORT"),
            (&["--discovery-addr", "cp:0"], "--discovery-addr: \"cp:0\": the port must be 1 to 65535"),
            (&["--discovery-addr", "a b:1"], "--discovery-addr: \"a b\" is neither a DNS name nor an IP address"),
            (&["--discovery-addr", seventeen.as_str()], "--discovery-addr: 17 addresses; at most 16"),
        ];
        for (args, message) in cases {
            assert_eq!(addrs(args).unwrap_err(), message, "{args:?}");
        }
    }

    #[test]
    fn ranges_name_the_flag() {
        let cases = [
            (&["--max-body-bytes", "100"][..], "--max-body-bytes: must be 1024 to 67108864, not 100"),
            (&["--body-timeout", "2m"], "--body-timeout: must be 100ms to 1m, not 2m"),
            (&["--max-connections", "0"], "--max-connections: must be 1 to 100000, not 0"),
            (&["--token-expiration", "5m"], "--token-expiration: must be 10m to 2days, not 5m"),
            (&["--proxy-memory", "lots"], "--proxy-memory: `lots`: not a Kubernetes quantity; use e.g. 128Mi, 1Gi, 100m or 2"),
            (&["--dns-names", ""], "--dns-names: the generated certificate needs at least one name; give the Service's DNS name"),
        ];
        for (args, message) in cases {
            assert_eq!(parse(args).unwrap_err(), message, "{args:?}");
        }
        let config =
            parse(&["--proxy-memory-limit", "", "--native-sidecar", "false"]).expect("valid");
        assert_eq!(config.settings.proxy_memory_limit, None);
        assert!(!config.settings.native_sidecar);
        assert!(parse(&["--tls-cert", "/x"])
            .unwrap_err()
            .contains("--tls-key"));
    }
}
