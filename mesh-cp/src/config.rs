//! Startup settings: parsed once from flags and environment, checked, and
//! frozen in an `Arc<Config>`. Dynamic state (the CA, tokens) is not here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::ca::MIN_LEAF_LIFETIME;
use crate::identity::{Identity, IdentityError};

/// Environment variables, one per flag; the names live here only.
pub mod env {
    pub const GRPC_ADDR: &str = "REMORA_CP_GRPC_ADDR";
    pub const ADMIN_ADDR: &str = "REMORA_CP_ADMIN_ADDR";
    pub const TRUST_DOMAIN: &str = "REMORA_CP_TRUST_DOMAIN";
    pub const STATE_DIR: &str = "REMORA_CP_STATE_DIR";
    pub const ROOT_CERT: &str = "REMORA_CP_ROOT_CERT";
    pub const ROOT_KEY: &str = "REMORA_CP_ROOT_KEY";
    pub const EXTRA_TRUST_ROOTS: &str = "REMORA_CP_EXTRA_TRUST_ROOTS";
    pub const TOKEN_FILE: &str = "REMORA_CP_TOKEN_FILE";
    pub const AUTH: &str = "REMORA_CP_AUTH";
    pub const TOKEN_AUDIENCE: &str = "REMORA_CP_TOKEN_AUDIENCE";
    pub const CERT_LIFETIME: &str = "REMORA_CP_CERT_LIFETIME";
    pub const CERT_MAX_LIFETIME: &str = "REMORA_CP_CERT_MAX_LIFETIME";
    pub const INTERMEDIATE_LIFETIME: &str = "REMORA_CP_INTERMEDIATE_LIFETIME";
    pub const ROOT_LIFETIME: &str = "REMORA_CP_ROOT_LIFETIME";
    pub const NAMESPACE: &str = "REMORA_CP_NAMESPACE";
    pub const SERVICE_ACCOUNT: &str = "REMORA_CP_SERVICE_ACCOUNT";
    pub const DNS_NAMES: &str = "REMORA_CP_DNS_NAMES";
    pub const DRAIN_DEADLINE: &str = "REMORA_CP_DRAIN_DEADLINE";
    pub const LOG_FORMAT: &str = "REMORA_CP_LOG_FORMAT";
    pub const VIEW_FILE: &str = "REMORA_CP_VIEW_FILE";
    pub const DISCOVERY_MAX_SUBSCRIPTIONS: &str = "REMORA_CP_DISCOVERY_MAX_SUBSCRIPTIONS";
    pub const SOURCE_DIR: &str = "REMORA_CP_SOURCE_DIR";
    pub const ROOT_NAMESPACE: &str = "REMORA_CP_ROOT_NAMESPACE";
    pub const KUBERNETES: &str = "REMORA_CP_KUBERNETES";
    pub const POD_NAME: &str = "REMORA_CP_POD_NAME";
    pub const LEASE_NAME: &str = "REMORA_CP_LEASE_NAME";
    pub const LEASE_DURATION: &str = "REMORA_CP_LEASE_DURATION";
    pub const LEASE_RENEW_INTERVAL: &str = "REMORA_CP_LEASE_RENEW_INTERVAL";
    pub const STATUS_WRITES_PER_SECOND: &str = "REMORA_CP_STATUS_WRITES_PER_SECOND";
    pub const ADMIN_API_ADDR: &str = "REMORA_CP_ADMIN_API_ADDR";
    pub const ADMIN_TOKEN_FILE: &str = "REMORA_CP_ADMIN_TOKEN_FILE";
    pub const CA_ROOTS_CONFIG_MAP: &str = "REMORA_CP_CA_ROOTS_CONFIG_MAP";
    pub const CA_ROOTS_WRITES_PER_SECOND: &str = "REMORA_CP_CA_ROOTS_WRITES_PER_SECOND";
}

const DAY: Duration = Duration::from_secs(86_400);

#[derive(Debug, Parser)]
#[command(
    name = "remora-cp",
    version,
    about = "Remora's control plane: the mesh CA and certificate service"
)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, which is what runs when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (the default).
    Serve(Box<ServeArgs>),
    /// Root management for rotation (see docs/identity.md).
    #[command(subcommand)]
    Root(RootCommand),
    /// Print the Remora CRDs as YAML (the chart's crds/remora.dev.yaml).
    Crds,
}

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Generate a new root into a directory (root-cert.pem, root-key.pem);
    /// refuses to overwrite an existing root.
    Generate {
        /// Directory to write into; created 0700 if missing.
        #[arg(long)]
        out_dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// How long the root lives.
        #[arg(long, default_value = "3650d", value_parser = humantime::parse_duration)]
        lifetime: Duration,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The gRPC (TLS) listener: certificate service; discovery later.
    #[arg(long, env = env::GRPC_ADDR, default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// The admin listener: /live, /ready, /metrics (plain HTTP).
    #[arg(long, env = env::ADMIN_ADDR, default_value = "0.0.0.0:15014")]
    pub admin_addr: SocketAddr,
    #[arg(long, env = env::TRUST_DOMAIN, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Where a generated root is persisted (root-cert.pem, root-key.pem).
    #[arg(long, env = env::STATE_DIR, default_value = "/var/lib/remora-cp")]
    pub state_dir: PathBuf,
    /// A supplied signing root (PEM certificate); needs --root-key. When set,
    /// the state directory is not used for the root.
    #[arg(long, env = env::ROOT_CERT, requires = "root_key")]
    pub root_cert: Option<PathBuf>,
    /// The supplied root's private key (PKCS#8 PEM).
    #[arg(long, env = env::ROOT_KEY, requires = "root_cert")]
    pub root_key: Option<PathBuf>,
    /// Another root to serve in the trust bundle (rotation); repeatable.
    #[arg(long = "extra-trust-root", env = env::EXTRA_TRUST_ROOTS, value_delimiter = ',')]
    pub extra_trust_roots: Vec<PathBuf>,
    /// Standalone mode: the file mapping tokens to identities.
    #[arg(long, env = env::TOKEN_FILE)]
    pub token_file: Option<PathBuf>,
    /// How tokens are checked: `kubernetes` (TokenReview) or `token-file`.
    /// Default: token-file when --token-file is given, else kubernetes.
    #[arg(long, env = env::AUTH, value_enum)]
    pub auth: Option<AuthKind>,
    /// The audience a service-account token must be for (TokenReview).
    #[arg(long, env = env::TOKEN_AUDIENCE, default_value = "remora")]
    pub token_audience: String,
    /// Lifetime of a leaf whose request names none.
    #[arg(long, env = env::CERT_LIFETIME, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_lifetime: Duration,
    /// The longest leaf lifetime a request may ask for.
    #[arg(long, env = env::CERT_MAX_LIFETIME, default_value = "48h", value_parser = humantime::parse_duration)]
    pub cert_max_lifetime: Duration,
    /// Lifetime of the intermediate made at each start.
    #[arg(long, env = env::INTERMEDIATE_LIFETIME, default_value = "30d", value_parser = humantime::parse_duration)]
    pub intermediate_lifetime: Duration,
    /// Lifetime of a root generated on first start.
    #[arg(long, env = env::ROOT_LIFETIME, default_value = "3650d", value_parser = humantime::parse_duration)]
    pub root_lifetime: Duration,
    /// The control plane's own namespace (for its serving identity).
    #[arg(long, env = env::NAMESPACE, default_value = "remora-system")]
    pub namespace: String,
    /// The control plane's own service account (for its serving identity).
    #[arg(long, env = env::SERVICE_ACCOUNT, default_value = "remora-cp")]
    pub service_account: String,
    /// DNS names in the serving certificate; default remora-cp,
    /// remora-cp.<ns>, remora-cp.<ns>.svc.
    #[arg(long = "dns-name", env = env::DNS_NAMES, value_delimiter = ',')]
    pub dns_names: Vec<String>,
    /// How long in-flight calls may take to finish after SIGTERM.
    #[arg(long, env = env::DRAIN_DEADLINE, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_deadline: Duration,
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Test and standalone aid, not the product's config source: serve this
    /// hand-written mesh view (docs/control-plane.md), reloaded on SIGHUP.
    #[arg(long, env = env::VIEW_FILE, hide = true)]
    pub view_file: Option<PathBuf>,
    /// Destinations one proxy's discovery stream may subscribe to, 1 to 65536.
    #[arg(long, env = env::DISCOVERY_MAX_SUBSCRIPTIONS, default_value_t = 1024)]
    pub discovery_max_subscriptions: u32,
    /// A directory of Kubernetes objects as YAML to translate into the
    /// mesh (the file source), reloaded on change.
    #[arg(long, env = env::SOURCE_DIR)]
    pub source_dir: Option<PathBuf>,
    /// MeshTLSPolicies here without a selector apply to the whole mesh.
    #[arg(long, env = env::ROOT_NAMESPACE, default_value = "remora-system")]
    pub root_namespace: String,
    /// Watch the Kubernetes API (in-cluster, or the kubeconfig) for the
    /// mesh's objects (the Kubernetes source); with --source-dir too, the
    /// directory's objects win over the cluster's.
    #[arg(long, env = env::KUBERNETES, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub kubernetes: bool,
    /// This replica's name, its identity in the leader Lease; default the
    /// host name (a pod's name).
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,
    /// The leader-election Lease, in --namespace.
    #[arg(long, env = env::LEASE_NAME, default_value = crate::lease::DEFAULT_LEASE_NAME)]
    pub lease_name: String,
    /// How long a leader's Lease stands without renewal, 5s to 5m.
    #[arg(long, env = env::LEASE_DURATION, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews (and others look), 1s to half of
    /// --lease-duration.
    #[arg(long, env = env::LEASE_RENEW_INTERVAL, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_renew_interval: Duration,
    /// Status writes per second at most, 1 to 1000.
    #[arg(long, env = env::STATUS_WRITES_PER_SECOND, default_value_t = 20)]
    pub status_writes_per_second: u32,
    /// The Admin API's listener (plain HTTP; keep it on loopback or behind
    /// a TLS-terminating port-forward). Served only with --admin-token-file.
    #[arg(long, env = env::ADMIN_API_ADDR, default_value = "127.0.0.1:15013")]
    pub admin_api_addr: SocketAddr,
    /// Turns the Admin API on: the file holding its bearer token (trimmed,
    /// 16 characters at least), read once at start. Needs --source-dir,
    /// where the API's objects are written.
    #[arg(long, env = env::ADMIN_TOKEN_FILE)]
    pub admin_token_file: Option<PathBuf>,
    /// With --kubernetes, the leader keeps this ConfigMap (key roots.pem,
    /// the trust bundle) in every namespace: the injector's
    /// --ca-roots-config-map.
    #[arg(long, env = env::CA_ROOTS_CONFIG_MAP, default_value = crate::roots_config_map::DEFAULT_NAME)]
    pub ca_roots_config_map: String,
    /// Trust roots ConfigMap writes per second at most, 1 to 1000.
    #[arg(long, env = env::CA_ROOTS_WRITES_PER_SECOND, default_value_t = 20)]
    pub ca_roots_writes_per_second: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthKind {
    /// A TokenReview with the Kubernetes API server.
    Kubernetes,
    /// Standalone mode: --token-file.
    TokenFile,
}

/// How tokens are checked, as settled at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    TokenFile(PathBuf),
    Kubernetes { audience: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} {value:?} is outside {min:?}..={max:?}")]
    Range {
        flag: &'static str,
        value: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("--cert-lifetime ({0:?}) is longer than --cert-max-lifetime ({1:?})")]
    DefaultOverMax(Duration, Duration),
    #[error("--intermediate-lifetime ({0:?}) must be at least twice --cert-max-lifetime ({1:?}), so a leaf always fits")]
    IntermediateTooShort(Duration, Duration),
    #[error("--root-lifetime ({0:?}) must be longer than --intermediate-lifetime ({1:?})")]
    RootTooShort(Duration, Duration),
    #[error("--dns-name {0:?} is not a DNS name")]
    DnsName(String),
    #[error("--auth token-file needs --token-file")]
    NoTokenFile,
    #[error("--token-file is only read with --auth token-file; drop one of them")]
    TokenFileUnused,
    #[error("--token-audience {0:?} must be 1 to 253 printable characters without spaces")]
    Audience(String),
    #[error("--discovery-max-subscriptions {0} is outside 1..=65536")]
    MaxSubscriptions(u32),
    #[error("--status-writes-per-second {0} is outside 1..=1000")]
    StatusWrites(u32),
    #[error("--ca-roots-writes-per-second {0} is outside 1..=1000")]
    RootsWrites(u32),
    #[error("--ca-roots-config-map {0:?} is not a ConfigMap name (lower-case DNS subdomain)")]
    RootsConfigMap(String),
    #[error(transparent)]
    Lease(#[from] crate::lease::SettingsError),
    #[error("--admin-token-file turns the Admin API on, which writes into --source-dir: give --source-dir too")]
    AdminApiNeedsSourceDir,
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Where the signing root comes from.
#[derive(Debug, Clone)]
pub enum RootSource {
    /// Generated into, then read from, this state directory.
    StateDir(PathBuf),
    /// Supplied by the operator.
    Files { cert: PathBuf, key: PathBuf },
}

/// The frozen startup settings of `serve`.
#[derive(Debug)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub trust_domain: String,
    pub root: RootSource,
    pub extra_trust_roots: Vec<PathBuf>,
    pub auth: AuthMode,
    pub cert_lifetime: Duration,
    pub cert_max_lifetime: Duration,
    pub intermediate_lifetime: Duration,
    pub root_lifetime: Duration,
    /// The identity in the serving certificate.
    pub identity: Identity,
    pub dns_names: Vec<String>,
    pub drain_deadline: Duration,
    pub log_format: LogFormat,
    /// `--view-file` (tests, standalone).
    pub view_file: Option<PathBuf>,
    pub discovery: crate::discovery::Settings,
    pub source_dir: Option<PathBuf>,
    pub root_namespace: String,
    /// `--kubernetes`: leader election and status write-back.
    pub kubernetes: bool,
    pub lease: crate::lease::Settings,
    pub status: crate::status::Settings,
    /// The trust roots ConfigMap the leader keeps in every namespace.
    pub roots_config_map: crate::roots_config_map::Settings,
    /// The Admin API, when `--admin-token-file` is given.
    pub admin_api: Option<AdminApiSettings>,
}

/// The host name, a pod's name in Kubernetes.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Where the Admin API listens and its token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminApiSettings {
    pub addr: SocketAddr,
    pub token_file: PathBuf,
}

fn in_range(
    flag: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Range {
            flag,
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn auth_mode(args: &ServeArgs) -> Result<AuthMode, ConfigError> {
    let kind = args.auth.unwrap_or(if args.token_file.is_some() {
        AuthKind::TokenFile
    } else {
        AuthKind::Kubernetes
    });
    match (kind, &args.token_file) {
        (AuthKind::TokenFile, Some(path)) => Ok(AuthMode::TokenFile(path.clone())),
        (AuthKind::TokenFile, None) => Err(ConfigError::NoTokenFile),
        (AuthKind::Kubernetes, Some(_)) => Err(ConfigError::TokenFileUnused),
        (AuthKind::Kubernetes, None) => {
            let audience = &args.token_audience;
            let printable = audience.chars().all(|c| c.is_ascii_graphic());
            if audience.is_empty() || audience.len() > 253 || !printable {
                return Err(ConfigError::Audience(audience.clone()));
            }
            Ok(AuthMode::Kubernetes {
                audience: audience.clone(),
            })
        }
    }
}

impl Config {
    pub fn from_args(args: ServeArgs) -> Result<Arc<Self>, ConfigError> {
        let auth = auth_mode(&args)?;
        let identity = Identity::new(&args.trust_domain, &args.namespace, &args.service_account)?;
        in_range(
            "cert-lifetime",
            args.cert_lifetime,
            MIN_LEAF_LIFETIME,
            365 * DAY,
        )?;
        in_range(
            "cert-max-lifetime",
            args.cert_max_lifetime,
            MIN_LEAF_LIFETIME,
            365 * DAY,
        )?;
        in_range(
            "intermediate-lifetime",
            args.intermediate_lifetime,
            Duration::from_secs(20),
            10 * 365 * DAY,
        )?;
        in_range(
            "root-lifetime",
            args.root_lifetime,
            Duration::from_secs(3600),
            100 * 365 * DAY,
        )?;
        in_range(
            "drain-deadline",
            args.drain_deadline,
            Duration::ZERO,
            Duration::from_secs(600),
        )?;
        if !(1..=65_536).contains(&args.discovery_max_subscriptions) {
            return Err(ConfigError::MaxSubscriptions(
                args.discovery_max_subscriptions,
            ));
        }
        if args.cert_lifetime > args.cert_max_lifetime {
            return Err(ConfigError::DefaultOverMax(
                args.cert_lifetime,
                args.cert_max_lifetime,
            ));
        }
        if args.intermediate_lifetime < 2 * args.cert_max_lifetime {
            return Err(ConfigError::IntermediateTooShort(
                args.intermediate_lifetime,
                args.cert_max_lifetime,
            ));
        }
        if args.root_lifetime <= args.intermediate_lifetime {
            return Err(ConfigError::RootTooShort(
                args.root_lifetime,
                args.intermediate_lifetime,
            ));
        }
        let dns_names = if args.dns_names.is_empty() {
            let ns = &args.namespace;
            vec![
                "remora-cp".to_owned(),
                format!("remora-cp.{ns}"),
                format!("remora-cp.{ns}.svc"),
            ]
        } else {
            args.dns_names
        };
        for name in &dns_names {
            if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() {
                return Err(ConfigError::DnsName(name.clone()));
            }
        }
        let lease = crate::lease::Settings {
            name: args.lease_name,
            namespace: args.namespace.clone(),
            identity: args.pod_name.unwrap_or_else(host_name),
            lease_duration: args.lease_duration,
            renew_interval: args.lease_renew_interval,
        };
        lease.check()?;
        let (min, max) = crate::status::WRITES_PER_SECOND_RANGE;
        if !(min..=max).contains(&args.status_writes_per_second) {
            return Err(ConfigError::StatusWrites(args.status_writes_per_second));
        }
        if !(min..=max).contains(&args.ca_roots_writes_per_second) {
            return Err(ConfigError::RootsWrites(args.ca_roots_writes_per_second));
        }
        if !crate::admin_api::is_dns_subdomain(&args.ca_roots_config_map) {
            return Err(ConfigError::RootsConfigMap(args.ca_roots_config_map));
        }
        let admin_api = match (args.admin_token_file, &args.source_dir) {
            (Some(token_file), Some(_)) => Some(AdminApiSettings {
                addr: args.admin_api_addr,
                token_file,
            }),
            (Some(_), None) => return Err(ConfigError::AdminApiNeedsSourceDir),
            (None, _) => None,
        };
        let root = match (args.root_cert, args.root_key) {
            (Some(cert), Some(key)) => RootSource::Files { cert, key },
            _ => RootSource::StateDir(args.state_dir),
        };
        Ok(Arc::new(Self {
            grpc_addr: args.grpc_addr,
            admin_addr: args.admin_addr,
            trust_domain: args.trust_domain,
            root,
            extra_trust_roots: args.extra_trust_roots,
            auth,
            cert_lifetime: args.cert_lifetime,
            cert_max_lifetime: args.cert_max_lifetime,
            intermediate_lifetime: args.intermediate_lifetime,
            root_lifetime: args.root_lifetime,
            identity,
            dns_names,
            drain_deadline: args.drain_deadline,
            log_format: args.log_format,
            view_file: args.view_file,
            discovery: crate::discovery::Settings {
                max_subscriptions: args.discovery_max_subscriptions as usize,
                ..crate::discovery::Settings::default()
            },
            source_dir: args.source_dir,
            root_namespace: args.root_namespace,
            kubernetes: args.kubernetes,
            lease,
            status: crate::status::Settings {
                writes_per_second: args.status_writes_per_second,
                ..crate::status::Settings::default()
            },
            roots_config_map: crate::roots_config_map::Settings {
                name: args.ca_roots_config_map,
                writes_per_second: args.ca_roots_writes_per_second,
                ..crate::roots_config_map::Settings::default()
            },
            admin_api,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Arc<Config>, ConfigError> {
        let mut argv = vec!["remora-cp", "--token-file", "/t"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).unwrap();
        Config::from_args(cli.serve)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.grpc_addr.port(), 15012);
        assert_eq!(c.admin_addr.port(), 15014);
        assert_eq!(c.cert_lifetime, DAY);
        assert_eq!(
            c.identity.uri(),
            "spiffe://cluster.local/ns/remora-system/sa/remora-cp"
        );
        assert_eq!(c.dns_names[2], "remora-cp.remora-system.svc");
    }

    #[test]
    fn ranges_name_the_flag() {
        let err = parse(&["--cert-lifetime", "5s"]).unwrap_err();
        assert!(err.to_string().starts_with("--cert-lifetime"), "{err}");
        let err = parse(&["--cert-lifetime", "72h"]).unwrap_err();
        assert!(matches!(err, ConfigError::DefaultOverMax(..)), "{err}");
        let err = parse(&["--intermediate-lifetime", "1d"]).unwrap_err();
        assert!(
            matches!(err, ConfigError::IntermediateTooShort(..)),
            "{err}"
        );
        let err = parse(&["--trust-domain", "Bad"]).unwrap_err();
        assert!(matches!(err, ConfigError::Identity(_)), "{err}");
        let err = parse(&["--dns-name", "bad name"]).unwrap_err();
        assert!(matches!(err, ConfigError::DnsName(_)), "{err}");
    }

    #[test]
    fn auth_follows_the_flags() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.auth, AuthMode::TokenFile(PathBuf::from("/t")));
        let c = parse(&["--auth", "token-file"]).unwrap();
        assert_eq!(c.auth, AuthMode::TokenFile(PathBuf::from("/t")));
        let kube = |extra: &[&str]| {
            let mut argv = vec!["remora-cp"];
            argv.extend_from_slice(extra);
            Config::from_args(Cli::try_parse_from(argv).unwrap().serve)
        };
        let c = kube(&[]).unwrap();
        assert_eq!(
            c.auth,
            AuthMode::Kubernetes {
                audience: "remora".to_owned()
            }
        );
        let c = kube(&["--auth", "kubernetes", "--token-audience", "mesh.example"]).unwrap();
        assert_eq!(
            c.auth,
            AuthMode::Kubernetes {
                audience: "mesh.example".to_owned()
            }
        );
        let err = kube(&["--auth", "token-file"]).unwrap_err();
        assert_eq!(err.to_string(), "--auth token-file needs --token-file");
        let err = parse(&["--auth", "kubernetes"]).unwrap_err();
        assert!(matches!(err, ConfigError::TokenFileUnused), "{err}");
        for bad in ["", "two words", &"a".repeat(254)] {
            let err = kube(&["--token-audience", bad]).unwrap_err();
            assert!(matches!(err, ConfigError::Audience(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn kubernetes_flags_have_defaults_and_ranges() {
        let c = parse(&["--pod-name", "remora-cp-7d9f-x2"]).unwrap();
        assert!(!c.kubernetes);
        assert_eq!(
            c.lease,
            crate::lease::Settings {
                name: "remora-cp".into(),
                namespace: "remora-system".into(),
                identity: "remora-cp-7d9f-x2".into(),
                lease_duration: Duration::from_secs(15),
                renew_interval: Duration::from_secs(5),
            }
        );
        assert_eq!(c.status.writes_per_second, 20);
        let c = parse(&[
            "--kubernetes",
            "--namespace",
            "mesh",
            "--lease-duration",
            "1m",
        ])
        .unwrap();
        assert!(c.kubernetes);
        assert_eq!(c.lease.namespace, "mesh");
        assert_eq!(c.lease.lease_duration, Duration::from_secs(60));
        assert!(!c.lease.identity.is_empty(), "the host name by default");
        let err = parse(&["--lease-renew-interval", "10s"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--lease-renew-interval 10s must be 1s to half of --lease-duration (15s)"
        );
        let err = parse(&["--lease-duration", "10m"]).unwrap_err();
        assert_eq!(err.to_string(), "--lease-duration 600s is outside 5s..=5m");
        let err = parse(&["--status-writes-per-second", "0"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--status-writes-per-second 0 is outside 1..=1000"
        );
        assert_eq!(c.roots_config_map.name, "remora-ca-roots");
        assert_eq!(c.roots_config_map.writes_per_second, 20);
        let c = parse(&[
            "--ca-roots-config-map",
            "mesh-roots",
            "--ca-roots-writes-per-second",
            "5",
        ])
        .unwrap();
        assert_eq!(
            (
                c.roots_config_map.name.as_str(),
                c.roots_config_map.writes_per_second
            ),
            ("mesh-roots", 5)
        );
        for bad in ["Roots", "", "a..b", "-roots", &"a".repeat(254)] {
            let err = parse(&[&format!("--ca-roots-config-map={bad}")]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("--ca-roots-config-map {bad:?} is not a ConfigMap name (lower-case DNS subdomain)")
            );
        }
        let err = parse(&["--ca-roots-writes-per-second", "1001"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--ca-roots-writes-per-second 1001 is outside 1..=1000"
        );
        let err = parse(&["--pod-name", "has space"]).unwrap_err();
        assert!(
            err.to_string().starts_with("--pod-name \"has space\""),
            "{err}"
        );
    }

    #[test]
    fn kubernetes_is_off_unless_asked_for() {
        assert!(!parse(&[]).unwrap().kubernetes);
        assert!(parse(&["--kubernetes"]).unwrap().kubernetes);
        assert!(parse(&["--kubernetes", "true"]).unwrap().kubernetes);
        assert!(!parse(&["--kubernetes", "false"]).unwrap().kubernetes);
        let c = parse(&["--kubernetes", "--source-dir", "/objects"]).unwrap();
        assert_eq!(
            (c.kubernetes, c.source_dir.as_deref()),
            (true, Some(std::path::Path::new("/objects")))
        );
        let err = Cli::try_parse_from(["remora-cp", "--token-file", "/t", "--kubernetes", "yes"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn the_admin_api_is_on_with_a_token_file_and_needs_the_source_dir() {
        assert_eq!(parse(&[]).unwrap().admin_api, None);
        let c = parse(&["--admin-token-file", "/tok", "--source-dir", "/src"]).unwrap();
        assert_eq!(
            c.admin_api,
            Some(AdminApiSettings {
                addr: "127.0.0.1:15013".parse().unwrap(),
                token_file: PathBuf::from("/tok"),
            })
        );
        let err = parse(&["--admin-token-file", "/tok"]).unwrap_err();
        assert!(matches!(err, ConfigError::AdminApiNeedsSourceDir), "{err}");
    }

    #[test]
    fn serve_subcommand_takes_the_same_flags() {
        let cli = Cli::try_parse_from([
            "remora-cp",
            "serve",
            "--token-file",
            "/t",
            "--cert-lifetime",
            "1h",
        ])
        .unwrap();
        let Some(Command::Serve(args)) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.cert_lifetime, Duration::from_secs(3600));
    }
}
