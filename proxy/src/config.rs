//! Startup settings: parsed once from flags and environment, validated, and
//! frozen in an `Arc<Config>`. Dynamic mesh config (routes, endpoints) is not
//! here; it is state that changes while the proxy runs.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

/// Ports of protocols where the server speaks first (or that never benefit
/// from detection). Connections to them skip protocol detection, so a client
/// that waits for a banner is never held for the detect timeout. These match
/// Linkerd's defaults.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

/// Source address the inbound proxy binds when it forwards to the app. The
/// capture rules return traffic from this address untouched, which is what
/// keeps the inbound forward from being captured again.
pub const INBOUND_SOURCE_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// IPv6 twin of [`INBOUND_SOURCE_V4`]; `remora-init` adds it to `lo`.
pub const INBOUND_SOURCE_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// Environment variables of the identity and app-probe flags (the older flags name theirs
/// inline, beside the flag).
pub mod env {
    pub const CA_ADDR: &str = "REMORA_CA_ADDR";
    pub const CA_SERVER_NAME: &str = "REMORA_CA_SERVER_NAME";
    pub const CA_ROOTS: &str = "REMORA_CA_ROOTS";
    pub const IDENTITY_TOKEN_FILE: &str = "REMORA_IDENTITY_TOKEN_FILE";
    pub const CERT_LIFETIME: &str = "REMORA_CERT_LIFETIME";
    pub const APP_PROBES: &str = "REMORA_APP_PROBES";
    pub const DISCOVERY_ADDR: &str = "REMORA_DISCOVERY_ADDR";
    pub const DISCOVERY_WAIT: &str = "REMORA_DISCOVERY_WAIT";
    pub const DISCOVERY_MAX_DESTINATIONS: &str = "REMORA_DISCOVERY_MAX_DESTINATIONS";
    pub const DISCOVERY_IDLE_UNSUBSCRIBE: &str = "REMORA_DISCOVERY_IDLE_UNSUBSCRIBE";
    pub const POD_NAME: &str = "REMORA_POD_NAME";
    pub const POD_NAMESPACE: &str = "REMORA_POD_NAMESPACE";
}

/// Where the injector projects the service-account token (audience `remora.dev`;
/// injector/src/inject.rs, IDENTITY_DIR and TOKEN_FILE).
pub const DEFAULT_IDENTITY_TOKEN_FILE: &str = "/var/run/secrets/remora.dev/identity/token";
/// The name in remora-cp's serving certificate that the proxy checks.
pub const DEFAULT_CA_SERVER_NAME: &str = "remora-cp.remora-system.svc";
/// The range of `--cert-lifetime` when it is not 0 (0 leaves it to the CA).
pub const CERT_LIFETIME_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(365 * 24 * 3600);
/// The range of `--discovery-wait`.
pub const DISCOVERY_WAIT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(30);
/// The range of `--discovery-max-destinations` (remora-cp's own default
/// limit per stream is 1024).
pub const DISCOVERY_MAX_DESTINATIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=65_536;
/// The range of `--discovery-idle-unsubscribe`.
pub const DISCOVERY_IDLE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(24 * 3600);
/// At most this many `--discovery-addr` entries.
pub const MAX_DISCOVERY_ADDRS: usize = 16;

/// Command-line flags. Every flag can also be set with the environment
/// variable named beside it.
#[derive(Debug, Clone, Parser)]
#[command(name = "remora-proxy", version, about = "Remora's sidecar proxy")]
pub struct Args {
    /// Port of the outbound capture listener (iptables redirects the app's
    /// outgoing TCP here).
    #[arg(long, env = "REMORA_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,

    /// Port of the inbound capture listener (iptables redirects incoming TCP
    /// here).
    #[arg(long, env = "REMORA_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,

    /// Address of the admin server (/live, /ready, /metrics, /drain).
    #[arg(long, env = "REMORA_ADMIN_ADDR", default_value = "0.0.0.0:15020")]
    pub admin_addr: SocketAddr,

    /// Destination ports that skip protocol detection and are proxied as
    /// opaque TCP, comma separated.
    #[arg(long, env = "REMORA_OPAQUE_PORTS", default_value = DEFAULT_OPAQUE_PORTS, value_delimiter = ',')]
    pub opaque_ports: Vec<u16>,

    /// How long protocol detection waits for the client's first bytes before
    /// treating the connection as opaque TCP.
    #[arg(long, env = "REMORA_DETECT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub detect_timeout: Duration,

    /// How long to wait for an upstream TCP connection to be established.
    #[arg(long, env = "REMORA_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// On drain, how long open connections may keep going before they are
    /// closed by force.
    #[arg(long, env = "REMORA_DRAIN_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_deadline: Duration,

    /// Worker threads for the data plane. 0 means one per CPU.
    #[arg(long, env = "REMORA_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Also listen on IPv6 (`auto` does so when the host supports it).
    #[arg(long, env = "REMORA_IPV6", default_value = "auto")]
    pub ipv6: IpFamilyMode,

    /// Standalone mode: read the mesh config (YAML or JSON) from this file
    /// and reload it whenever it changes.
    #[arg(long, env = "REMORA_CONFIG")]
    pub config: Option<PathBuf>,

    /// Most idle HTTP/1 connections kept open to each upstream endpoint.
    #[arg(long, env = "REMORA_MAX_IDLE_PER_ENDPOINT", default_value_t = 64)]
    pub max_idle_per_endpoint: usize,

    /// An opaque TCP connection (or upgraded tunnel) that carries no bytes in
    /// either direction for this long is closed.
    #[arg(long, env = "REMORA_TCP_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub tcp_idle_timeout: Duration,

    /// Most connections each listener (outbound, inbound) holds open at once;
    /// past it new connections are reset at once. Default: 20000, or less
    /// when the open-file limit cannot carry that many.
    #[arg(long, env = "REMORA_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// The app's probes the admin port answers at /app-health/..., as JSON
    /// (the injector writes it; docs/injector.md).
    #[arg(
        long,
        env = env::APP_PROBES,
        default_value = "",
        hide_default_value = true
    )]
    pub app_probes: String,
    /// remora-cp's certificate service, HOST:PORT. Without it the proxy has
    /// no workload identity (no certificate, no mTLS).
    #[arg(long, env = env::CA_ADDR)]
    pub ca_addr: Option<String>,

    /// The DNS name remora-cp's serving certificate must carry.
    #[arg(long, env = env::CA_SERVER_NAME, default_value = DEFAULT_CA_SERVER_NAME)]
    pub ca_server_name: String,

    /// PEM roots that remora-cp's serving certificate chains to, for the
    /// first connection (e.g. a ConfigMap); later the fetched trust bundle
    /// is trusted too. Required with --ca-addr.
    #[arg(long, env = env::CA_ROOTS)]
    pub ca_roots: Option<PathBuf>,

    /// The service-account token sent with each certificate request; re-read
    /// every time, since kubelet rotates it.
    #[arg(long, env = env::IDENTITY_TOKEN_FILE, default_value = DEFAULT_IDENTITY_TOKEN_FILE)]
    pub identity_token_file: PathBuf,

    /// The certificate lifetime to ask for; 0 takes the CA's default.
    #[arg(long, env = env::CERT_LIFETIME, default_value = "0s", value_parser = humantime::parse_duration)]
    pub cert_lifetime: Duration,

    /// Discovery mode: remora-cp's discovery service, HOST:PORT, comma
    /// separated; the proxy fails over between them in order. Trusts
    /// --ca-roots and checks --ca-server-name. Excludes --config.
    #[arg(long, env = env::DISCOVERY_ADDR, value_delimiter = ',')]
    pub discovery_addr: Vec<String>,

    /// How long the first connection to a destination the config does not
    /// know waits for remora-cp's answer before passing through.
    #[arg(long, env = env::DISCOVERY_WAIT, default_value = "2s", value_parser = humantime::parse_duration)]
    pub discovery_wait: Duration,

    /// Most outbound destinations subscribed at once; past it new ones pass
    /// through to their original destination.
    #[arg(long, env = env::DISCOVERY_MAX_DESTINATIONS, default_value_t = 1024)]
    pub discovery_max_destinations: usize,

    /// A destination with no connection or request for this long is
    /// unsubscribed and dropped from the config (10s to 24h); the next
    /// connection to it subscribes again.
    #[arg(long, env = env::DISCOVERY_IDLE_UNSUBSCRIBE, default_value = "10m", value_parser = humantime::parse_duration)]
    pub discovery_idle_unsubscribe: Duration,

    /// This pod's name, for discovery (the downward API's metadata.name).
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,

    /// This pod's namespace, for discovery (metadata.namespace).
    #[arg(long, env = env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,
}

/// Whether the proxy listens on IPv6 as well as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IpFamilyMode {
    /// Listen on IPv6 when the kernel supports it.
    Auto,
    /// Always listen on IPv6; failing to bind is an error.
    True,
    /// IPv4 only.
    False,
}

/// A startup setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

/// Validated, frozen startup settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_addr: SocketAddr,
    pub opaque_ports: BTreeSet<u16>,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    pub drain_deadline: Duration,
    pub workers: usize,
    pub ipv6: IpFamilyMode,
    /// Where the mesh config file lives in standalone mode.
    pub config_path: Option<PathBuf>,
    pub max_idle_per_endpoint: usize,
    pub tcp_idle_timeout: Duration,
    /// Per listener; `None` leaves it to the open-file limit (see `limits`).
    pub max_connections: Option<usize>,
    /// The checks behind /app-health/... on the admin port.
    pub app_probes: Arc<crate::AppProbes>,
    /// How to get a workload certificate; `None` without `--ca-addr`.
    pub identity: Option<IdentityConfig>,
    /// Where the mesh config comes from in discovery mode; `None` without
    /// `--discovery-addr`.
    pub discovery: Option<DiscoveryConfig>,
}

/// The discovery client's settings (`--discovery-addr` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// remora-cp replicas, `(host, port)`, tried in this order.
    pub addrs: Vec<(String, u16)>,
    /// The DNS name checked in remora-cp's serving certificate.
    pub server_name: String,
    pub ca_roots: PathBuf,
    pub pod_name: String,
    pub pod_namespace: String,
    pub wait: Duration,
    pub max_destinations: usize,
    /// Unused this long, a destination is unsubscribed.
    pub idle_unsubscribe: Duration,
}

/// The certificate client's settings (`--ca-addr` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// The CA's host (a DNS name or an IP address) and port.
    pub ca_host: String,
    pub ca_port: u16,
    /// The DNS name checked in the CA's serving certificate.
    pub ca_server_name: String,
    pub ca_roots: PathBuf,
    pub token_file: PathBuf,
    /// `None`: the CA's default lifetime.
    pub cert_lifetime: Option<Duration>,
}

/// The range of `--tcp-idle-timeout`.
pub const TCP_IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);
/// The range of `--max-connections`.
pub const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=1_000_000;

impl Config {
    /// Checks the flags and freezes them.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let invalid = |flag, reason: &str| ConfigError::Invalid {
            flag,
            reason: reason.to_string(),
        };
        if args.outbound_port == 0 {
            return Err(invalid("outbound-port", "must be between 1 and 65535"));
        }
        if args.inbound_port == 0 {
            return Err(invalid("inbound-port", "must be between 1 and 65535"));
        }
        if args.inbound_port == args.outbound_port {
            return Err(invalid("inbound-port", "must differ from --outbound-port"));
        }
        if args.opaque_ports.contains(&0) {
            return Err(invalid("opaque-ports", "0 is not a port"));
        }
        // Every number has a range, so that no accepted value can overflow
        // an `Instant` (a detect timeout of 300000000000y panicked on the
        // first connection) or ask for absurd resources.
        let duration = |flag, value: Duration, min: Duration, max: Duration| {
            if (min..=max).contains(&value) {
                return Ok(());
            }
            Err(ConfigError::Invalid {
                flag,
                reason: format!(
                    "must be {} to {}, not {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max),
                    humantime::format_duration(value)
                ),
            })
        };
        let count = |flag, value: usize, max: usize| {
            if value <= max {
                return Ok(());
            }
            Err(ConfigError::Invalid {
                flag,
                reason: format!("must be 0 to {max}, not {value}"),
            })
        };
        let (ms, secs) = (Duration::from_millis, Duration::from_secs);
        // A client that has sent nothing for a minute is not going to.
        duration("detect-timeout", args.detect_timeout, ms(1), secs(60))?;
        // The kernel gives up on a SYN after about two minutes.
        duration("connect-timeout", args.connect_timeout, ms(1), secs(300))?;
        // 0s closes at once; past an hour, Kubernetes has long since killed us.
        duration("drain-deadline", args.drain_deadline, ms(0), secs(3600))?;
        // 0 is one per CPU.
        count("workers", args.workers, 1024)?;
        count("max-idle-per-endpoint", args.max_idle_per_endpoint, 10_000)?;
        check_limits(&args)?;
        let app_probes =
            crate::AppProbes::parse(&args.app_probes).map_err(|e| ConfigError::Invalid {
                flag: "app-probes",
                reason: format!("REMORA_APP_PROBES {e}"),
            })?;
        let identity = identity_config(&args)?;
        let discovery = discovery_config(&args)?;
        let workers = match args.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(Config {
            outbound_port: args.outbound_port,
            inbound_port: args.inbound_port,
            admin_addr: args.admin_addr,
            opaque_ports: args.opaque_ports.into_iter().collect(),
            detect_timeout: args.detect_timeout,
            connect_timeout: args.connect_timeout,
            drain_deadline: args.drain_deadline,
            workers,
            ipv6: args.ipv6,
            config_path: args.config,
            max_idle_per_endpoint: args.max_idle_per_endpoint,
            tcp_idle_timeout: args.tcp_idle_timeout,
            max_connections: args.max_connections,
            app_probes: Arc::new(app_probes),
            identity,
            discovery,
        })
    }
}

/// `HOST:PORT` with a host that is a DNS name or an IP address (`[v6]`
/// bracketed); the host comes back bare.
fn host_port(flag: &'static str, addr: &str) -> Result<(String, u16), ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { flag, reason };
    let (host, port) = addr
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| invalid(format!("{addr:?} is not HOST:PORT")))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(format!("{addr:?}: the port must be 1 to 65535")))?;
    // `[::1]:15012` names an IPv6 address; `lookup_host` wants it bare.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host_ok = host.parse::<std::net::IpAddr>().is_ok()
        || rustls_pki_types::DnsName::try_from(host).is_ok();
    if !host_ok {
        return Err(invalid(format!(
            "{host:?} is neither a DNS name nor an IP address"
        )));
    }
    Ok((host.to_owned(), port))
}

/// The discovery flags: all hang on `--discovery-addr`, which excludes
/// `--config`.
fn discovery_config(args: &Args) -> Result<Option<DiscoveryConfig>, ConfigError> {
    let invalid = |flag, reason: String| ConfigError::Invalid { flag, reason };
    if args.discovery_addr.is_empty() {
        return Ok(None);
    }
    if args.config.is_some() {
        return Err(invalid(
            "discovery-addr",
            "excludes --config: the mesh config comes either from remora-cp or from a file"
                .to_owned(),
        ));
    }
    if args.discovery_addr.len() > MAX_DISCOVERY_ADDRS {
        return Err(invalid(
            "discovery-addr",
            format!(
                "{} addresses; at most {MAX_DISCOVERY_ADDRS}",
                args.discovery_addr.len()
            ),
        ));
    }
    let addrs = args
        .discovery_addr
        .iter()
        .map(|a| host_port("discovery-addr", a))
        .collect::<Result<Vec<_>, _>>()?;
    if rustls_pki_types::DnsName::try_from(args.ca_server_name.as_str()).is_err() {
        return Err(invalid(
            "ca-server-name",
            format!("{:?} is not a DNS name", args.ca_server_name),
        ));
    }
    let ca_roots = args.ca_roots.clone().ok_or_else(|| {
        invalid(
            "ca-roots",
            "is required with --discovery-addr: the PEM roots remora-cp's serving certificate chains to"
                .to_owned(),
        )
    })?;
    // Kubernetes names, as remora-cp checks them.
    let name = |flag, value: &Option<String>, max: usize| {
        let value = value.clone().unwrap_or_default();
        let ok = !value.is_empty()
            && value.len() <= max
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if ok {
            Ok(value)
        } else {
            Err(invalid(
                flag,
                format!(
                    "{value:?}: required with --discovery-addr, a Kubernetes name of 1 to {max} \
                     lowercase letters, digits, '-' and '.'"
                ),
            ))
        }
    };
    let pod_name = name("pod-name", &args.pod_name, 253)?;
    let pod_namespace = name("pod-namespace", &args.pod_namespace, 63)?;
    if !DISCOVERY_WAIT_RANGE.contains(&args.discovery_wait) {
        return Err(invalid(
            "discovery-wait",
            format!(
                "must be 10ms to 30s, not {}",
                humantime::format_duration(args.discovery_wait)
            ),
        ));
    }
    if !DISCOVERY_MAX_DESTINATIONS_RANGE.contains(&args.discovery_max_destinations) {
        return Err(invalid(
            "discovery-max-destinations",
            format!(
                "must be 1 to 65536, not {}",
                args.discovery_max_destinations
            ),
        ));
    }
    if !DISCOVERY_IDLE_RANGE.contains(&args.discovery_idle_unsubscribe) {
        return Err(invalid(
            "discovery-idle-unsubscribe",
            format!(
                "must be 10s to 24h, not {}",
                humantime::format_duration(args.discovery_idle_unsubscribe)
            ),
        ));
    }
    Ok(Some(DiscoveryConfig {
        addrs,
        server_name: args.ca_server_name.clone(),
        ca_roots,
        pod_name,
        pod_namespace,
        wait: args.discovery_wait,
        max_destinations: args.discovery_max_destinations,
        idle_unsubscribe: args.discovery_idle_unsubscribe,
    }))
}

/// The identity flags: all or nothing hangs on `--ca-addr`.
fn identity_config(args: &Args) -> Result<Option<IdentityConfig>, ConfigError> {
    let invalid = |flag, reason: String| ConfigError::Invalid { flag, reason };
    let Some(addr) = &args.ca_addr else {
        return Ok(None);
    };
    let (host, port) = host_port("ca-addr", addr)?;
    if rustls_pki_types::DnsName::try_from(args.ca_server_name.as_str()).is_err() {
        return Err(invalid(
            "ca-server-name",
            format!("{:?} is not a DNS name", args.ca_server_name),
        ));
    }
    let ca_roots = args.ca_roots.clone().ok_or_else(|| {
        invalid(
            "ca-roots",
            "is required with --ca-addr: the PEM roots remora-cp's serving certificate chains to"
                .to_owned(),
        )
    })?;
    let cert_lifetime = match args.cert_lifetime {
        Duration::ZERO => None,
        d if CERT_LIFETIME_RANGE.contains(&d) => Some(d),
        d => {
            return Err(invalid(
                "cert-lifetime",
                format!(
                    "must be 0 (the CA's default) or 10s to 365d, not {}",
                    humantime::format_duration(d)
                ),
            ))
        }
    };
    Ok(Some(IdentityConfig {
        ca_host: host,
        ca_port: port,
        ca_server_name: args.ca_server_name.clone(),
        ca_roots,
        token_file: args.identity_token_file.clone(),
        cert_lifetime,
    }))
}

/// The connection-exhaustion flags: idle timeout and connection limit.
fn check_limits(args: &Args) -> Result<(), ConfigError> {
    if !TCP_IDLE_TIMEOUT_RANGE.contains(&args.tcp_idle_timeout) {
        return Err(ConfigError::Invalid {
            flag: "tcp-idle-timeout",
            reason: format!(
                "{} is out of range: use 1s to 7d",
                humantime::format_duration(args.tcp_idle_timeout)
            ),
        });
    }
    if let Some(max) = args.max_connections {
        if !MAX_CONNECTIONS_RANGE.contains(&max) {
            return Err(ConfigError::Invalid {
                flag: "max-connections",
                reason: format!(
                    "{max} is out of range: use 1 to {}",
                    MAX_CONNECTIONS_RANGE.end()
                ),
            });
        }
    }
    Ok(())
}

/// The defaults, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn defaults() -> Config {
    let args = <Args as Parser>::parse_from(["remora-proxy"]);
    Config::from_args(args).expect("the defaults are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("remora-proxy").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_shared_contract() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.outbound_port, 15001);
        assert_eq!(config.inbound_port, 15006);
        assert_eq!(config.admin_addr.port(), 15020);
        assert!(config.opaque_ports.contains(&3306));
        assert!(config.opaque_ports.contains(&25));
        assert_eq!(config.detect_timeout, Duration::from_secs(1));
        assert!(config.workers >= 1);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let err = parse(&["--inbound-port", "15001"]).unwrap_err();
        assert!(err.contains("--inbound-port"), "{err}");
        let err = parse(&["--opaque-ports", "25,0"]).unwrap_err();
        assert!(err.contains("--opaque-ports"), "{err}");
        let err = parse(&["--outbound-port", "70000"]).unwrap_err();
        assert!(err.contains("outbound-port"), "{err}");
        let err = parse(&["--detect-timeout", "soon"]).unwrap_err();
        assert!(err.contains("detect-timeout"), "{err}");
    }

    /// Each number's range: both ends pass, a step past either fails with
    /// a message that names the flag and the range.
    #[test]
    fn every_number_has_a_range() {
        // (flag, values accepted, values refused with the message)
        type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
        let cases: &[Case<'_>] = &[
            (
                "--detect-timeout",
                &["1ms", "60s"],
                &[
                    ("0s", "--detect-timeout: must be 1ms to 1m, not 0s"),
                    ("60001ms", "--detect-timeout: must be 1ms to 1m, not 1m 1ms"),
                    (
                        "300000000000y",
                        "--detect-timeout: must be 1ms to 1m, not 300000000000years",
                    ),
                ],
            ),
            (
                "--connect-timeout",
                &["1ms", "5m"],
                &[
                    ("0s", "--connect-timeout: must be 1ms to 5m, not 0s"),
                    ("301s", "--connect-timeout: must be 1ms to 5m, not 5m 1s"),
                ],
            ),
            (
                "--drain-deadline",
                &["0s", "1h"],
                &[
                    ("3601s", "--drain-deadline: must be 0s to 1h, not 1h 1s"),
                    (
                        "300000000000y",
                        "--drain-deadline: must be 0s to 1h, not 300000000000years",
                    ),
                ],
            ),
            (
                "--workers",
                &["0", "1", "1024"],
                &[("1025", "--workers: must be 0 to 1024, not 1025")],
            ),
            (
                "--max-idle-per-endpoint",
                &["0", "10000"],
                &[(
                    "18446744073709551615",
                    "--max-idle-per-endpoint: must be 0 to 10000, not 18446744073709551615",
                )],
            ),
        ];
        for (flag, accepted, refused) in cases {
            for value in *accepted {
                if let Err(e) = parse(&[flag, value]) {
                    panic!("{flag} {value}: {e}");
                }
            }
            for (value, message) in *refused {
                assert_eq!(
                    parse(&[flag, value]).unwrap_err(),
                    *message,
                    "{flag} {value}"
                );
            }
        }
        let config = parse(&["--workers", "1024", "--drain-deadline", "0s"]).expect("valid");
        assert_eq!(config.workers, 1024);
        assert_eq!(config.drain_deadline, Duration::ZERO);
    }

    #[test]
    fn connection_limits_have_defaults_and_ranges() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.tcp_idle_timeout, Duration::from_secs(3600));
        assert_eq!(config.max_connections, None, "left to the open-file limit");
        let config =
            parse(&["--tcp-idle-timeout", "2s", "--max-connections", "50"]).expect("valid");
        assert_eq!(config.tcp_idle_timeout, Duration::from_secs(2));
        assert_eq!(config.max_connections, Some(50));
        assert!(parse(&["--tcp-idle-timeout", "7d"]).is_ok());
        for bad in ["0s", "999ms", "8d", "300000000000y"] {
            let err = parse(&["--tcp-idle-timeout", bad]).unwrap_err();
            assert!(err.contains("tcp-idle-timeout"), "{bad}: {err}");
        }
        for bad in ["0", "1000001", "-1", "many"] {
            let err = parse(&[&format!("--max-connections={bad}")]).unwrap_err();
            assert!(err.contains("max-connections"), "{bad}: {err}");
        }
    }

    #[test]
    fn identity_flags_hang_on_ca_addr() {
        let config = parse(&[]).expect("defaults are valid");
        assert_eq!(config.identity, None, "no --ca-addr, no identity");
        let identity_of = |addr: &str, extra: &[&str]| {
            let mut argv = vec!["--ca-addr", addr, "--ca-roots", "/r.pem"];
            argv.extend_from_slice(extra);
            parse(&argv)
                .expect("valid")
                .identity
                .expect("identity configured")
        };
        let identity = identity_of("remora-cp.remora-system.svc:15012", &[]);
        assert_eq!(identity.ca_host, "remora-cp.remora-system.svc");
        assert_eq!(identity.ca_port, 15012);
        assert_eq!(identity.ca_server_name, "remora-cp.remora-system.svc");
        assert_eq!(
            identity.token_file,
            PathBuf::from("/var/run/secrets/remora.dev/identity/token")
        );
        assert_eq!(identity.cert_lifetime, None);
        let identity = identity_of("[::1]:1", &["--cert-lifetime", "365d"]);
        assert_eq!(identity.ca_host, "::1");
        let year = Duration::from_secs(365 * 86_400);
        assert_eq!(identity.cert_lifetime, Some(year));
        let identity = identity_of("10.0.0.1:15012", &["--cert-lifetime", "10s"]);
        assert_eq!(identity.cert_lifetime, Some(Duration::from_secs(10)));
    }

    #[test]
    fn bad_identity_flags_name_the_flag() {
        let roots = ["--ca-roots", "/r"];
        for (args, message) in [
            (
                &["--ca-addr", "remora-cp"][..],
                "--ca-addr: \"remora-cp\" is not HOST:PORT",
            ),
            (
                &["--ca-addr", ":15012"],
                "--ca-addr: \":15012\" is not HOST:PORT",
            ),
            (
                &["--ca-addr", "cp:0"],
                "--ca-addr: \"cp:0\": the port must be 1 to 65535",
            ),
            (
                &["--ca-addr", "cp:65536"],
                "--ca-addr: \"cp:65536\": the port must be 1 to 65535",
            ),
            (
                &["--ca-addr", "bad host:1"],
                "--ca-addr: \"bad host\" is neither a DNS name nor an IP address",
            ),
            (
                &["--ca-addr", "cp:1", "--ca-server-name", "a b"],
                "--ca-server-name: \"a b\" is not a DNS name",
            ),
            (
                &["--ca-addr", "cp:1", "--cert-lifetime", "9s"],
                "--cert-lifetime: must be 0 (the CA's default) or 10s to 365d, not 9s",
            ),
            (
                &["--ca-addr", "cp:1", "--cert-lifetime", "366d"],
                "--cert-lifetime: must be 0 (the CA's default) or 10s to 365d, not 1year 18h",
            ),
        ] {
            let mut argv = args.to_vec();
            argv.extend_from_slice(&roots);
            assert_eq!(parse(&argv).unwrap_err(), message, "{args:?}");
        }
        let err = parse(&["--ca-addr", "cp:1"]).unwrap_err();
        assert!(
            err.starts_with("--ca-roots: is required with --ca-addr"),
            "{err}"
        );
    }

    #[test]
    fn discovery_flags_hang_on_discovery_addr_and_exclude_config() {
        assert_eq!(parse(&[]).expect("defaults").discovery, None);
        let base = [
            "--ca-roots",
            "/r.pem",
            "--pod-name",
            "web-1",
            "--pod-namespace",
            "shop",
        ];
        let with = |extra: &[&str]| {
            let mut argv = base.to_vec();
            argv.extend_from_slice(extra);
            parse(&argv)
        };
        let d = with(&["--discovery-addr", "cp-a:15012,[::1]:15013"])
            .expect("valid")
            .discovery
            .expect("discovery configured");
        assert_eq!(
            d.addrs,
            [("cp-a".to_owned(), 15012), ("::1".to_owned(), 15013)]
        );
        assert_eq!(d.server_name, "remora-cp.remora-system.svc");
        assert_eq!(
            (d.pod_name.as_str(), d.pod_namespace.as_str()),
            ("web-1", "shop")
        );
        assert_eq!(d.wait, Duration::from_secs(2));
        assert_eq!(d.max_destinations, 1024);
        assert_eq!(d.idle_unsubscribe, Duration::from_secs(600));
        let d = with(&[
            "--discovery-addr=cp:1",
            "--discovery-wait=10ms",
            "--discovery-max-destinations=65536",
            "--discovery-idle-unsubscribe=10s",
        ])
        .expect("valid")
        .discovery
        .expect("discovery configured");
        assert_eq!(d.wait, Duration::from_millis(10));
        assert_eq!(d.max_destinations, 65536);
        assert_eq!(d.idle_unsubscribe, Duration::from_secs(10));
        assert!(with(&["--discovery-addr=cp:1", "--discovery-idle-unsubscribe=24h"]).is_ok());
        assert!(with(&["--discovery-addr=cp:1", "--discovery-wait=30s"]).is_ok());
        let sixteen = vec!["cp:1"; 16].join(",");
        assert!(with(&["--discovery-addr", &sixteen]).is_ok());
        let seventeen = vec!["cp:1"; 17].join(",");
        for (extra, message) in [
            (
                &["--discovery-addr", "cp:1", "--config", "/m.yaml"][..],
                "--discovery-addr: excludes --config: the mesh config comes either from remora-cp or from a file",
            ),
            (&["--discovery-addr", "cp"], "--discovery-addr: \"cp\" is not HOST:PORT"),
            (
                &["--discovery-addr", "cp:1,cp:0"],
                "--discovery-addr: \"cp:0\": the port must be 1 to 65535",
            ),
            (
                &["--discovery-addr", &seventeen],
                "--discovery-addr: 17 addresses; at most 16",
            ),
            (
                &["--discovery-addr=cp:1", "--discovery-wait=9ms"],
                "--discovery-wait: must be 10ms to 30s, not 9ms",
            ),
            (
                &["--discovery-addr=cp:1", "--discovery-wait=31s"],
                "--discovery-wait: must be 10ms to 30s, not 31s",
            ),
            (
                &["--discovery-addr=cp:1", "--discovery-idle-unsubscribe=9s"],
                "--discovery-idle-unsubscribe: must be 10s to 24h, not 9s",
            ),
            (
                &["--discovery-addr=cp:1", "--discovery-idle-unsubscribe=25h"],
                "--discovery-idle-unsubscribe: must be 10s to 24h, not 1day 1h",
            ),
            (
                &["--discovery-addr=cp:1", "--discovery-max-destinations=0"],
                "--discovery-max-destinations: must be 1 to 65536, not 0",
            ),
            (
                &["--discovery-addr=cp:1", "--discovery-max-destinations=65537"],
                "--discovery-max-destinations: must be 1 to 65536, not 65537",
            ),
        ] {
            assert_eq!(with(extra).unwrap_err(), message, "{extra:?}");
        }
        let err = parse(&[
            "--discovery-addr=cp:1",
            "--ca-roots=/r",
            "--pod-name=Web_1",
            "--pod-namespace=shop",
        ])
        .unwrap_err();
        assert_eq!(
            err,
            "--pod-name: \"Web_1\": required with --discovery-addr, a Kubernetes name of 1 to 253 lowercase letters, digits, '-' and '.'"
        );
        let err = parse(&["--discovery-addr=cp:1", "--ca-roots=/r", "--pod-name=w"]).unwrap_err();
        assert!(
            err.starts_with("--pod-namespace: \"\": required with --discovery-addr"),
            "{err}"
        );
        let err = parse(&["--discovery-addr=cp:1", "--ca-roots=/r"]).unwrap_err();
        assert!(
            err.starts_with("--pod-name: \"\": required with --discovery-addr"),
            "{err}"
        );
        let err = parse(&["--discovery-addr=cp:1"]).unwrap_err();
        assert!(
            err.starts_with("--ca-roots: is required with --discovery-addr"),
            "{err}"
        );
    }

    #[test]
    fn opaque_ports_are_a_list() {
        let config = parse(&["--opaque-ports", "1,2,3"]).expect("valid");
        assert_eq!(
            config.opaque_ports.into_iter().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }
}
