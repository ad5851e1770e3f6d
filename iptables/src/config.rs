//! Command-line flags and the validated, immutable `Config` they become.
//!
//! This module owns parsing and validation only: every flag is checked here,
//! once, before anything touches the host. It does not render rules
//! (`render`) and does not run commands (`host`, `apply`).
//!
//! Each flag can also be set through an environment variable; the names are
//! the `ENV_*` constants below, in one place, so the injector and the docs can
//! refer to them.

use std::collections::BTreeSet;
use std::fmt;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

pub const ENV_PROXY_UID: &str = "REMORA_PROXY_UID";
pub const ENV_PROXY_GID: &str = "REMORA_PROXY_GID";
pub const ENV_INBOUND_CAPTURE_PORT: &str = "REMORA_INBOUND_CAPTURE_PORT";
pub const ENV_OUTBOUND_CAPTURE_PORT: &str = "REMORA_OUTBOUND_CAPTURE_PORT";
pub const ENV_PROXY_ADMIN_PORT: &str = "REMORA_PROXY_ADMIN_PORT";
pub const ENV_INCLUDE_INBOUND_PORTS: &str = "REMORA_INCLUDE_INBOUND_PORTS";
pub const ENV_EXCLUDE_INBOUND_PORTS: &str = "REMORA_EXCLUDE_INBOUND_PORTS";
pub const ENV_EXCLUDE_OUTBOUND_PORTS: &str = "REMORA_EXCLUDE_OUTBOUND_PORTS";
pub const ENV_EXCLUDE_OUTBOUND_CIDRS: &str = "REMORA_EXCLUDE_OUTBOUND_CIDRS";
pub const ENV_EXCLUDE_INTERFACES: &str = "REMORA_EXCLUDE_INTERFACES";
pub const ENV_IPV6: &str = "REMORA_IPV6";
pub const ENV_BACKEND: &str = "REMORA_BACKEND";
pub const ENV_DRY_RUN: &str = "REMORA_DRY_RUN";
pub const ENV_CLEANUP: &str = "REMORA_CLEANUP";

/// The mesh-wide defaults (DESIGN.md, "Contracts that every part shares").
pub const DEFAULT_PROXY_UID: u32 = 1337;
pub const DEFAULT_PROXY_GID: u32 = 1337;
pub const DEFAULT_INBOUND_CAPTURE_PORT: u16 = 15006;
pub const DEFAULT_OUTBOUND_CAPTURE_PORT: u16 = 15001;
pub const DEFAULT_PROXY_ADMIN_PORT: u16 = 15020;

/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const MAX_INTERFACE_NAME: usize = 15;

/// `remora-init`: installs (or removes) the iptables rules that send a pod's
/// TCP traffic through the Remora proxy.
#[derive(Debug, Clone, Parser)]
#[command(name = "remora-init", version)]
pub struct Args {
    /// User id the proxy runs as; its traffic is never redirected.
    #[arg(long, env = ENV_PROXY_UID, default_value_t = DEFAULT_PROXY_UID, value_name = "UID")]
    pub proxy_uid: u32,

    /// Group id the proxy runs as; its traffic is never redirected.
    #[arg(long, env = ENV_PROXY_GID, default_value_t = DEFAULT_PROXY_GID, value_name = "GID")]
    pub proxy_gid: u32,

    /// Port of the proxy's inbound listener; captured inbound TCP goes here.
    #[arg(long, env = ENV_INBOUND_CAPTURE_PORT, default_value_t = DEFAULT_INBOUND_CAPTURE_PORT,
          value_parser = parse_port, value_name = "PORT")]
    pub inbound_capture_port: u16,

    /// Port of the proxy's outbound listener; captured outbound TCP goes here.
    #[arg(long, env = ENV_OUTBOUND_CAPTURE_PORT, default_value_t = DEFAULT_OUTBOUND_CAPTURE_PORT,
          value_parser = parse_port, value_name = "PORT")]
    pub outbound_capture_port: u16,

    /// Port of the proxy's admin server; inbound traffic to it is never captured
    /// so kubelet probes and metric scrapes always reach it.
    #[arg(long, env = ENV_PROXY_ADMIN_PORT, default_value_t = DEFAULT_PROXY_ADMIN_PORT,
          value_parser = parse_port, value_name = "PORT")]
    pub proxy_admin_port: u16,

    /// Inbound ports to capture: `*` for all, a comma-separated list, or an
    /// empty string for none.
    #[arg(long, env = ENV_INCLUDE_INBOUND_PORTS, default_value = "*",
          value_parser = parse_inbound_ports, value_name = "PORTS")]
    pub include_inbound_ports: InboundPorts,

    /// Comma-separated inbound ports that are never captured.
    #[arg(long, env = ENV_EXCLUDE_INBOUND_PORTS, default_value = "",
          value_parser = parse_port_list, value_name = "PORTS")]
    pub exclude_inbound_ports: PortList,

    /// Comma-separated outbound destination ports that are never captured.
    #[arg(long, env = ENV_EXCLUDE_OUTBOUND_PORTS, default_value = "",
          value_parser = parse_port_list, value_name = "PORTS")]
    pub exclude_outbound_ports: PortList,

    /// Comma-separated outbound destination CIDRs (IPv4 and IPv6; a bare
    /// address means a single host) that are never captured.
    #[arg(long, env = ENV_EXCLUDE_OUTBOUND_CIDRS, default_value = "",
          value_parser = parse_cidr_list, value_name = "CIDRS")]
    pub exclude_outbound_cidrs: CidrList,

    /// Comma-separated interfaces whose traffic is never captured, in either
    /// direction (a trailing `+` is a wildcard, as in iptables).
    #[arg(long, env = ENV_EXCLUDE_INTERFACES, default_value = "",
          value_parser = parse_interface_list, value_name = "IFACES")]
    pub exclude_interfaces: InterfaceList,

    /// Also capture IPv6: `auto` enables it when this namespace can carry IPv6
    /// (see docs/iptables.md), `true` requires it, `false` leaves IPv6 alone.
    #[arg(long, env = ENV_IPV6, value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,

    /// Which iptables backend to use: `auto` picks legacy when legacy rules
    /// already exist in this namespace, nft otherwise.
    #[arg(long, env = ENV_BACKEND, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Print the rules that would be installed and change nothing.
    #[arg(long, env = ENV_DRY_RUN, conflicts_with = "cleanup")]
    pub dry_run: bool,

    /// Remove every Remora chain and jump, leaving all other rules alone.
    #[arg(long, env = ENV_CLEANUP)]
    pub cleanup: bool,
}

/// Whether to capture IPv6 as well as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Mode {
    Auto,
    True,
    False,
}

/// Which iptables implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    Auto,
    Nft,
    Legacy,
}

/// Which inbound destination ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every port (`*`), except the admin port and the excluded ones.
    All,
    /// Only these ports (sorted, deduplicated); empty means no inbound capture.
    Only(Vec<u16>),
}

/// A sorted, deduplicated list of ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

/// A deduplicated list of CIDRs, host bits cleared, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

/// A deduplicated list of interface names, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceList(pub Vec<String>);

/// What `remora-init` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Install the rules (replacing any earlier Remora rules).
    Apply,
    /// Print the rules; touch nothing.
    DryRun,
    /// Remove the rules.
    Cleanup,
}

/// Everything that decides the rule set itself; `render` is a pure function
/// of this and an address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub inbound_capture_port: u16,
    pub outbound_capture_port: u16,
    pub proxy_admin_port: u16,
    pub include_inbound_ports: InboundPorts,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<IpNet>,
    pub exclude_interfaces: Vec<String>,
}

impl Default for CaptureSpec {
    fn default() -> Self {
        Self {
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: DEFAULT_PROXY_GID,
            inbound_capture_port: DEFAULT_INBOUND_CAPTURE_PORT,
            outbound_capture_port: DEFAULT_OUTBOUND_CAPTURE_PORT,
            proxy_admin_port: DEFAULT_PROXY_ADMIN_PORT,
            include_inbound_ports: InboundPorts::All,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            exclude_interfaces: Vec::new(),
        }
    }
}

/// The validated startup configuration of `remora-init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub capture: CaptureSpec,
    pub ipv6: Ipv6Mode,
    pub backend: BackendChoice,
    pub action: Action,
}

/// A combination of flags that are each valid but cannot work together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "--{first} and --{second} are both {port}; the proxy needs a distinct port for each, \
         so change one of them"
    )]
    PortClash {
        first: &'static str,
        second: &'static str,
        port: u16,
    },
}

impl Config {
    /// Turns parsed flags into a `Config`, checking the rules that involve
    /// more than one flag. Single-flag checks already ran in the clap value
    /// parsers, so that their errors name the flag too.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let ports = [
            ("inbound-capture-port", args.inbound_capture_port),
            ("outbound-capture-port", args.outbound_capture_port),
            ("proxy-admin-port", args.proxy_admin_port),
        ];
        for (i, (first, a)) in ports.iter().enumerate() {
            for (second, b) in &ports[i + 1..] {
                if a == b {
                    return Err(ConfigError::PortClash {
                        first,
                        second,
                        port: *a,
                    });
                }
            }
        }

        let action = match (args.dry_run, args.cleanup) {
            (true, _) => Action::DryRun,
            (false, true) => Action::Cleanup,
            (false, false) => Action::Apply,
        };
        Ok(Self {
            capture: CaptureSpec {
                proxy_uid: args.proxy_uid,
                proxy_gid: args.proxy_gid,
                inbound_capture_port: args.inbound_capture_port,
                outbound_capture_port: args.outbound_capture_port,
                proxy_admin_port: args.proxy_admin_port,
                include_inbound_ports: args.include_inbound_ports,
                exclude_inbound_ports: args.exclude_inbound_ports.0,
                exclude_outbound_ports: args.exclude_outbound_ports.0,
                exclude_outbound_cidrs: args.exclude_outbound_cidrs.0,
                exclude_interfaces: args.exclude_interfaces.0,
            },
            ipv6: args.ipv6,
            backend: args.backend,
            action,
        })
    }
}

/// Why a single flag value was rejected. clap wraps it in a message that
/// names the flag and the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("`{0}` is not a port number; use 1-65535")]
    NotAPort(String),
    #[error("port {0} is out of range; use 1-65535")]
    PortOutOfRange(u64),
    #[error("`*` means every port and cannot be combined with a list")]
    StarInList,
    #[error(
        "`{value}` is not a CIDR or an IP address ({reason}); use e.g. 10.0.0.0/8 or fd00::/8"
    )]
    NotACidr { value: String, reason: String },
    #[error(
        "`{0}` is not a valid interface name; use at most 15 characters from \
         A-Z a-z 0-9 . _ - @, optionally ending in the `+` wildcard"
    )]
    BadInterface(String),
}

/// Splits a comma-separated flag value, ignoring whitespace and empty items,
/// so that `""`, `"80, 443"` and `"80,443,"` all read naturally.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Parses one TCP port: 1-65535.
pub fn parse_port(value: &str) -> Result<u16, ValueError> {
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| ValueError::NotAPort(value.to_owned()))?;
    match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(ValueError::PortOutOfRange(n)),
    }
}

/// Parses a comma-separated port list; empty means no ports.
pub fn parse_port_list(value: &str) -> Result<PortList, ValueError> {
    let set = items(value)
        .map(parse_port)
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(PortList(set.into_iter().collect()))
}

/// Parses `--include-inbound-ports`: `*`, a port list, or empty for none.
pub fn parse_inbound_ports(value: &str) -> Result<InboundPorts, ValueError> {
    if value.trim() == "*" {
        return Ok(InboundPorts::All);
    }
    if items(value).any(|item| item == "*") {
        return Err(ValueError::StarInList);
    }
    Ok(InboundPorts::Only(parse_port_list(value)?.0))
}

/// Parses a comma-separated list of CIDRs or bare addresses. Host bits are
/// cleared (`10.1.2.3/8` becomes `10.0.0.0/8`), which is what the kernel
/// stores anyway; rendering the same form keeps `iptables-save` output equal
/// to what was rendered.
pub fn parse_cidr_list(value: &str) -> Result<CidrList, ValueError> {
    let mut out: Vec<IpNet> = Vec::new();
    for item in items(value) {
        let net = match item.parse::<IpNet>() {
            Ok(net) => net.trunc(),
            Err(cidr_err) => match item.parse::<std::net::IpAddr>() {
                Ok(addr) => IpNet::from(addr),
                Err(_) => {
                    return Err(ValueError::NotACidr {
                        value: item.to_owned(),
                        reason: cidr_err.to_string(),
                    })
                }
            },
        };
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(CidrList(out))
}

/// Parses a comma-separated list of interface names. The allowed characters
/// are deliberately narrower than what Linux accepts: the names end up in an
/// `iptables-restore` payload, where whitespace, `!` or `#` would change the
/// meaning of the line.
pub fn parse_interface_list(value: &str) -> Result<InterfaceList, ValueError> {
    let mut out: Vec<String> = Vec::new();
    for item in items(value) {
        if !valid_interface(item) {
            return Err(ValueError::BadInterface(item.to_owned()));
        }
        if !out.iter().any(|existing| existing == item) {
            out.push(item.to_owned());
        }
    }
    Ok(InterfaceList(out))
}

fn valid_interface(name: &str) -> bool {
    let stem = name.strip_suffix('+').unwrap_or(name);
    !stem.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && !stem.starts_with('-')
        && stem != "."
        && stem != ".."
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

impl fmt::Display for Ipv6Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::True => "true",
            Self::False => "false",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let args = Args::try_parse_from(std::iter::once("remora-init").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_mesh_contract() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.capture, CaptureSpec::default());
        assert_eq!(config.capture.proxy_uid, 1337);
        assert_eq!(config.capture.proxy_gid, 1337);
        assert_eq!(config.capture.outbound_capture_port, 15001);
        assert_eq!(config.capture.inbound_capture_port, 15006);
        assert_eq!(config.capture.proxy_admin_port, 15020);
        assert_eq!(config.ipv6, Ipv6Mode::Auto);
        assert_eq!(config.backend, BackendChoice::Auto);
        assert_eq!(config.action, Action::Apply);
    }

    #[test]
    fn every_flag_is_read() {
        let config = parse(&[
            "--proxy-uid=7",
            "--proxy-gid=8",
            "--inbound-capture-port=1006",
            "--outbound-capture-port=1001",
            "--proxy-admin-port=1020",
            "--include-inbound-ports=8080, 80,80",
            "--exclude-inbound-ports=22",
            "--exclude-outbound-ports=5432,3306",
            "--exclude-outbound-cidrs=10.1.2.3/8,fd00::1/8,192.168.0.1",
            "--exclude-interfaces=eth1,veth+",
            "--ipv6=false",
            "--backend=legacy",
            "--cleanup",
        ])
        .unwrap();
        let c = &config.capture;
        assert_eq!((c.proxy_uid, c.proxy_gid), (7, 8));
        assert_eq!(
            (
                c.inbound_capture_port,
                c.outbound_capture_port,
                c.proxy_admin_port
            ),
            (1006, 1001, 1020)
        );
        assert_eq!(c.include_inbound_ports, InboundPorts::Only(vec![80, 8080]));
        assert_eq!(c.exclude_inbound_ports, vec![22]);
        assert_eq!(c.exclude_outbound_ports, vec![3306, 5432]);
        let cidrs: Vec<String> = c
            .exclude_outbound_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "fd00::/8", "192.168.0.1/32"]);
        assert_eq!(c.exclude_interfaces, ["eth1", "veth+"]);
        assert_eq!(config.ipv6, Ipv6Mode::False);
        assert_eq!(config.backend, BackendChoice::Legacy);
        assert_eq!(config.action, Action::Cleanup);
    }

    #[test]
    fn include_inbound_ports_star_list_and_empty() {
        let all = parse(&["--include-inbound-ports", "*"]).unwrap();
        assert_eq!(all.capture.include_inbound_ports, InboundPorts::All);
        let none = parse(&["--include-inbound-ports", ""]).unwrap();
        assert_eq!(
            none.capture.include_inbound_ports,
            InboundPorts::Only(vec![])
        );
        let err = parse(&["--include-inbound-ports", "80,*"]).unwrap_err();
        assert!(err.contains("--include-inbound-ports"), "{err}");
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[&[&str]] = &[
            &["--proxy-admin-port", "70000"],
            &["--inbound-capture-port", "0"],
            &["--outbound-capture-port", "http"],
            &["--exclude-inbound-ports", "22,70000"],
            &["--exclude-outbound-ports=-1"],
            &["--exclude-outbound-cidrs", "10.0.0.0/33"],
            &["--exclude-outbound-cidrs", "not-an-ip"],
            &["--exclude-interfaces", "eth0 -j ACCEPT"],
            &["--exclude-interfaces", "averyveryverylongname"],
            &["--backend", "iptables"],
            &["--ipv6", "maybe"],
            &["--proxy-uid=-5"],
        ];
        for args in cases {
            let err = parse(args).unwrap_err();
            let flag = args[0].split('=').next().unwrap();
            assert!(
                err.contains(flag),
                "error for {args:?} must name the flag: {err}"
            );
        }
    }

    #[test]
    fn clashing_ports_are_rejected() {
        let err = parse(&["--proxy-admin-port", "15006"]).unwrap_err();
        assert!(err.contains("--inbound-capture-port"), "{err}");
        assert!(err.contains("--proxy-admin-port"), "{err}");
    }

    #[test]
    fn dry_run_and_cleanup_conflict() {
        assert!(parse(&["--dry-run", "--cleanup"]).is_err());
        assert_eq!(parse(&["--dry-run"]).unwrap().action, Action::DryRun);
    }

    #[test]
    fn port_parser_edges() {
        assert_eq!(parse_port("1"), Ok(1));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_port("0"), Err(ValueError::PortOutOfRange(0)));
        assert_eq!(parse_port("65536"), Err(ValueError::PortOutOfRange(65536)));
        assert!(matches!(parse_port(""), Err(ValueError::NotAPort(_))));
        assert_eq!(parse_port_list(" , ,"), Ok(PortList(vec![])));
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "veth+", "br-1a2b.100", "wg_0", "eth0@if5"] {
            assert!(valid_interface(ok), "{ok}");
        }
        for bad in [
            "",
            "+",
            "-i",
            "eth 0",
            "eth0!",
            "#x",
            "a/b",
            "..",
            "x+y",
            "sixteen-chars-xx",
        ] {
            assert!(!valid_interface(bad), "{bad}");
        }
    }
}
