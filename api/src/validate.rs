//! The rules a mesh config must follow beyond its types.
//!
//! Serde already rejects unknown fields, wrong types, bad durations and bad
//! socket addresses. This module checks the rest: references between parts
//! (backendRefs name backends), ranges (ports, percents, status codes),
//! Gateway API's constraints on paths, headers and filters, regexes that must
//! compile, and uniqueness. It walks the whole config and reports every
//! problem with its path, so one bad service can be told apart from the rest.
//! It only reads; regexes are compiled here to be checked, then dropped; the
//! proxy compiles its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;
use std::net::IpAddr;
use std::time::Duration;

use crate::backend::{Backend, HashOn, LoadBalancer};
use crate::error::{FieldError, ValidationError};
use crate::mesh::{MeshConfig, Protocol, Service, ServicePort};
use crate::route::{
    BackendRef, GrpcMethodMatch, HeaderModifier, MatchType, PathMatchType, PathModifier,
    RouteFilter, RouteMatch,
};

/// Largest `weight` Gateway API allows.
const MAX_WEIGHT: u32 = 1_000_000;

pub(crate) fn validate(config: &MeshConfig) -> Result<(), ValidationError> {
    let mut c = Checker {
        backends: &config.backends,
        errors: Vec::new(),
    };
    c.config(config);
    match ValidationError::from_errors(c.errors) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct Checker<'a> {
    backends: &'a BTreeMap<String, Backend>,
    errors: Vec<FieldError>,
}

/// Where a filter list sits: rules differ for route and backend filters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FilterScope {
    Route,
    Backend,
}

impl Checker<'_> {
    fn error(&mut self, path: impl Display, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn config(&mut self, config: &MeshConfig) {
        if config.version.trim().is_empty() {
            self.error("version", "must not be empty: name the config version");
        }
        self.services(&config.outbound.services);
        self.inbound(config);
        for (name, backend) in &config.backends {
            self.backend(&format!("backends.{name}"), name, backend);
        }
        self.http(config);
    }

    fn services(&mut self, services: &[Service]) {
        // (address or hostname, port) -> path of the first service port that claimed it.
        let mut by_addr: HashMap<(IpAddr, u16), String> = HashMap::new();
        let mut by_host: HashMap<(String, u16), String> = HashMap::new();
        for (i, service) in services.iter().enumerate() {
            let path = format!("outbound.services[{i}]");
            if service.name.trim().is_empty() {
                self.error(format!("{path}.name"), "must not be empty");
            }
            if service.addresses.is_empty() && service.hostnames.is_empty() {
                self.error(
                    &path,
                    "needs addresses or hostnames, or no traffic can reach it",
                );
            }
            for (j, addr) in service.addresses.iter().enumerate() {
                if addr.is_unspecified() {
                    self.error(
                        format!("{path}.addresses[{j}]"),
                        format!("{addr} is unspecified: use the service's virtual IP"),
                    );
                }
            }
            for (j, host) in service.hostnames.iter().enumerate() {
                if let Err(why) = hostname(host, true) {
                    self.error(format!("{path}.hostnames[{j}]"), why);
                }
            }
            if service.ports.is_empty() {
                self.error(format!("{path}.ports"), "must list at least one port");
            }
            let mut seen_ports = HashSet::new();
            for (j, port) in service.ports.iter().enumerate() {
                let port_path = format!("{path}.ports[{j}]");
                if !seen_ports.insert(port.port) {
                    self.error(
                        format!("{port_path}.port"),
                        format!("port {} is listed twice in this service", port.port),
                    );
                    continue;
                }
                for addr in &service.addresses {
                    if let Some(first) = by_addr.get(&(*addr, port.port)) {
                        self.error(
                            format!("{port_path}.port"),
                            format!("{addr}:{} is already claimed by {first}", port.port),
                        );
                    } else {
                        by_addr.insert((*addr, port.port), port_path.clone());
                    }
                }
                for host in &service.hostnames {
                    let key = (host.to_ascii_lowercase(), port.port);
                    if let Some(first) = by_host.get(&key) {
                        self.error(
                            format!("{port_path}.port"),
                            format!("{host}:{} is already claimed by {first}", port.port),
                        );
                    } else {
                        by_host.insert(key, port_path.clone());
                    }
                }
                self.service_port(&port_path, port);
            }
        }
    }

    fn service_port(&mut self, path: &str, port: &ServicePort) {
        if port.port == 0 {
            self.error(format!("{path}.port"), "must be 1 to 65535");
        }
        match port.protocol {
            Protocol::Tcp | Protocol::Opaque if !port.routes.is_empty() => self.error(
                format!("{path}.routes"),
                format!(
                    "a {} port has no requests to route: use backendRefs, or set protocol http",
                    protocol_name(port.protocol)
                ),
            ),
            Protocol::Tcp if port.backend_refs.is_empty() => self.error(
                format!("{path}.backendRefs"),
                "a tcp port needs backendRefs; to pass traffic through untouched, set protocol opaque",
            ),
            Protocol::Opaque if !port.backend_refs.is_empty() => self.error(
                format!("{path}.backendRefs"),
                "an opaque port forwards to the original destination: remove backendRefs, or set protocol tcp",
            ),
            _ => {}
        }
        let scope = if port.protocol.is_http() {
            Some(FilterScope::Backend)
        } else {
            None
        };
        self.backend_refs(&format!("{path}.backendRefs"), &port.backend_refs, scope);
        for (k, route) in port.routes.iter().enumerate() {
            let route_path = format!("{path}.routes[{k}]");
            for (m, route_match) in route.matches.iter().enumerate() {
                self.route_match(&format!("{route_path}.matches[{m}]"), route_match);
            }
            self.filters(
                &format!("{route_path}.filters"),
                &route.filters,
                FilterScope::Route,
                &route.matches,
            );
            self.backend_refs(
                &format!("{route_path}.backendRefs"),
                &route.backend_refs,
                Some(FilterScope::Backend),
            );
            if let (Some(request), Some(backend)) =
                (route.timeouts.request, route.timeouts.backend_request)
            {
                if !request.is_zero() && (backend.is_zero() || backend > request) {
                    self.error(
                        format!("{route_path}.timeouts.backendRequest"),
                        "must not be longer than timeouts.request (0s means none, which is longer)",
                    );
                }
            }
            if let Some(retry) = &route.retry {
                for (c, code) in retry.codes.iter().enumerate() {
                    if !(400..=599).contains(code) {
                        self.error(
                            format!("{route_path}.retry.codes[{c}]"),
                            format!("{code} cannot be retried: use a status from 400 to 599"),
                        );
                    }
                }
                if retry.backoff.is_some_and(|b| b.is_zero()) {
                    self.error(
                        format!("{route_path}.retry.backoff"),
                        "must be more than 0s: leave it out for the default",
                    );
                }
            }
        }
    }

    fn route_match(&mut self, path: &str, m: &RouteMatch) {
        if let Some(p) = &m.path {
            let value_path = format!("{path}.path.value");
            match p.kind {
                PathMatchType::Exact | PathMatchType::PathPrefix => {
                    if let Err(why) = http_path(&p.value) {
                        self.error(value_path, why);
                    }
                }
                PathMatchType::RegularExpression => self.regex(&value_path, &p.value),
            }
        }
        if let Some(grpc) = &m.grpc_method {
            if m.path.is_some() {
                self.error(
                    format!("{path}.grpcMethod"),
                    "cannot be used with path: a gRPC method is a path, /<service>/<method>",
                );
            }
            self.grpc_method(&format!("{path}.grpcMethod"), grpc);
        }
        let mut names = HashSet::new();
        for (i, h) in m.headers.iter().enumerate() {
            let p = format!("{path}.headers[{i}]");
            if let Err(why) = header_name(&h.name) {
                self.error(format!("{p}.name"), why);
            } else if !names.insert(h.name.to_ascii_lowercase()) {
                self.error(
                    format!("{p}.name"),
                    format!("header {:?} is matched twice in this match", h.name),
                );
            }
            match h.kind {
                MatchType::Exact => {
                    if let Err(why) = header_value(&h.value) {
                        self.error(format!("{p}.value"), why);
                    }
                }
                MatchType::RegularExpression => self.regex(&format!("{p}.value"), &h.value),
            }
        }
        let mut names = HashSet::new();
        for (i, q) in m.query_params.iter().enumerate() {
            let p = format!("{path}.queryParams[{i}]");
            if q.name.is_empty() {
                self.error(format!("{p}.name"), "must not be empty");
            } else if !names.insert(q.name.as_str()) {
                self.error(
                    format!("{p}.name"),
                    format!(
                        "query parameter {:?} is matched twice in this match",
                        q.name
                    ),
                );
            }
            if q.kind == MatchType::RegularExpression {
                self.regex(&format!("{p}.value"), &q.value);
            }
        }
    }

    fn grpc_method(&mut self, path: &str, m: &GrpcMethodMatch) {
        if m.service.is_none() && m.method.is_none() {
            self.error(path, "set service, method or both");
        }
        match m.kind {
            MatchType::Exact => {
                if let Some(s) = &m.service {
                    if !grpc_service_name(s) {
                        self.error(
                            format!("{path}.service"),
                            format!("{s:?} is not a fully qualified gRPC service, e.g. reviews.v1.Reviews"),
                        );
                    }
                }
                if let Some(s) = &m.method {
                    if !grpc_method_name(s) {
                        self.error(
                            format!("{path}.method"),
                            format!("{s:?} is not a gRPC method name, e.g. GetReview"),
                        );
                    }
                }
            }
            MatchType::RegularExpression => {
                if let Some(s) = &m.service {
                    self.regex(&format!("{path}.service"), s);
                }
                if let Some(s) = &m.method {
                    self.regex(&format!("{path}.method"), s);
                }
            }
        }
    }

    fn regex(&mut self, path: &str, pattern: &str) {
        if let Err(e) = regex::Regex::new(pattern) {
            self.error(path, format!("regex does not compile: {e}"));
        }
    }

    fn filters(
        &mut self,
        path: &str,
        filters: &[RouteFilter],
        scope: FilterScope,
        matches: &[RouteMatch],
    ) {
        let mut seen: HashMap<&'static str, usize> = HashMap::new();
        for (i, filter) in filters.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let name = filter.type_name();
            if !matches!(filter, RouteFilter::RequestMirror(_)) {
                if let Some(first) = seen.get(name) {
                    self.error(
                        &p,
                        format!("{name} is already at {path}[{first}]: merge them, each type may appear once"),
                    );
                }
                seen.insert(name, i);
            }
            match filter {
                RouteFilter::RequestHeaderModifier(m) => {
                    self.header_modifier(&format!("{p}.requestHeaderModifier"), m);
                }
                RouteFilter::ResponseHeaderModifier(m) => {
                    self.header_modifier(&format!("{p}.responseHeaderModifier"), m);
                }
                RouteFilter::RequestRedirect(r) => {
                    let rp = format!("{p}.requestRedirect");
                    if scope == FilterScope::Backend {
                        self.error(
                            &p,
                            "RequestRedirect answers before any backend is chosen: put it in the route's filters",
                        );
                    }
                    if let Some(host) = &r.hostname {
                        if let Err(why) = hostname(host, false) {
                            self.error(format!("{rp}.hostname"), why);
                        }
                    }
                    if let Some(modifier) = &r.path {
                        self.path_modifier(&format!("{rp}.path"), modifier, matches, scope);
                    }
                    if r.port == Some(0) {
                        self.error(format!("{rp}.port"), "must be 1 to 65535");
                    }
                    if ![301, 302, 303, 307, 308].contains(&r.status_code) {
                        self.error(
                            format!("{rp}.statusCode"),
                            format!(
                                "{} is not a redirect: use 301, 302, 303, 307 or 308",
                                r.status_code
                            ),
                        );
                    }
                }
                RouteFilter::UrlRewrite(r) => {
                    let rp = format!("{p}.urlRewrite");
                    if let Some(host) = &r.hostname {
                        if let Err(why) = hostname(host, false) {
                            self.error(format!("{rp}.hostname"), why);
                        }
                    }
                    if let Some(modifier) = &r.path {
                        self.path_modifier(&format!("{rp}.path"), modifier, matches, scope);
                    }
                }
                RouteFilter::RequestMirror(m) => {
                    let mp = format!("{p}.requestMirror");
                    self.backend_name(&format!("{mp}.backendRef.name"), &m.backend_ref.name);
                    if m.percent > 100 {
                        self.error(format!("{mp}.percent"), "must be 0 to 100");
                    }
                }
            }
        }
        if seen.contains_key("RequestRedirect") && seen.contains_key("URLRewrite") {
            self.error(
                path,
                "RequestRedirect and URLRewrite cannot be used together: a redirect never reaches the backend",
            );
        }
    }

    fn path_modifier(
        &mut self,
        path: &str,
        modifier: &PathModifier,
        matches: &[RouteMatch],
        scope: FilterScope,
    ) {
        match modifier {
            PathModifier::ReplaceFullPath(value) => {
                if let Err(why) = http_path(value) {
                    self.error(format!("{path}.replaceFullPath"), why);
                }
            }
            PathModifier::ReplacePrefixMatch(value) => {
                if let Err(why) = http_path(value) {
                    self.error(format!("{path}.replacePrefixMatch"), why);
                }
                // No matches means the implicit `PathPrefix /`.
                let all_prefix = matches.iter().all(|m| {
                    m.path
                        .as_ref()
                        .is_some_and(|p| p.kind == PathMatchType::PathPrefix)
                });
                if scope == FilterScope::Route && !all_prefix {
                    self.error(
                        path,
                        "ReplacePrefixMatch needs every match of the route to have a PathPrefix path",
                    );
                }
            }
        }
    }

    fn header_modifier(&mut self, path: &str, m: &HeaderModifier) {
        if m.set.is_empty() && m.add.is_empty() && m.remove.is_empty() {
            self.error(path, "set, add or remove at least one header");
        }
        for (list, headers) in [("set", &m.set), ("add", &m.add)] {
            let mut names = HashSet::new();
            for (i, h) in headers.iter().enumerate() {
                let p = format!("{path}.{list}[{i}]");
                if let Err(why) = header_name(&h.name) {
                    self.error(format!("{p}.name"), why);
                } else if !names.insert(h.name.to_ascii_lowercase()) {
                    self.error(
                        format!("{p}.name"),
                        format!("header {:?} is listed twice in {list}", h.name),
                    );
                }
                if let Err(why) = header_value(&h.value) {
                    self.error(format!("{p}.value"), why);
                }
            }
        }
        for (i, name) in m.remove.iter().enumerate() {
            if let Err(why) = header_name(name) {
                self.error(format!("{path}.remove[{i}]"), why);
            }
        }
    }

    /// `scope` is `None` where refs may carry no filters (tcp ports).
    fn backend_refs(&mut self, path: &str, refs: &[BackendRef], scope: Option<FilterScope>) {
        let mut total: u64 = 0;
        for (i, r) in refs.iter().enumerate() {
            let p = format!("{path}[{i}]");
            self.backend_name(&format!("{p}.name"), &r.name);
            if r.weight > MAX_WEIGHT {
                self.error(format!("{p}.weight"), "must be 0 to 1000000");
            }
            total += u64::from(r.weight);
            match scope {
                Some(scope) => self.filters(&format!("{p}.filters"), &r.filters, scope, &[]),
                None if !r.filters.is_empty() => self.error(
                    format!("{p}.filters"),
                    "filters act on HTTP requests: this port is not HTTP",
                ),
                None => {}
            }
        }
        if !refs.is_empty() && total == 0 {
            self.error(
                path,
                "weights add up to 0, so no backend can be chosen: give one a weight above 0",
            );
        }
    }

    fn backend_name(&mut self, path: &str, name: &str) {
        if !self.backends.contains_key(name) {
            self.error(
                path,
                format!("backend {name:?} is not defined: add it under backends"),
            );
        }
    }

    fn backend(&mut self, path: &str, name: &str, backend: &Backend) {
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.error(path, format!("{name:?} is not a usable backend name"));
        }
        let mut seen = HashSet::new();
        for (i, e) in backend.endpoints.iter().enumerate() {
            let p = format!("{path}.endpoints[{i}]");
            if e.address.port() == 0 || e.address.ip().is_unspecified() {
                self.error(
                    format!("{p}.address"),
                    format!(
                        "{} cannot be connected to: give a real IP and a port 1 to 65535",
                        e.address
                    ),
                );
            } else if !seen.insert(e.address) {
                self.error(
                    format!("{p}.address"),
                    format!("{} is listed twice: add the weights instead", e.address),
                );
            }
            if e.weight == 0 || e.weight > MAX_WEIGHT {
                self.error(format!("{p}.weight"), "must be 1 to 1000000");
            }
            if let Some(id) = &e.identity {
                if let Err(why) = spiffe_id(id) {
                    self.error(format!("{p}.identity"), why);
                }
            }
            if e.zone.as_deref().is_some_and(str::is_empty) {
                self.error(
                    format!("{p}.zone"),
                    "must not be empty: leave it out instead",
                );
            }
        }
        if let LoadBalancer::ConsistentHash(on) = &backend.load_balancer {
            let p = format!("{path}.loadBalancer.consistentHash");
            match on {
                HashOn::Header(name) => {
                    if let Err(why) = header_name(name) {
                        self.error(format!("{p}.header"), why);
                    }
                }
                HashOn::Cookie(name) => {
                    if name.is_empty() || !name.bytes().all(is_tchar) {
                        self.error(
                            format!("{p}.cookie"),
                            format!("{name:?} is not a cookie name"),
                        );
                    }
                }
                HashOn::SourceIp => {}
            }
        }
        if let Some(hc) = &backend.health_check {
            let p = format!("{path}.healthCheck");
            if let Err(why) = http_path(&hc.path) {
                self.error(format!("{p}.path"), why);
            }
            if hc.port == Some(0) {
                self.error(format!("{p}.port"), "must be 1 to 65535");
            }
            self.positive(&format!("{p}.interval"), hc.interval);
            self.positive(&format!("{p}.timeout"), hc.timeout);
            if hc.timeout > hc.interval {
                self.error(format!("{p}.timeout"), "must not be longer than interval");
            }
            if hc.healthy_threshold == 0 {
                self.error(format!("{p}.healthyThreshold"), "must be at least 1");
            }
            if hc.unhealthy_threshold == 0 {
                self.error(format!("{p}.unhealthyThreshold"), "must be at least 1");
            }
        }
        let od = &backend.outlier_detection;
        self.positive(&format!("{path}.outlierDetection.interval"), od.interval);
        self.positive(
            &format!("{path}.outlierDetection.baseEjectionTime"),
            od.base_ejection_time,
        );
        if od.max_ejection_percent > 100 {
            self.error(
                format!("{path}.outlierDetection.maxEjectionPercent"),
                "must be 0 to 100",
            );
        }
        let cb = &backend.circuit_breaker;
        for (field, value) in [
            ("maxConnections", cb.max_connections),
            ("maxPendingRequests", cb.max_pending_requests),
            ("maxRequests", cb.max_requests),
        ] {
            if value == 0 {
                self.error(
                    format!("{path}.circuitBreaker.{field}"),
                    "must be at least 1, or every request fails",
                );
            }
        }
        self.positive(&format!("{path}.connectTimeout"), backend.connect_timeout);
        let budget = &backend.retry_budget;
        if !(0.0..=1000.0).contains(&budget.ratio) {
            self.error(
                format!("{path}.retryBudget.ratio"),
                format!("{} is out of range: use 0 to 1000, e.g. 0.2", budget.ratio),
            );
        }
        self.positive(&format!("{path}.retryBudget.ttl"), budget.ttl);
    }

    fn inbound(&mut self, config: &MeshConfig) {
        let mut seen = HashSet::new();
        for (i, port) in config.inbound.ports.iter().enumerate() {
            let p = format!("inbound.ports[{i}].port");
            if port.port == 0 {
                self.error(p, "must be 1 to 65535");
            } else if !seen.insert(port.port) {
                self.error(p, format!("port {} is listed twice", port.port));
            }
        }
    }

    fn http(&mut self, config: &MeshConfig) {
        let http = &config.http;
        if http.max_header_bytes < 1024 {
            self.error(
                "http.maxHeaderBytes",
                "must be at least 1024, or ordinary requests are refused",
            );
        }
        if http.max_headers == 0 {
            self.error("http.maxHeaders", "must be at least 1");
        }
        if http.allowed_upgrades.len() > MAX_ALLOWED_UPGRADES {
            self.error(
                "http.allowedUpgrades",
                format!("at most {MAX_ALLOWED_UPGRADES} protocols"),
            );
        }
        for (i, upgrade) in http.allowed_upgrades.iter().enumerate() {
            let path = format!("http.allowedUpgrades[{i}]");
            if upgrade.is_empty() || upgrade.len() > 64 || !upgrade.bytes().all(is_upgrade_char) {
                self.error(
                    path,
                    format!("{upgrade:?} is not a protocol name such as \"websocket\""),
                );
            } else if upgrade.eq_ignore_ascii_case("h2c") {
                self.error(
                    path,
                    "h2c cannot be allowed: an h2c connection would reach the app past routing; \
                     clients that want HTTP/2 can send it with prior knowledge",
                );
            }
        }
        for (field, value) in [
            ("requestHeadersTimeout", http.request_headers_timeout),
            ("requestBodyIdleTimeout", http.request_body_idle_timeout),
        ] {
            if !(MIN_HTTP_TIMEOUT..=MAX_HTTP_TIMEOUT).contains(&value) {
                self.error(
                    format!("http.{field}"),
                    format!(
                        "{} is out of range: use 1s to 1h",
                        crate::duration::format_duration(value)
                    ),
                );
            }
        }
    }

    fn positive(&mut self, path: &str, d: Duration) {
        if d.is_zero() {
            self.error(path, "must be more than 0s");
        }
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
        Protocol::Tcp => "tcp",
        Protocol::Opaque => "opaque",
    }
}

/// Most entries in `http.allowedUpgrades`.
const MAX_ALLOWED_UPGRADES: usize = 16;
/// The range of the HTTP request timeouts: shorter cuts off ordinary
/// clients on slow links, longer lets a silent client hold a connection.
const MIN_HTTP_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(3600);

/// A character of an `Upgrade` protocol name (RFC 9110 7.8: a token, and
/// `/` between name and version).
fn is_upgrade_char(b: u8) -> bool {
    is_tchar(b) || b == b'/'
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    Ok(())
}

fn header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "{value:?} has control characters, which a header value cannot carry"
        ));
    }
    Ok(())
}

/// Gateway API's rules for path values (`HTTPPathMatch` and modifiers).
fn http_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with /"));
    }
    for bad in ["//", "/./", "/../", "%2f", "%2F", "#", "?"] {
        if path.contains(bad) {
            return Err(format!("{path:?} must not contain {bad:?}"));
        }
    }
    if path.ends_with("/..") || path.ends_with("/.") {
        return Err(format!("{path:?} must not end in a dot segment"));
    }
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{path:?} has spaces or control characters: percent-encode them"
        ));
    }
    Ok(())
}

/// An RFC 1123 host name in lower case, with a leading `*.` if `wildcard`.
fn hostname(host: &str, wildcard: bool) -> Result<(), String> {
    let name = match host.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => host,
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if host.len() > 253 || !name.split('.').all(label_ok) {
        let hint = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            " (write it in lower case)"
        } else {
            ""
        };
        return Err(format!("{host:?} is not a valid host name{hint}"));
    }
    Ok(())
}

/// `spiffe://<trust-domain>/<path>` with a non-empty path.
fn spiffe_id(id: &str) -> Result<(), String> {
    let ok = id.strip_prefix("spiffe://").is_some_and(|rest| {
        rest.split_once('/').is_some_and(|(domain, path)| {
            !domain.is_empty()
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
                && !path.is_empty()
                && path.split('/').all(|seg| !seg.is_empty())
        })
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a SPIFFE id: write spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
        ))
    }
}

/// Gateway API's pattern for an exact gRPC service:
/// `(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*`.
fn grpc_service_name(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(grpc_method_name)
}

/// Gateway API's pattern for an exact gRPC method: `[A-Za-z_][A-Za-z_0-9]*`.
fn grpc_method_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use crate::error::ConfigError;
    use crate::mesh::MeshConfig;

    /// A valid base that each case below breaks in one place.
    const BASE: &str = r#"
version: v1
backends:
  web: { endpoints: [{ address: "10.0.0.1:80" }] }
  web-v2: { endpoints: [{ address: "10.0.0.2:80" }] }
outbound:
  services:
    - name: web
      addresses: [10.96.0.1]
      hostnames: [web]
      ports:
        - port: 80
          routes:
            - matches: [{ path: { type: PathPrefix, value: /api } }]
              backendRefs: [{ name: web }]
"#;

    fn check(yaml: &str) -> Vec<String> {
        match MeshConfig::from_yaml(yaml) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(e)) => e.errors().map(ToString::to_string).collect(),
            Err(e) => panic!("expected a validation error, got {e}\n{yaml}"),
        }
    }

    /// Replaces the first `from` in BASE, which must be there.
    fn with(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "{from:?} is not in BASE");
        BASE.replacen(from, to, 1)
    }

    fn route(body: &str) -> String {
        with(
            "            - matches: [{ path: { type: PathPrefix, value: /api } }]\n              backendRefs: [{ name: web }]\n",
            body,
        )
    }

    const ROUTE: &str = "outbound.services[0].ports[0].routes[0]";

    #[test]
    fn base_is_valid() {
        assert_eq!(check(BASE), Vec::<String>::new());
    }

    #[test]
    fn each_rule_names_its_path() {
        let cases: Vec<(String, String, &str)> = vec![
            (with("version: v1", "version: ''"), "version".into(), "must not be empty"),
            (
                route("            - matches: [{ path: { type: RegularExpression, value: '/a(' } }]\n"),
                format!("{ROUTE}.matches[0].path.value"),
                "regex does not compile",
            ),
            (
                route("            - matches: [{ path: { value: api } }]\n"),
                format!("{ROUTE}.matches[0].path.value"),
                "must start with /",
            ),
            (
                route("            - matches: [{ path: { type: Exact, value: /a//b } }]\n"),
                format!("{ROUTE}.matches[0].path.value"),
                "must not contain \"//\"",
            ),
            (
                route("            - matches: [{ headers: [{ name: 'bad name', value: x }] }]\n"),
                format!("{ROUTE}.matches[0].headers[0].name"),
                "not a valid HTTP header name",
            ),
            (
                route("            - matches: [{ headers: [{ name: a, value: x }, { name: A, value: y }] }]\n"),
                format!("{ROUTE}.matches[0].headers[1].name"),
                "matched twice",
            ),
            (
                route("            - matches: [{ queryParams: [{ type: RegularExpression, name: q, value: '[' }] }]\n"),
                format!("{ROUTE}.matches[0].queryParams[0].value"),
                "regex does not compile",
            ),
            (
                route("            - matches: [{ grpcMethod: {} }]\n"),
                format!("{ROUTE}.matches[0].grpcMethod"),
                "set service, method or both",
            ),
            (
                route("            - matches: [{ grpcMethod: { service: 'a..b' } }]\n"),
                format!("{ROUTE}.matches[0].grpcMethod.service"),
                "not a fully qualified gRPC service",
            ),
            (
                route("            - matches: [{ path: { value: / }, grpcMethod: { method: Get } }]\n"),
                format!("{ROUTE}.matches[0].grpcMethod"),
                "cannot be used with path",
            ),
            (
                route("            - backendRefs: [{ name: nope }]\n"),
                format!("{ROUTE}.backendRefs[0].name"),
                "backend \"nope\" is not defined",
            ),
            (
                route("            - backendRefs: [{ name: web, weight: 0 }, { name: web-v2, weight: 0 }]\n"),
                format!("{ROUTE}.backendRefs"),
                "weights add up to 0",
            ),
            (
                route("            - backendRefs: [{ name: web, weight: 1000001 }]\n"),
                format!("{ROUTE}.backendRefs[0].weight"),
                "must be 0 to 1000000",
            ),
            (
                route("            - filters: [{ type: RequestRedirect, requestRedirect: { statusCode: 200 } }]\n"),
                format!("{ROUTE}.filters[0].requestRedirect.statusCode"),
                "200 is not a redirect",
            ),
            (
                route("            - filters: [{ type: RequestRedirect, requestRedirect: { port: 0 } }]\n"),
                format!("{ROUTE}.filters[0].requestRedirect.port"),
                "must be 1 to 65535",
            ),
            (
                route("            - filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: web }, percent: 101 } }]\n"),
                format!("{ROUTE}.filters[0].requestMirror.percent"),
                "must be 0 to 100",
            ),
            (
                route("            - filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: ghost } } }]\n"),
                format!("{ROUTE}.filters[0].requestMirror.backendRef.name"),
                "not defined",
            ),
            (
                route("            - filters:\n                - { type: RequestHeaderModifier, requestHeaderModifier: { remove: [a] } }\n                - { type: RequestHeaderModifier, requestHeaderModifier: { remove: [b] } }\n"),
                format!("{ROUTE}.filters[1]"),
                "is already at",
            ),
            (
                route("            - filters:\n                - { type: RequestRedirect, requestRedirect: {} }\n                - { type: URLRewrite, urlRewrite: { hostname: b } }\n"),
                format!("{ROUTE}.filters"),
                "cannot be used together",
            ),
            (
                route("            - matches: [{ path: { type: Exact, value: /a } }]\n              filters: [{ type: URLRewrite, urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /b } } }]\n"),
                format!("{ROUTE}.filters[0].urlRewrite.path"),
                "needs every match of the route to have a PathPrefix path",
            ),
            (
                route("            - filters: [{ type: URLRewrite, urlRewrite: { hostname: Web.Example } }]\n"),
                format!("{ROUTE}.filters[0].urlRewrite.hostname"),
                "write it in lower case",
            ),
            (
                route("            - filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: x, value: \"a\\nb\" }] } }]\n"),
                format!("{ROUTE}.filters[0].requestHeaderModifier.set[0].value"),
                "control characters",
            ),
            (
                route("            - filters: [{ type: ResponseHeaderModifier, responseHeaderModifier: {} }]\n"),
                format!("{ROUTE}.filters[0].responseHeaderModifier"),
                "at least one header",
            ),
            (
                route("            - backendRefs: [{ name: web, filters: [{ type: RequestRedirect, requestRedirect: {} }] }]\n"),
                format!("{ROUTE}.backendRefs[0].filters[0]"),
                "put it in the route's filters",
            ),
            (
                route("            - timeouts: { request: 1s, backendRequest: 2s }\n"),
                format!("{ROUTE}.timeouts.backendRequest"),
                "must not be longer than timeouts.request",
            ),
            (
                route("            - retry: { codes: [503, 200] }\n"),
                format!("{ROUTE}.retry.codes[1]"),
                "200 cannot be retried",
            ),
            (
                with("        - port: 80\n", "        - port: 0\n"),
                "outbound.services[0].ports[0].port".into(),
                "must be 1 to 65535",
            ),
            (
                with("        - port: 80\n", "        - port: 80\n          protocol: tcp\n"),
                "outbound.services[0].ports[0].routes".into(),
                "a tcp port has no requests to route",
            ),
            (
                with(
                    "          routes:\n            - matches: [{ path: { type: PathPrefix, value: /api } }]\n              backendRefs: [{ name: web }]\n",
                    "          protocol: opaque\n          backendRefs: [{ name: web }]\n",
                ),
                "outbound.services[0].ports[0].backendRefs".into(),
                "an opaque port forwards to the original destination",
            ),
            (
                with("      hostnames: [web]", "      hostnames: [web_1]"),
                "outbound.services[0].hostnames[0]".into(),
                "not a valid host name",
            ),
            (
                with("      addresses: [10.96.0.1]\n      hostnames: [web]\n", ""),
                "outbound.services[0]".into(),
                "needs addresses or hostnames",
            ),
            (
                with("  services:\n", "  services:\n    - { name: other, addresses: [10.96.0.1], ports: [{ port: 80, backendRefs: [{ name: web }] }] }\n"),
                "outbound.services[1].ports[0].port".into(),
                "10.96.0.1:80 is already claimed by outbound.services[0].ports[0]",
            ),
            (
                with("\"10.0.0.1:80\" }", "\"10.0.0.1:80\" }, { address: \"10.0.0.1:80\" }"),
                "backends.web.endpoints[1].address".into(),
                "listed twice",
            ),
            (
                with("\"10.0.0.1:80\" }", "\"0.0.0.0:80\" }"),
                "backends.web.endpoints[0].address".into(),
                "cannot be connected to",
            ),
            (
                with("\"10.0.0.1:80\" }", "\"10.0.0.1:80\", weight: 0 }"),
                "backends.web.endpoints[0].weight".into(),
                "must be 1 to 1000000",
            ),
            (
                with("\"10.0.0.1:80\" }", "\"10.0.0.1:80\", identity: reviews }"),
                "backends.web.endpoints[0].identity".into(),
                "is not a SPIFFE id",
            ),
            (
                with("\"10.0.0.1:80\" }] }", "\"10.0.0.1:80\" }], loadBalancer: { consistentHash: { header: 'a b' } } }"),
                "backends.web.loadBalancer.consistentHash.header".into(),
                "not a valid HTTP header name",
            ),
            (
                with("}] }", "}], healthCheck: { path: /h, interval: 1s, timeout: 2s } }"),
                "backends.web.healthCheck.timeout".into(),
                "must not be longer than interval",
            ),
            (
                with("}] }", "}], outlierDetection: { maxEjectionPercent: 101 } }"),
                "backends.web.outlierDetection.maxEjectionPercent".into(),
                "must be 0 to 100",
            ),
            (
                with("}] }", "}], circuitBreaker: { maxRequests: 0 } }"),
                "backends.web.circuitBreaker.maxRequests".into(),
                "must be at least 1",
            ),
            (
                with("}] }", "}], connectTimeout: 0s }"),
                "backends.web.connectTimeout".into(),
                "must be more than 0s",
            ),
            (
                with("}] }", "}], retryBudget: { ratio: -0.5 } }"),
                "backends.web.retryBudget.ratio".into(),
                "out of range",
            ),
            (
                format!("{BASE}inbound: {{ ports: [{{ port: 8080 }}, {{ port: 8080 }}] }}\n"),
                "inbound.ports[1].port".into(),
                "listed twice",
            ),
            (
                format!("{BASE}http: {{ maxHeaderBytes: 10 }}\n"),
                "http.maxHeaderBytes".into(),
                "at least 1024",
            ),
            (
                format!("{BASE}http: {{ allowedUpgrades: [websocket, H2C] }}\n"),
                "http.allowedUpgrades[1]".into(),
                "h2c cannot be allowed",
            ),
            (
                format!("{BASE}http: {{ allowedUpgrades: ['web socket'] }}\n"),
                "http.allowedUpgrades[0]".into(),
                "not a protocol name",
            ),
            (
                format!("{BASE}http: {{ requestHeadersTimeout: 500ms }}\n"),
                "http.requestHeadersTimeout".into(),
                "500ms is out of range: use 1s to 1h",
            ),
            (
                format!("{BASE}http: {{ requestBodyIdleTimeout: 2h }}\n"),
                "http.requestBodyIdleTimeout".into(),
                "2h is out of range: use 1s to 1h",
            ),
        ];
        for (yaml, path, message) in cases {
            let errors = check(&yaml);
            let expected = format!("{path}: ");
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(&expected) && e.contains(message)),
                "want {path}: ...{message}...\ngot {errors:#?}\n{yaml}"
            );
            assert_eq!(errors.len(), 1, "one break, one error: {errors:#?}\n{yaml}");
        }
    }

    #[test]
    fn http_settings_at_the_ends_of_their_ranges_are_valid() {
        let yaml = format!(
            "{BASE}http: {{ allowedUpgrades: [websocket, TLS/1.0], requestHeadersTimeout: 1s, \
             requestBodyIdleTimeout: 1h, pathNormalization: {{ mode: none, mergeSlashes: true }} }}\n"
        );
        assert_eq!(check(&yaml), Vec::<String>::new());
        let too_many = (0..17)
            .map(|i| format!("p{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let errors = check(&format!(
            "{BASE}http: {{ allowedUpgrades: [{too_many}] }}\n"
        ));
        assert_eq!(errors, ["http.allowedUpgrades: at most 16 protocols"]);
    }

    #[test]
    fn case_insensitive_regexes_compile() {
        let yaml = route(
            "            - matches: [{ headers: [{ type: RegularExpression, name: x-env, value: '(?i)^prod$' }] }]\n              backendRefs: [{ name: web }]\n",
        );
        assert_eq!(check(&yaml), Vec::<String>::new());
    }

    #[test]
    fn reports_every_problem_in_order() {
        let yaml = with("version: v1", "version: ''").replace("name: web }]", "name: nope }]");
        let err = MeshConfig::from_yaml(&yaml).unwrap_err();
        let ConfigError::Invalid(e) = &err else {
            panic!("{err}");
        };
        assert_eq!(e.len(), 2, "{err}");
        assert_eq!(err.path(), "version");
        assert_eq!(
            err.to_string(),
            "version: must not be empty: name the config version; \
             outbound.services[0].ports[0].routes[0].backendRefs[0].name: backend \"nope\" is not defined: add it under backends"
        );
    }
}
