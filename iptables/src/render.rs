//! Renders the capture rules as an `iptables-restore` payload for the nat
//! table: a pure function of a `CaptureSpec` and an address family.
//!
//! This module owns the rule set and the reason for each rule. It does not
//! know what else is in the table (`merge`) or how rules are loaded (`apply`).
//!
//! Rules are written in the canonical form that `iptables-save` prints back
//! (e.g. `-p tcp -m tcp --dport`, `/32` on host addresses), so the rules read
//! back from the kernel are byte-for-byte the rendered ones.

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::config::{CaptureSpec, InboundPorts};

/// Prefix of every chain Remora owns. Anything mentioning a chain with this
/// prefix is Remora's and is replaced or removed as a whole.
pub const CHAIN_PREFIX: &str = "REMORA_";

/// Entry for inbound TCP (jumped to from PREROUTING, and from REMORA_OUTPUT
/// for connections to the pod's own address over loopback).
pub const CHAIN_INBOUND: &str = "REMORA_INBOUND";
/// Redirects to the proxy's inbound listener.
pub const CHAIN_IN_REDIRECT: &str = "REMORA_IN_REDIRECT";
/// Entry for outbound TCP (jumped to from OUTPUT).
pub const CHAIN_OUTPUT: &str = "REMORA_OUTPUT";
/// Redirects to the proxy's outbound listener.
pub const CHAIN_REDIRECT: &str = "REMORA_REDIRECT";

/// Remora's chains, in declaration order.
pub const CHAINS: [&str; 4] = [
    CHAIN_INBOUND,
    CHAIN_IN_REDIRECT,
    CHAIN_OUTPUT,
    CHAIN_REDIRECT,
];

/// An IP address family; each has its own iptables binaries and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The loopback address that the app's own local traffic uses.
    fn localhost(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.1/32",
            Self::V6 => "::1/128",
        }
    }

    /// The source address the proxy binds when it forwards inbound traffic to
    /// the app (`127.0.0.6` / `::6`).
    fn inbound_forward_source(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.6/32",
            Self::V6 => "::6/128",
        }
    }

    fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Self::V4, IpNet::V4(_)) | (Self::V6, IpNet::V6(_))
        )
    }

    /// Human name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    /// Prefix of this family's iptables binaries.
    pub fn program_prefix(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }
}

/// Renders the nat-table payload for one family.
pub fn render(spec: &CaptureSpec, family: Family) -> String {
    let mut out = Payload::default();
    let uid = spec.proxy_uid;
    let gid = spec.proxy_gid;
    let localhost = family.localhost();

    out.line("*nat");
    for chain in CHAINS {
        out.line(&format!(":{chain} - [0:0]"));
    }

    out.comment("Only TCP enters Remora's chains.");
    out.rule(&format!("-A PREROUTING -p tcp -j {CHAIN_INBOUND}"));
    out.rule(&format!("-A OUTPUT -p tcp -j {CHAIN_OUTPUT}"));

    out.comment("Inbound: from PREROUTING, and loopback to the pod's own address.");
    if !spec.exclude_interfaces.is_empty() {
        out.comment("Excluded interfaces are left alone.");
    }
    for iface in &spec.exclude_interfaces {
        out.rule(&format!("-A {CHAIN_INBOUND} -i {iface} -j RETURN"));
    }
    out.comment("The admin port is never captured: kubelet probes and scrapes reach it.");
    out.rule(&format!(
        "-A {CHAIN_INBOUND} -p tcp -m tcp --dport {} -j RETURN",
        spec.proxy_admin_port
    ));
    if !spec.exclude_inbound_ports.is_empty() {
        out.comment("Excluded inbound ports go straight to the app.");
    }
    for port in &spec.exclude_inbound_ports {
        out.rule(&format!(
            "-A {CHAIN_INBOUND} -p tcp -m tcp --dport {port} -j RETURN"
        ));
    }
    match &spec.include_inbound_ports {
        InboundPorts::All => {
            out.comment("Every other inbound port goes to the proxy.");
            out.rule(&format!("-A {CHAIN_INBOUND} -p tcp -j {CHAIN_IN_REDIRECT}"));
        }
        InboundPorts::Only(ports) if ports.is_empty() => {
            out.comment("Inbound capture is off: no port is included.");
        }
        InboundPorts::Only(ports) => {
            out.comment("Only the included inbound ports go to the proxy.");
            for port in ports {
                out.rule(&format!(
                    "-A {CHAIN_INBOUND} -p tcp -m tcp --dport {port} -j {CHAIN_IN_REDIRECT}"
                ));
            }
        }
    }
    out.comment("The proxy's listeners: inbound, then outbound.");
    out.rule(&format!(
        "-A {CHAIN_IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        spec.inbound_capture_port
    ));
    out.rule(&format!(
        "-A {CHAIN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        spec.outbound_capture_port
    ));

    out.comment("Outbound: from OUTPUT.");
    if !spec.exclude_interfaces.is_empty() {
        out.comment("Excluded interfaces are left alone.");
    }
    for iface in &spec.exclude_interfaces {
        out.rule(&format!("-A {CHAIN_OUTPUT} -o {iface} -j RETURN"));
    }
    out.comment("The proxy's forward to the app (from 127.0.0.6 / ::6) is final: no loop.");
    out.rule(&format!(
        "-A {CHAIN_OUTPUT} -s {} -o lo -j RETURN",
        family.inbound_forward_source()
    ));
    // Loopback traffic never reaches PREROUTING's nat hook (its conntrack
    // entry was set up in OUTPUT), so a connection to the pod's own address
    // gets its inbound capture here: from the proxy (a service that resolves
    // to this very pod) and from the app alike. It cannot loop: the proxy's
    // forward to the app was returned by the rule above.
    out.comment("Own pod address over loopback skips PREROUTING: capture it as inbound here.");
    out.rule(&format!(
        "-A {CHAIN_OUTPUT} ! -d {localhost} -o lo -m owner --uid-owner {uid} -j {CHAIN_INBOUND}"
    ));
    out.rule(&format!(
        "-A {CHAIN_OUTPUT} ! -d {localhost} -o lo -m owner --gid-owner {gid} -j {CHAIN_INBOUND}"
    ));
    out.rule(&format!(
        "-A {CHAIN_OUTPUT} ! -d {localhost} -o lo -j {CHAIN_INBOUND}"
    ));
    out.comment("The proxy's own outbound traffic is never redirected.");
    out.rule(&format!(
        "-A {CHAIN_OUTPUT} -m owner --uid-owner {uid} -j RETURN"
    ));
    out.rule(&format!(
        "-A {CHAIN_OUTPUT} -m owner --gid-owner {gid} -j RETURN"
    ));
    out.comment("Localhost and other loopback traffic stays local.");
    out.rule(&format!("-A {CHAIN_OUTPUT} -d {localhost} -j RETURN"));
    out.rule(&format!("-A {CHAIN_OUTPUT} -o lo -j RETURN"));
    let cidrs: Vec<&IpNet> = spec
        .exclude_outbound_cidrs
        .iter()
        .filter(|net| family.contains(net))
        .collect();
    if !cidrs.is_empty() || !spec.exclude_outbound_ports.is_empty() {
        out.comment("Excluded destinations and ports bypass the proxy.");
    }
    for net in cidrs {
        out.rule(&format!("-A {CHAIN_OUTPUT} -d {net} -j RETURN"));
    }
    for port in &spec.exclude_outbound_ports {
        out.rule(&format!(
            "-A {CHAIN_OUTPUT} -p tcp -m tcp --dport {port} -j RETURN"
        ));
    }
    out.comment("Everything else goes to the proxy.");
    out.rule(&format!("-A {CHAIN_OUTPUT} -j {CHAIN_REDIRECT}"));
    out.line("COMMIT");
    out.0
}

/// Accumulates payload text; comments are restore-format comments, which
/// `iptables-restore` ignores, so a dry-run payload can be piped straight in.
#[derive(Default)]
struct Payload(String);

impl Payload {
    fn line(&mut self, line: &str) {
        self.0.push_str(line);
        self.0.push('\n');
    }

    fn comment(&mut self, text: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# {text}");
    }

    fn rule(&mut self, rule: &str) {
        self.line(rule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(payload: &str) -> Vec<&str> {
        payload.lines().filter(|l| l.starts_with("-A ")).collect()
    }

    #[test]
    fn every_rule_is_recognisably_remoras() {
        let spec = CaptureSpec {
            exclude_interfaces: vec!["eth1".into()],
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![3306],
            exclude_outbound_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            include_inbound_ports: InboundPorts::Only(vec![80]),
            ..CaptureSpec::default()
        };
        for family in [Family::V4, Family::V6] {
            let payload = render(&spec, family);
            for rule in rules(&payload) {
                assert!(rule.contains(CHAIN_PREFIX), "{rule}");
            }
            assert!(payload.starts_with("*nat\n"));
            assert!(payload.ends_with("COMMIT\n"));
        }
    }

    #[test]
    fn defaults_redirect_to_the_contract_ports() {
        let payload = render(&CaptureSpec::default(), Family::V4);
        let rules = rules(&payload);
        assert!(rules.contains(&"-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"));
        assert!(rules.contains(&"-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
        assert!(rules.contains(&"-A REMORA_INBOUND -p tcp -m tcp --dport 15020 -j RETURN"));
        assert!(rules.contains(&"-A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert_eq!(rules.last(), Some(&"-A REMORA_OUTPUT -j REMORA_REDIRECT"));
    }

    #[test]
    fn the_inbound_forward_is_returned_before_any_jump_to_inbound() {
        // The no-loop argument: the proxy's forward to the app (source
        // 127.0.0.6) must be returned before the uid rule that sends the
        // proxy's own-pod-IP traffic through inbound capture.
        for family in [Family::V4, Family::V6] {
            let payload = render(&CaptureSpec::default(), family);
            let rules = rules(&payload);
            let forward = rules
                .iter()
                .position(|r| r.contains(family.inbound_forward_source()))
                .unwrap();
            let first_jump = rules
                .iter()
                .position(|r| r.starts_with("-A REMORA_OUTPUT") && r.ends_with("-j REMORA_INBOUND"))
                .unwrap();
            assert!(forward < first_jump);
        }
    }

    #[test]
    fn inbound_port_selection() {
        let none = CaptureSpec {
            include_inbound_ports: InboundPorts::Only(vec![]),
            ..CaptureSpec::default()
        };
        let payload = render(&none, Family::V4);
        assert!(!payload.contains("-j REMORA_IN_REDIRECT"));
        // The redirect chain itself still exists, so the chain set is stable.
        assert!(payload.contains(":REMORA_IN_REDIRECT - [0:0]"));

        let some = CaptureSpec {
            include_inbound_ports: InboundPorts::Only(vec![80, 8080]),
            ..CaptureSpec::default()
        };
        let payload = render(&some, Family::V4);
        assert!(
            payload.contains("-A REMORA_INBOUND -p tcp -m tcp --dport 80 -j REMORA_IN_REDIRECT\n")
        );
        assert!(payload
            .contains("-A REMORA_INBOUND -p tcp -m tcp --dport 8080 -j REMORA_IN_REDIRECT\n"));
        assert!(!payload.contains("-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT"));
    }

    #[test]
    fn cidrs_only_go_to_their_family() {
        let spec = CaptureSpec {
            exclude_outbound_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            ..CaptureSpec::default()
        };
        let v4 = render(&spec, Family::V4);
        let v6 = render(&spec, Family::V6);
        assert!(v4.contains("-d 10.0.0.0/8 -j RETURN") && !v4.contains("fd00::/8"));
        assert!(v6.contains("-d fd00::/8 -j RETURN") && !v6.contains("10.0.0.0/8"));
        assert!(v6.contains("-s ::6/128 -o lo -j RETURN") && v6.contains("! -d ::1/128"));
        assert!(!rules(&v6).iter().any(|r| r.contains("127.0.0.")));
    }
}
