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

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use crate::authz::Authorization;
use crate::backend::{Backend, HashOn, LoadBalancer};
use crate::duration::format_duration;
use crate::error::{FieldError, ValidationError};
use crate::mesh::{MeshConfig, Protocol, Service, ServicePort};
use crate::ranges::{self, Range};
use crate::route::{
    BackendRef, GrpcMethodMatch, HeaderModifier, MatchType, PathMatchType, PathModifier,
    RouteFilter, RouteMatch,
};

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

    /// True the first time `key` is seen; after that, an error at `path`
    /// that names `what` and where it was first.
    fn once<K: Hash + Eq>(
        &mut self,
        seen: &mut HashMap<K, String>,
        key: K,
        path: String,
        what: impl Display,
    ) -> bool {
        match seen.entry(key) {
            Entry::Occupied(first) => {
                let message = format!("{what} is listed twice, first at {}", first.get());
                self.error(path, message);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(path);
                true
            }
        }
    }

    fn services(&mut self, services: &[Service]) {
        // (address or hostname, port) -> path of the first service port that claimed it.
        let mut by_addr: HashMap<(IpAddr, u16), String> = HashMap::new();
        let mut by_host: HashMap<(String, u16), String> = HashMap::new();
        let mut names = HashMap::new();
        for (i, service) in services.iter().enumerate() {
            let path = format!("outbound.services[{i}]");
            if service.name.trim().is_empty() {
                self.error(format!("{path}.name"), "must not be empty");
            } else {
                let what = format!("service name {:?}", service.name);
                self.once(&mut names, &service.name, format!("{path}.name"), what);
            }
            if service.addresses.is_empty() && service.hostnames.is_empty() {
                self.error(
                    &path,
                    "needs addresses or hostnames, or no traffic can reach it",
                );
            }
            // Each address and host name once, so that the claims below
            // are between services.
            let (mut addresses, mut seen_addresses) = (Vec::new(), HashMap::new());
            for (j, addr) in service.addresses.iter().enumerate() {
                let p = format!("{path}.addresses[{j}]");
                if addr.is_unspecified() {
                    self.error(
                        p,
                        format!("{addr} is unspecified: use the service's virtual IP"),
                    );
                } else if self.once(&mut seen_addresses, *addr, p, format!("address {addr}")) {
                    addresses.push(*addr);
                }
            }
            let (mut hostnames, mut seen_hosts) = (Vec::new(), HashMap::new());
            for (j, host) in service.hostnames.iter().enumerate() {
                let p = format!("{path}.hostnames[{j}]");
                if let Err(why) = hostname(host, true) {
                    self.error(p, why);
                } else {
                    let what = format!("host name {host:?}");
                    let lower = host.to_ascii_lowercase();
                    if self.once(&mut seen_hosts, lower.clone(), p, what) {
                        hostnames.push(lower);
                    }
                }
            }
            if service.ports.is_empty() {
                self.error(format!("{path}.ports"), "must list at least one port");
            }
            let mut seen_ports = HashMap::new();
            let mut port_names = HashMap::new();
            for (j, port) in service.ports.iter().enumerate() {
                let port_path = format!("{path}.ports[{j}]");
                if let Some(name) = &port.name {
                    let what = format!("port name {name:?}");
                    self.once(&mut port_names, name, format!("{port_path}.name"), what);
                }
                let what = format!("port {}", port.port);
                if !self.once(
                    &mut seen_ports,
                    port.port,
                    format!("{port_path}.port"),
                    what,
                ) {
                    continue;
                }
                for addr in &addresses {
                    if let Some(first) = by_addr.get(&(*addr, port.port)) {
                        self.error(
                            format!("{port_path}.port"),
                            format!("{addr}:{} is already claimed by {first}", port.port),
                        );
                    } else {
                        by_addr.insert((*addr, port.port), port_path.clone());
                    }
                }
                for host in &hostnames {
                    let key = (host.clone(), port.port);
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
        self.in_range(format!("{path}.port"), port.port, ranges::PORT);
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
        let mut route_names = HashMap::new();
        for (k, route) in port.routes.iter().enumerate() {
            let route_path = format!("{path}.routes[{k}]");
            if let Some(name) = &route.name {
                let what = format!("route name {name:?}");
                self.once(&mut route_names, name, format!("{route_path}.name"), what);
            }
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
                // 0s turns either off. Gateway API's own rule: one attempt
                // may not outlast the whole request, and no attempt limit
                // under a request limit is fine.
                if !request.is_zero() && !backend.is_zero() && backend > request {
                    self.error(
                        format!("{route_path}.timeouts.backendRequest"),
                        "must not be longer than timeouts.request",
                    );
                }
            }
            if let Some(retry) = &route.retry {
                let rp = format!("{route_path}.retry");
                self.in_range(
                    format!("{rp}.attempts"),
                    retry.attempts,
                    ranges::RETRY_ATTEMPTS,
                );
                let mut codes = HashMap::new();
                for (c, code) in retry.codes.iter().enumerate() {
                    let p = format!("{rp}.codes[{c}]");
                    if !ranges::RETRY_CODE.contains(code) {
                        self.error(
                            p,
                            format!(
                                "{code} cannot be retried: use a status from {}",
                                ranges::RETRY_CODE
                            ),
                        );
                    } else {
                        self.once(&mut codes, *code, p, format!("status {code}"));
                    }
                }
                let mut grpc_codes = HashMap::new();
                for (c, code) in retry.grpc_codes.iter().enumerate() {
                    let p = format!("{rp}.grpcCodes[{c}]");
                    // As written: the camelCase name serde gives it.
                    let name = serde_json::to_value(code).unwrap_or_default();
                    self.once(&mut grpc_codes, *code, p, format!("gRPC code {name}"));
                }
                if let Some(backoff) = retry.backoff {
                    self.duration_in(format!("{rp}.backoff"), backoff, ranges::RETRY_BACKOFF);
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
                    if let Some(port) = r.port {
                        self.in_range(format!("{rp}.port"), port, ranges::PORT);
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
                    self.in_range(format!("{mp}.percent"), m.percent, ranges::PERCENT);
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
        let mut removed = HashMap::new();
        for (i, name) in m.remove.iter().enumerate() {
            let p = format!("{path}.remove[{i}]");
            if let Err(why) = header_name(name) {
                self.error(p, why);
            } else {
                let what = format!("header {name:?}");
                self.once(&mut removed, name.to_ascii_lowercase(), p, what);
            }
        }
    }

    /// `scope` is `None` where refs may carry no filters (tcp ports).
    fn backend_refs(&mut self, path: &str, refs: &[BackendRef], scope: Option<FilterScope>) {
        let mut total: u64 = 0;
        for (i, r) in refs.iter().enumerate() {
            let p = format!("{path}[{i}]");
            self.backend_name(&format!("{p}.name"), &r.name);
            self.in_range(format!("{p}.weight"), r.weight, ranges::BACKEND_WEIGHT);
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
        let mut seen = HashMap::new();
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
            } else {
                let what = format!("endpoint {} (add the weights instead)", e.address);
                self.once(&mut seen, e.address, format!("{p}.address"), what);
            }
            self.in_range(format!("{p}.weight"), e.weight, ranges::ENDPOINT_WEIGHT);
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
            if let Some(port) = hc.port {
                self.in_range(format!("{p}.port"), port, ranges::PORT);
            }
            self.duration_in(
                format!("{p}.interval"),
                hc.interval,
                ranges::HEALTH_INTERVAL,
            );
            self.duration_in(format!("{p}.timeout"), hc.timeout, ranges::HEALTH_TIMEOUT);
            if hc.timeout > hc.interval {
                self.error(format!("{p}.timeout"), "must not be longer than interval");
            }
            for (field, value) in [
                ("healthyThreshold", hc.healthy_threshold),
                ("unhealthyThreshold", hc.unhealthy_threshold),
            ] {
                self.in_range(format!("{p}.{field}"), value, ranges::HEALTH_THRESHOLD);
            }
        }
        let od = &backend.outlier_detection;
        let p = format!("{path}.outlierDetection");
        for (field, value) in [
            ("consecutive5xx", od.consecutive_5xx),
            (
                "consecutiveGatewayFailures",
                od.consecutive_gateway_failures,
            ),
            (
                "consecutiveConnectFailures",
                od.consecutive_connect_failures,
            ),
        ] {
            self.in_range(format!("{p}.{field}"), value, ranges::OUTLIER_CONSECUTIVE);
        }
        self.duration_in(
            format!("{p}.interval"),
            od.interval,
            ranges::OUTLIER_INTERVAL,
        );
        self.duration_in(
            format!("{p}.baseEjectionTime"),
            od.base_ejection_time,
            ranges::BASE_EJECTION_TIME,
        );
        self.in_range(
            format!("{p}.maxEjectionPercent"),
            od.max_ejection_percent,
            ranges::PERCENT,
        );
        let cb = &backend.circuit_breaker;
        for (field, value) in [
            ("maxConnections", cb.max_connections),
            ("maxPendingRequests", cb.max_pending_requests),
            ("maxRequests", cb.max_requests),
        ] {
            self.in_range(
                format!("{path}.circuitBreaker.{field}"),
                value,
                ranges::CIRCUIT_BREAKER,
            );
        }
        self.duration_in(
            format!("{path}.connectTimeout"),
            backend.connect_timeout,
            ranges::CONNECT_TIMEOUT,
        );
        self.duration_in(
            format!("{path}.idleTimeout"),
            backend.idle_timeout,
            ranges::IDLE_TIMEOUT,
        );
        let budget = &backend.retry_budget;
        let p = format!("{path}.retryBudget");
        self.in_range(format!("{p}.ratio"), budget.ratio, ranges::RETRY_RATIO);
        self.in_range(
            format!("{p}.minRetriesPerSecond"),
            budget.min_retries_per_second,
            ranges::MIN_RETRIES_PER_SECOND,
        );
        self.duration_in(format!("{p}.ttl"), budget.ttl, ranges::RETRY_BUDGET_TTL);
    }

    fn inbound(&mut self, config: &MeshConfig) {
        let mut seen = HashMap::new();
        let mut names = HashMap::new();
        for (i, port) in config.inbound.ports.iter().enumerate() {
            let p = format!("inbound.ports[{i}]");
            if !ranges::PORT.contains(&port.port) {
                self.in_range(format!("{p}.port"), port.port, ranges::PORT);
            } else {
                let what = format!("port {}", port.port);
                self.once(&mut seen, port.port, format!("{p}.port"), what);
            }
            if let Some(name) = &port.name {
                let what = format!("port name {name:?}");
                self.once(&mut names, name, format!("{p}.name"), what);
            }
        }
        self.authorization(&config.inbound.authorization);
    }

    fn authorization(&mut self, authz: &Authorization) {
        let mut names = HashMap::new();
        for (i, policy) in authz.policies.iter().enumerate() {
            let p = format!("inbound.authorization.policies[{i}]");
            if policy.name.is_empty() {
                self.error(format!("{p}.name"), "must not be empty: name the policy");
            } else {
                let what = format!("policy name {:?}", policy.name);
                self.once(&mut names, &policy.name, format!("{p}.name"), what);
            }
            if policy.rules.is_empty() {
                self.error(
                    format!("{p}.rules"),
                    "must have at least one rule (a rule with no conditions matches everything)",
                );
            }
            for (j, rule) in policy.rules.iter().enumerate() {
                let r = format!("{p}.rules[{j}]");
                for (k, id) in rule.identities.iter().enumerate() {
                    if let Err(why) = identity_pattern(id) {
                        self.error(format!("{r}.identities[{k}]"), why);
                    }
                }
                for (k, port) in rule.ports.iter().enumerate() {
                    self.in_range(format!("{r}.ports[{k}]"), *port, ranges::PORT);
                }
                for (k, path) in rule.paths.iter().enumerate() {
                    if let Err(why) = http_path(path) {
                        self.error(format!("{r}.paths[{k}]"), why);
                    }
                }
            }
        }
    }

    fn http(&mut self, config: &MeshConfig) {
        let http = &config.http;
        self.in_range(
            "http.maxHeaderBytes",
            http.max_header_bytes,
            ranges::MAX_HEADER_BYTES,
        );
        self.in_range("http.maxHeaders", http.max_headers, ranges::MAX_HEADERS);
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

    fn in_range<T: PartialOrd + Display>(&mut self, path: impl Display, value: T, range: Range<T>) {
        if !range.contains(&value) {
            self.error(path, format!("must be {range}, not {value}"));
        }
    }

    fn duration_in(&mut self, path: impl Display, d: Duration, range: Range<Duration>) {
        if !range.contains(&d) {
            self.error(
                path,
                format!(
                    "must be {} to {}, not {}",
                    format_duration(range.min),
                    format_duration(range.max),
                    format_duration(d)
                ),
            );
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

/// An authorization identity: `*`, an exact SPIFFE id, or a namespace
/// wildcard `spiffe://<td>/ns/<namespace>/*`.
fn identity_pattern(id: &str) -> Result<(), String> {
    if id == "*" {
        return Ok(());
    }
    match id.strip_suffix("/*") {
        Some(prefix) => {
            let namespace = prefix
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(domain, path)| {
                    (!domain.is_empty()).then_some(path)?.strip_prefix("ns/")
                });
            match namespace {
                Some(ns) if !ns.is_empty() && !ns.contains('/') => spiffe_id(prefix),
                _ => Err(format!(
                    "{id:?}: a wildcard is spiffe://<trust-domain>/ns/<namespace>/* (a whole namespace) or *"
                )),
            }
        }
        None if id.contains('*') => Err(format!(
            "{id:?}: `*` stands alone or as the last segment of spiffe://<trust-domain>/ns/<namespace>/*"
        )),
        None => spiffe_id(id),
    }
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
                "must be 1 to 1000000, not 0",
            ),
            (
                with("}] }", "}], connectTimeout: 0s }"),
                "backends.web.connectTimeout".into(),
                "must be 1ms to 5m, not 0s",
            ),
            (
                with("}] }", "}], retryBudget: { ratio: -0.5 } }"),
                "backends.web.retryBudget.ratio".into(),
                "must be 0 to 1000, not -0.5",
            ),
            (
                format!("{BASE}inbound: {{ ports: [{{ port: 8080 }}, {{ port: 8080 }}] }}\n"),
                "inbound.ports[1].port".into(),
                "listed twice",
            ),
            (
                format!("{BASE}http: {{ maxHeaderBytes: 10 }}\n"),
                "http.maxHeaderBytes".into(),
                "must be 1024 to 1048576, not 10",
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

    /// A template with `{}` for the value, the field's path, values
    /// accepted, and values refused with the message.
    type RangeCase<'a> = (String, String, &'a [&'a str], &'a [(&'a str, &'a str)]);

    /// Every number and duration of the model: both ends of its range are
    /// accepted, and a step past either end is refused with the range and
    /// the value.
    #[test]
    fn every_number_has_a_range() {
        let service_port = with("        - port: 80\n", "        - port: {}\n");
        let endpoint = |field: &str| {
            with(
                "\"10.0.0.1:80\" }",
                &format!("\"10.0.0.1:80\", {field}: {{}} }}"),
            )
        };
        let backend = |field: &str| with("}] }", &format!("}}], {field} }}"));
        let top = |field: &str| format!("{BASE}{field}\n");
        let b = "backends.web";
        #[rustfmt::skip]
        let cases: Vec<RangeCase<'_>> = vec![
            (service_port, "outbound.services[0].ports[0].port".into(),
             &["1", "65535"], &[("0", "must be 1 to 65535, not 0")]),
            (top("inbound: { ports: [{ port: {} }] }"), "inbound.ports[0].port".into(),
             &["1", "65535"], &[("0", "must be 1 to 65535, not 0")]),
            (top("http: { maxHeaderBytes: {} }"), "http.maxHeaderBytes".into(),
             &["1024", "1048576"],
             &[("1023", "must be 1024 to 1048576, not 1023"), ("1048577", "must be 1024 to 1048576, not 1048577")]),
            (top("http: { maxHeaders: {} }"), "http.maxHeaders".into(),
             &["1", "1000"],
             &[("0", "must be 1 to 1000, not 0"), ("1001", "must be 1 to 1000, not 1001"),
               ("4294967295", "must be 1 to 1000, not 4294967295")]),
            (endpoint("weight"), format!("{b}.endpoints[0].weight"),
             &["1", "1000000"],
             &[("0", "must be 1 to 1000000, not 0"), ("1000001", "must be 1 to 1000000, not 1000001")]),
            (route("            - backendRefs: [{ name: web, weight: {} }, { name: web-v2 }]\n"),
             format!("{ROUTE}.backendRefs[0].weight"),
             &["0", "1000000"], &[("1000001", "must be 0 to 1000000, not 1000001")]),
            (route("            - filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: web }, percent: {} } }]\n"),
             format!("{ROUTE}.filters[0].requestMirror.percent"),
             &["0", "100"], &[("101", "must be 0 to 100, not 101"), ("255", "must be 0 to 100, not 255")]),
            (route("            - filters: [{ type: RequestRedirect, requestRedirect: { port: {} } }]\n"),
             format!("{ROUTE}.filters[0].requestRedirect.port"),
             &["1", "65535"], &[("0", "must be 1 to 65535, not 0")]),
            (route("            - retry: { attempts: {} }\n"), format!("{ROUTE}.retry.attempts"),
             &["0", "10"],
             &[("11", "must be 0 to 10, not 11"), ("4294967295", "must be 0 to 10, not 4294967295")]),
            (route("            - retry: { backoff: {} }\n"), format!("{ROUTE}.retry.backoff"),
             &["1ms", "1m"],
             &[("0s", "must be 1ms to 1m, not 0s"), ("1m1ms", "must be 1ms to 1m, not 1m1ms")]),
            (backend("healthCheck: { interval: {}, timeout: 1ms }"), format!("{b}.healthCheck.interval"),
             &["100ms", "1h"],
             &[("99ms", "must be 100ms to 1h, not 99ms"), ("1h1ms", "must be 100ms to 1h, not 1h1ms")]),
            (backend("healthCheck: { interval: 1h, timeout: {} }"), format!("{b}.healthCheck.timeout"),
             &["1ms", "1h"], &[("0s", "must be 1ms to 1h, not 0s")]),
            (backend("healthCheck: { healthyThreshold: {} }"), format!("{b}.healthCheck.healthyThreshold"),
             &["1", "1000"],
             &[("0", "must be 1 to 1000, not 0"), ("1001", "must be 1 to 1000, not 1001")]),
            (backend("healthCheck: { unhealthyThreshold: {} }"), format!("{b}.healthCheck.unhealthyThreshold"),
             &["1", "1000"],
             &[("0", "must be 1 to 1000, not 0"), ("1001", "must be 1 to 1000, not 1001")]),
            (backend("outlierDetection: { consecutive5xx: {} }"), format!("{b}.outlierDetection.consecutive5xx"),
             &["0", "1000"], &[("1001", "must be 0 to 1000, not 1001")]),
            (backend("outlierDetection: { consecutiveGatewayFailures: {} }"),
             format!("{b}.outlierDetection.consecutiveGatewayFailures"),
             &["0", "1000"], &[("1001", "must be 0 to 1000, not 1001")]),
            (backend("outlierDetection: { consecutiveConnectFailures: {} }"),
             format!("{b}.outlierDetection.consecutiveConnectFailures"),
             &["0", "1000"], &[("1001", "must be 0 to 1000, not 1001")]),
            (backend("outlierDetection: { interval: {} }"), format!("{b}.outlierDetection.interval"),
             &["100ms", "1h"],
             &[("99ms", "must be 100ms to 1h, not 99ms"), ("1h1ms", "must be 100ms to 1h, not 1h1ms")]),
            (backend("outlierDetection: { baseEjectionTime: {} }"), format!("{b}.outlierDetection.baseEjectionTime"),
             &["1ms", "1h"],
             &[("0s", "must be 1ms to 1h, not 0s"), ("99999h", "must be 1ms to 1h, not 99999h")]),
            (backend("outlierDetection: { maxEjectionPercent: {} }"), format!("{b}.outlierDetection.maxEjectionPercent"),
             &["0", "100"], &[("101", "must be 0 to 100, not 101")]),
            (backend("circuitBreaker: { maxConnections: {} }"), format!("{b}.circuitBreaker.maxConnections"),
             &["1", "1000000"],
             &[("0", "must be 1 to 1000000, not 0"), ("1000001", "must be 1 to 1000000, not 1000001")]),
            (backend("circuitBreaker: { maxPendingRequests: {} }"), format!("{b}.circuitBreaker.maxPendingRequests"),
             &["1", "1000000"],
             &[("0", "must be 1 to 1000000, not 0"), ("4294967295", "must be 1 to 1000000, not 4294967295")]),
            (backend("circuitBreaker: { maxRequests: {} }"), format!("{b}.circuitBreaker.maxRequests"),
             &["1", "1000000"], &[("0", "must be 1 to 1000000, not 0")]),
            (backend("connectTimeout: {}"), format!("{b}.connectTimeout"),
             &["1ms", "5m"], &[("0s", "must be 1ms to 5m, not 0s"), ("5m1ms", "must be 1ms to 5m, not 5m1ms")]),
            (backend("idleTimeout: {}"), format!("{b}.idleTimeout"),
             &["1ms", "24h"], &[("0s", "must be 1ms to 24h, not 0s"), ("24h1ms", "must be 1ms to 24h, not 24h1ms")]),
            (backend("retryBudget: { ratio: {} }"), format!("{b}.retryBudget.ratio"),
             &["0", "0.2", "1000"],
             &[("-0.1", "must be 0 to 1000, not -0.1"), ("1000.5", "must be 0 to 1000, not 1000.5"),
               (".nan", "must be 0 to 1000, not NaN"), (".inf", "must be 0 to 1000, not inf")]),
            (backend("retryBudget: { minRetriesPerSecond: {} }"), format!("{b}.retryBudget.minRetriesPerSecond"),
             &["0", "100000"], &[("100001", "must be 0 to 100000, not 100001")]),
            (backend("retryBudget: { ttl: {} }"), format!("{b}.retryBudget.ttl"),
             &["1s", "1h"], &[("999ms", "must be 1s to 1h, not 999ms"), ("1h1ms", "must be 1s to 1h, not 1h1ms")]),
        ];
        for (template, path, accepted, refused) in cases {
            assert!(template.contains("{}"), "{template}");
            for value in accepted {
                let yaml = template.replace("{}", value);
                assert_eq!(
                    check(&yaml),
                    Vec::<String>::new(),
                    "{path} = {value}\n{yaml}"
                );
            }
            for (value, message) in refused {
                let yaml = template.replace("{}", value);
                assert_eq!(check(&yaml), [format!("{path}: {message}")], "{yaml}");
            }
        }
    }

    /// Gateway API: `0s` turns a timeout off, and a per-try timeout may
    /// not outlast the whole request unless one of them is off.
    #[test]
    fn zero_timeouts_are_off_and_accepted() {
        for timeouts in [
            "{ request: 0s }",
            "{ backendRequest: 0s }",
            "{ request: 0s, backendRequest: 0s }",
            "{ request: 10s, backendRequest: 0s }",
            "{ request: 0s, backendRequest: 10s }",
            "{ request: 10s, backendRequest: 10s }",
            "{ request: 99999h59m59s999ms }",
        ] {
            let yaml = route(&format!(
                "            - timeouts: {timeouts}\n              backendRefs: [{{ name: web }}]\n"
            ));
            assert_eq!(check(&yaml), Vec::<String>::new(), "{timeouts}");
        }
        let yaml = route("            - timeouts: { request: 1s, backendRequest: 1s1ms }\n");
        assert_eq!(
            check(&yaml),
            [format!(
                "{ROUTE}.timeouts.backendRequest: must not be longer than timeouts.request"
            )]
        );
    }

    /// Names and numbers that identify something are given once: a second
    /// one is an error at the second, naming the first, never last-one-wins.
    #[test]
    fn authorization_rules_are_checked() {
        let authz = |policies: &str| {
            format!("{BASE}inbound:\n  mode: strict\n  ports: [{{ port: 8080, mode: permissive }}]\n  authorization:\n    defaultAction: deny\n    policies: {policies}\n")
        };
        let good = authz(
            "[{ name: a, action: allow, rules: [{ identities: ['spiffe://cluster.local/ns/web/sa/client', 'spiffe://cluster.local/ns/ops/*', '*'], ports: [8080], paths: [/admin], methods: [GET] }] }]",
        );
        assert_eq!(check(&good), Vec::<String>::new());
        let config = MeshConfig::from_yaml(&good).expect("valid");
        assert_eq!(
            config.inbound.mode_for(8080),
            crate::InboundMode::Permissive
        );
        assert_eq!(config.inbound.mode_for(9090), crate::InboundMode::Strict);
        let p = "inbound.authorization.policies";
        let cases = [
            ("[{ name: a, action: allow, rules: [] }]".to_owned(), format!("{p}[0].rules: must have at least one rule")),
            ("[{ name: '', action: deny, rules: [{}] }]".to_owned(), format!("{p}[0].name: must not be empty")),
            ("[{ name: a, action: deny, rules: [{}] }, { name: a, action: allow, rules: [{}] }]".to_owned(),
                format!("{p}[1].name: policy name \"a\" is listed twice")),
            ("[{ name: a, action: allow, rules: [{ identities: ['spiffe://cluster.local/ns/*/sa/x'] }] }]".to_owned(),
                format!("{p}[0].rules[0].identities[0]: \"spiffe://cluster.local/ns/*/sa/x\": `*` stands alone")),
            ("[{ name: a, action: allow, rules: [{ identities: ['spiffe://cluster.local/sa/*'] }] }]".to_owned(),
                format!("{p}[0].rules[0].identities[0]: \"spiffe://cluster.local/sa/*\": a wildcard is")),
            ("[{ name: a, action: allow, rules: [{ identities: [web] }] }]".to_owned(),
                format!("{p}[0].rules[0].identities[0]: \"web\" is not a SPIFFE id")),
            ("[{ name: a, action: allow, rules: [{ ports: [0] }] }]".to_owned(), format!("{p}[0].rules[0].ports[0]: ")),
            ("[{ name: a, action: allow, rules: [{ paths: [admin] }] }]".to_owned(), format!("{p}[0].rules[0].paths[0]: ")),
        ];
        for (policies, want) in cases {
            let errors = check(&authz(&policies));
            assert_eq!(errors.len(), 1, "{policies}: {errors:?}");
            assert!(
                errors[0].starts_with(&want),
                "{policies}: {} does not start with {want}",
                errors[0]
            );
        }
        let unknown = format!("{BASE}inbound: {{ authorization: {{ policies: [{{ name: a, action: maybe, rules: [{{}}] }}] }} }}\n");
        assert!(MeshConfig::from_yaml(&unknown).is_err());
    }

    #[test]
    fn every_name_once() {
        let s0 = "outbound.services[0]";
        let other_service =
            |body: &str| with("  services:\n", &format!("  services:\n    - {body}\n"));
        let cases: Vec<(String, String)> = vec![
            (
                other_service("{ name: web, addresses: [10.96.0.9], ports: [{ port: 80, backendRefs: [{ name: web }] }] }"),
                "outbound.services[1].name: service name \"web\" is listed twice, first at outbound.services[0].name".into(),
            ),
            (
                with("        - port: 80\n", "        - { port: 80, backendRefs: [{ name: web }] }\n        - port: 80\n"),
                format!("{s0}.ports[1].port: port 80 is listed twice, first at {s0}.ports[0].port"),
            ),
            (
                with("        - port: 80\n", "        - { port: 81, name: http, backendRefs: [{ name: web }] }\n        - port: 80\n          name: http\n"),
                format!("{s0}.ports[1].name: port name \"http\" is listed twice, first at {s0}.ports[0].name"),
            ),
            (
                route("            - { name: a, backendRefs: [{ name: web }] }\n            - { name: a, backendRefs: [{ name: web-v2 }] }\n"),
                format!("{s0}.ports[0].routes[1].name: route name \"a\" is listed twice, first at {ROUTE}.name"),
            ),
            (
                with("      addresses: [10.96.0.1]", "      addresses: [10.96.0.1, 10.96.0.2, 10.96.0.1]"),
                format!("{s0}.addresses[2]: address 10.96.0.1 is listed twice, first at {s0}.addresses[0]"),
            ),
            (
                with("      hostnames: [web]", "      hostnames: [web, web.default, web]"),
                format!("{s0}.hostnames[2]: host name \"web\" is listed twice, first at {s0}.hostnames[0]"),
            ),
            (
                with("\"10.0.0.1:80\" }", "\"10.0.0.1:80\" }, { address: \"10.0.0.1:80\", weight: 2 }"),
                "backends.web.endpoints[1].address: endpoint 10.0.0.1:80 (add the weights instead) is listed twice, first at backends.web.endpoints[0].address".into(),
            ),
            (
                format!("{BASE}inbound: {{ ports: [{{ port: 8080 }}, {{ port: 9090 }}, {{ port: 8080 }}] }}\n"),
                "inbound.ports[2].port: port 8080 is listed twice, first at inbound.ports[0].port".into(),
            ),
            (
                format!("{BASE}inbound: {{ ports: [{{ port: 8080, name: http }}, {{ port: 9090, name: http }}] }}\n"),
                "inbound.ports[1].name: port name \"http\" is listed twice, first at inbound.ports[0].name".into(),
            ),
            (
                route("            - { retry: { codes: [502, 503, 502] }, backendRefs: [{ name: web }] }\n"),
                format!("{ROUTE}.retry.codes[2]: status 502 is listed twice, first at {ROUTE}.retry.codes[0]"),
            ),
            (
                route("            - { retry: { grpcCodes: [unavailable, unavailable] }, backendRefs: [{ name: web }] }\n"),
                format!("{ROUTE}.retry.grpcCodes[1]: gRPC code \"unavailable\" is listed twice, first at {ROUTE}.retry.grpcCodes[0]"),
            ),
            (
                route("            - { filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { remove: [x-a, X-A] } }], backendRefs: [{ name: web }] }\n"),
                format!("{ROUTE}.filters[0].requestHeaderModifier.remove[1]: header \"X-A\" is listed twice, first at {ROUTE}.filters[0].requestHeaderModifier.remove[0]"),
            ),
        ];
        for (yaml, error) in cases {
            assert_eq!(check(&yaml), [error], "{yaml}");
        }
        // Each is per scope: one route name on two ports, one port number in
        // two services, one port name inbound and outbound are all fine.
        let yaml = with(
            "  services:\n",
            "  services:\n    - { name: other, addresses: [10.96.0.9], ports: [{ port: 80, name: http, routes: [{ name: a, backendRefs: [{ name: web }] }] }] }\n",
        )
        .replace("            - matches:", "            - name: a\n              matches:");
        let yaml = format!("{yaml}inbound: {{ ports: [{{ port: 80, name: http }}] }}\n");
        assert_eq!(check(&yaml), Vec::<String>::new(), "{yaml}");
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
