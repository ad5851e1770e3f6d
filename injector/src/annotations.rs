//! The `remora.dev/*` pod annotations: their names, and how their values are
//! parsed and checked into [`Overrides`].
//!
//! This module owns per-pod input only. Every value is checked here, once,
//! and a bad one is an [`AnnotationError`] that names the annotation, so the
//! webhook can deny the pod with a reason the user can act on. List values
//! go through remora-init's own parsers, so the injector accepts exactly
//! what `remora-init` will.

use std::collections::BTreeMap;
use std::time::Duration;

use remora_iptables::config::{parse_cidr_list, parse_port_list};

use crate::quantity::Quantity;

pub const INJECT: &str = "remora.dev/inject";
pub const STATUS: &str = "remora.dev/status";
pub const EXCLUDE_INBOUND_PORTS: &str = "remora.dev/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "remora.dev/exclude-outbound-ports";
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "remora.dev/exclude-outbound-cidrs";
pub const OPAQUE_PORTS: &str = "remora.dev/opaque-ports";
pub const PROXY_CPU: &str = "remora.dev/proxy-cpu";
pub const PROXY_CPU_LIMIT: &str = "remora.dev/proxy-cpu-limit";
pub const PROXY_MEMORY: &str = "remora.dev/proxy-memory";
pub const PROXY_MEMORY_LIMIT: &str = "remora.dev/proxy-memory-limit";
pub const PROXY_LOG_LEVEL: &str = "remora.dev/proxy-log-level";
pub const PROXY_DRAIN_DEADLINE: &str = "remora.dev/proxy-drain-deadline";
pub const REWRITE_PROBES: &str = "remora.dev/rewrite-probes";
pub const NATIVE_SIDECAR: &str = "remora.dev/native-sidecar";

/// Every annotation the injector reads; any other `remora.dev/` annotation
/// gets a warning, since it is most likely a typo.
pub const KNOWN: &[&str] = &[
    INJECT,
    STATUS,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_CIDRS,
    OPAQUE_PORTS,
    PROXY_CPU,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY,
    PROXY_MEMORY_LIMIT,
    PROXY_LOG_LEVEL,
    PROXY_DRAIN_DEADLINE,
    REWRITE_PROBES,
    NATIVE_SIDECAR,
];

/// The log levels `remora.dev/proxy-log-level` accepts (they become the
/// proxy's `RUST_LOG`).
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// The range of `remora.dev/proxy-drain-deadline`; the same as the proxy's
/// `--drain-deadline`.
pub const DRAIN_DEADLINE_MAX: Duration = Duration::from_secs(3600);

/// An annotation value that cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("annotation {annotation}: `{value}`: {reason}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub value: String,
    pub reason: String,
}

/// `enabled` or `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Enabled,
    Disabled,
}

/// What one pod's annotations ask for; `None` means "use the default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub inject: Option<Switch>,
    /// Canonical comma-separated lists (sorted, deduplicated, no spaces),
    /// ready to become environment values.
    pub exclude_inbound_ports: Option<String>,
    pub exclude_outbound_ports: Option<String>,
    pub exclude_outbound_cidrs: Option<String>,
    pub opaque_ports: Option<String>,
    pub proxy_cpu: Option<Quantity>,
    pub proxy_cpu_limit: Option<Quantity>,
    pub proxy_memory: Option<Quantity>,
    pub proxy_memory_limit: Option<Quantity>,
    pub log_level: Option<&'static str>,
    pub drain_deadline: Option<Duration>,
    pub rewrite_probes: Option<Switch>,
    pub native_sidecar: Option<Switch>,
}

impl Overrides {
    /// Reads and checks every annotation the injector knows. The first bad
    /// value, in the order of [`KNOWN`], is the error.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Self, AnnotationError> {
        let get = |name: &str| annotations.get(name).map(String::as_str);
        let mut out = Overrides {
            inject: get(INJECT).map(|v| switch(INJECT, v)).transpose()?,
            ..Overrides::default()
        };
        if let Some(v) = get(EXCLUDE_INBOUND_PORTS) {
            out.exclude_inbound_ports = Some(ports(EXCLUDE_INBOUND_PORTS, v)?);
        }
        if let Some(v) = get(EXCLUDE_OUTBOUND_PORTS) {
            out.exclude_outbound_ports = Some(ports(EXCLUDE_OUTBOUND_PORTS, v)?);
        }
        if let Some(v) = get(EXCLUDE_OUTBOUND_CIDRS) {
            let list = parse_cidr_list(v).map_err(|e| bad(EXCLUDE_OUTBOUND_CIDRS, v, e))?;
            let text: Vec<String> = list.0.iter().map(ToString::to_string).collect();
            out.exclude_outbound_cidrs = Some(text.join(","));
        }
        if let Some(v) = get(OPAQUE_PORTS) {
            let list = ports(OPAQUE_PORTS, v)?;
            // The proxy's --opaque-ports cannot be empty: an empty list
            // would keep the proxy from starting, not turn the list off.
            if list.is_empty() {
                return Err(bad(
                    OPAQUE_PORTS,
                    v,
                    "name at least one port; to keep the proxy's defaults, remove the annotation",
                ));
            }
            out.opaque_ports = Some(list);
        }
        let quantity = |name: &'static str| {
            get(name)
                .map(|v| Quantity::parse(v).map_err(|e| bad(name, v, e)))
                .transpose()
        };
        out.proxy_cpu = quantity(PROXY_CPU)?;
        out.proxy_cpu_limit = quantity(PROXY_CPU_LIMIT)?;
        out.proxy_memory = quantity(PROXY_MEMORY)?;
        out.proxy_memory_limit = quantity(PROXY_MEMORY_LIMIT)?;
        if let Some(v) = get(PROXY_LOG_LEVEL) {
            let level = LOG_LEVELS
                .iter()
                .find(|level| level.eq_ignore_ascii_case(v.trim()))
                .ok_or_else(|| {
                    bad(
                        PROXY_LOG_LEVEL,
                        v,
                        "use one of trace, debug, info, warn, error",
                    )
                })?;
            out.log_level = Some(level);
        }
        if let Some(v) = get(PROXY_DRAIN_DEADLINE) {
            out.drain_deadline = Some(drain_deadline(v)?);
        }
        out.rewrite_probes = get(REWRITE_PROBES)
            .map(|v| switch(REWRITE_PROBES, v))
            .transpose()?;
        out.native_sidecar = get(NATIVE_SIDECAR)
            .map(|v| switch(NATIVE_SIDECAR, v))
            .transpose()?;
        Ok(out)
    }
}

/// The `remora.dev/` annotations on a pod that the injector does not know.
pub fn unknown(annotations: &BTreeMap<String, String>) -> Vec<&str> {
    annotations
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("remora.dev/") && !KNOWN.contains(k))
        .collect()
}

fn bad(annotation: &'static str, value: &str, reason: impl ToString) -> AnnotationError {
    AnnotationError {
        annotation,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

fn switch(annotation: &'static str, value: &str) -> Result<Switch, AnnotationError> {
    match value.trim() {
        "enabled" => Ok(Switch::Enabled),
        "disabled" => Ok(Switch::Disabled),
        _ => Err(bad(annotation, value, "use `enabled` or `disabled`")),
    }
}

fn ports(annotation: &'static str, value: &str) -> Result<String, AnnotationError> {
    let list = parse_port_list(value).map_err(|e| bad(annotation, value, e))?;
    let text: Vec<String> = list.0.iter().map(u16::to_string).collect();
    Ok(text.join(","))
}

fn drain_deadline(value: &str) -> Result<Duration, AnnotationError> {
    let reason = "use a duration from 0s to 1h, e.g. 45s or 2m";
    let deadline = humantime::parse_duration(value.trim())
        .map_err(|_| bad(PROXY_DRAIN_DEADLINE, value, reason))?;
    if deadline > DRAIN_DEADLINE_MAX {
        return Err(bad(PROXY_DRAIN_DEADLINE, value, reason));
    }
    Ok(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Overrides, String> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Overrides::parse(&map).map_err(|e| e.to_string())
    }

    #[test]
    fn lists_are_canonical() {
        let o = parse(&[
            (EXCLUDE_INBOUND_PORTS, " 9090, 8080,9090,"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.1.2.3/8, fd00::1, 10.0.0.0/8"),
            (EXCLUDE_OUTBOUND_PORTS, ""),
        ])
        .expect("valid");
        assert_eq!(o.exclude_inbound_ports.as_deref(), Some("8080,9090"));
        assert_eq!(
            o.exclude_outbound_cidrs.as_deref(),
            Some("10.0.0.0/8,fd00::1/128")
        );
        assert_eq!(o.exclude_outbound_ports.as_deref(), Some(""));
    }

    #[test]
    fn bad_values_name_the_annotation() {
        let cases = [
            (
                EXCLUDE_INBOUND_PORTS,
                "70000",
                "annotation remora.dev/exclude-inbound-ports: `70000`: port 70000 is out of range; use 1-65535",
            ),
            (
                EXCLUDE_OUTBOUND_PORTS,
                "http",
                "annotation remora.dev/exclude-outbound-ports: `http`: `http` is not a port number; use 1-65535",
            ),
            (
                EXCLUDE_OUTBOUND_CIDRS,
                "10.0.0.0/33",
                "annotation remora.dev/exclude-outbound-cidrs: `10.0.0.0/33`: `10.0.0.0/33` is not a CIDR or an IP address (invalid IP address syntax); use e.g. 10.0.0.0/8 or fd00::/8",
            ),
            (
                OPAQUE_PORTS,
                "0",
                "annotation remora.dev/opaque-ports: `0`: port 0 is out of range; use 1-65535",
            ),
            (
                OPAQUE_PORTS,
                " , ",
                "annotation remora.dev/opaque-ports: ` , `: name at least one port; to keep the proxy's defaults, remove the annotation",
            ),
            (
                INJECT,
                "yes",
                "annotation remora.dev/inject: `yes`: use `enabled` or `disabled`",
            ),
            (
                PROXY_LOG_LEVEL,
                "loud",
                "annotation remora.dev/proxy-log-level: `loud`: use one of trace, debug, info, warn, error",
            ),
            (
                PROXY_DRAIN_DEADLINE,
                "3601s",
                "annotation remora.dev/proxy-drain-deadline: `3601s`: use a duration from 0s to 1h, e.g. 45s or 2m",
            ),
            (
                PROXY_DRAIN_DEADLINE,
                "300000000000y",
                "annotation remora.dev/proxy-drain-deadline: `300000000000y`: use a duration from 0s to 1h, e.g. 45s or 2m",
            ),
            (
                PROXY_MEMORY,
                "lots",
                "annotation remora.dev/proxy-memory: `lots`: not a Kubernetes quantity; use e.g. 128Mi, 1Gi, 100m or 2",
            ),
            (
                NATIVE_SIDECAR,
                "true",
                "annotation remora.dev/native-sidecar: `true`: use `enabled` or `disabled`",
            ),
        ];
        for (annotation, value, message) in cases {
            assert_eq!(parse(&[(annotation, value)]).unwrap_err(), message);
        }
    }

    #[test]
    fn drain_deadline_range_ends_pass() {
        let o = parse(&[(PROXY_DRAIN_DEADLINE, "0s")]).expect("valid");
        assert_eq!(o.drain_deadline, Some(Duration::ZERO));
        let o = parse(&[(PROXY_DRAIN_DEADLINE, "1h")]).expect("valid");
        assert_eq!(o.drain_deadline, Some(DRAIN_DEADLINE_MAX));
    }

    #[test]
    fn unknown_remora_annotations_are_listed() {
        let map = [
            ("remora.dev/exclude-inbound-port", "1"),
            ("remora.dev/inject", "enabled"),
            ("example.com/x", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(unknown(&map), vec!["remora.dev/exclude-inbound-port"]);
    }
}
