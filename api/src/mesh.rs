//! The top of the model: [`MeshConfig`] and its outbound, inbound and
//! proxy-wide HTTP parts, plus the entry points that load it.
//!
//! This module owns what one proxy is told as a whole and the entry points
//! that turn text into a checked config. Routes are in `route`, backends in
//! `backend`, parsing within limits in `parse`, the checks in `validate`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::authz::Authorization;
use crate::backend::Backend;
use crate::duration::{serde_duration, GatewayDuration};
use crate::error::{ConfigError, ValidationError};
use crate::parse::ParseLimits;
use crate::ranges;
use crate::route::{BackendRef, Route};

/// Everything one proxy needs to know. The proxy swaps it in whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    /// Opaque version, echoed in acknowledgements and `/config_dump`.
    pub version: String,
    #[serde(default)]
    pub outbound: OutboundConfig,
    #[serde(default)]
    pub inbound: InboundConfig,
    /// Backends by name; routes refer to them with `backendRefs[].name`.
    /// Each name once.
    #[serde(default, deserialize_with = "crate::parse::unique_keys")]
    pub backends: BTreeMap<String, Backend>,
    #[serde(default)]
    pub http: HttpSettings,
}

impl MeshConfig {
    /// Parses a config, JSON if its first character that is not whitespace
    /// is `{` and YAML otherwise, within `limits`, and validates it.
    ///
    /// This is the entry point for text from outside the process (a file,
    /// the control plane): its cost is bounded by `limits`, a config past a
    /// limit gets [`ConfigError::Limit`] naming it, and every other error
    /// names the offending field. A key given twice in one map (two
    /// backends with one name) is an error. It does no I/O and takes no
    /// locks, so it can run on any thread.
    pub fn parse(bytes: &[u8], limits: &ParseLimits) -> Result<Self, ConfigError> {
        crate::parse::parse(bytes, limits)
    }

    /// Parses YAML within the default [`ParseLimits`] and validates it.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_slice(text.as_bytes())
    }

    /// [`MeshConfig::from_yaml`] for bytes.
    pub fn from_yaml_slice(bytes: &[u8]) -> Result<Self, ConfigError> {
        let limits = ParseLimits::DEFAULT;
        crate::parse::check_size(bytes, &limits)?;
        let config = crate::parse::yaml(bytes, &limits)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses JSON within the default [`ParseLimits`] and validates it.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::from_json_slice(text.as_bytes())
    }

    /// [`MeshConfig::from_json`] for bytes, e.g. a config received over gRPC.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, ConfigError> {
        let limits = ParseLimits::DEFAULT;
        crate::parse::check_size(bytes, &limits)?;
        let config = crate::parse::json(bytes, &limits)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot: references, ranges, regexes, uniqueness.
    /// Reports every problem found, each with its path.
    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::validate::validate(self)
    }

    /// The backend named by a `backendRefs[].name`.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.get(name)
    }
}

/// Where the app's outgoing connections may go.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundConfig {
    /// Destinations not listed pass through to their original address.
    #[serde(default)]
    pub services: Vec<Service>,
}

/// A virtual destination: a Kubernetes Service as the app addresses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// For metrics and logs, e.g. `reviews.default`.
    pub name: String,
    /// Virtual IPs (cluster IPs) matched against the original destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub addresses: Vec<IpAddr>,
    /// Host names matched against HTTP `Host`/`:authority` (port stripped),
    /// case-insensitively, e.g. `reviews.default.svc.cluster.local`, `reviews`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    pub ports: Vec<ServicePort>,
}

/// One port of a service, with its protocol and routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// The port the app connects to, 1 to 65535.
    #[schemars(range(min = ranges::PORT.min, max = ranges::PORT.max))]
    pub port: u16,
    /// For metrics, e.g. `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// HTTP and gRPC ports only. Requests that no route matches get 404.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Where traffic goes when the port has no routes: every connection on a
    /// `tcp` port, every request on an HTTP port without routes. Empty on an
    /// `opaque` port: forward to the original destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
}

/// What a port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Protocol {
    /// Detect HTTP/1 or HTTP/2 from the first bytes; opaque TCP if neither.
    #[default]
    Http,
    /// HTTP/2 with prior knowledge; no detection.
    Http2,
    /// gRPC over HTTP/2; no detection. Routes may match `grpcMethod`.
    Grpc,
    /// TCP, balanced over `backendRefs`; no detection.
    Tcp,
    /// Bytes passed through untouched, no detection. For protocols where the
    /// server speaks first (MySQL, SMTP), which detection would stall.
    Opaque,
}

impl Protocol {
    /// Whether the proxy routes requests (true) or connections (false).
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc)
    }
}

/// Traffic arriving for the app.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundConfig {
    #[serde(default)]
    pub mode: InboundMode,
    /// The protocol of ports not listed in `ports`.
    #[serde(default)]
    pub default_protocol: Protocol,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<InboundPort>,
    /// Who may call this workload.
    #[serde(default)]
    pub authorization: Authorization,
}

impl InboundConfig {
    /// The mTLS mode of an app port: the port's own, else the workload's.
    pub fn mode_for(&self, port: u16) -> InboundMode {
        self.ports
            .iter()
            .find(|p| p.port == port)
            .and_then(|p| p.mode)
            .unwrap_or(self.mode)
    }
}

/// Whether inbound plaintext is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum InboundMode {
    /// Mesh mTLS only; plaintext connections are refused.
    Strict,
    /// Mesh mTLS and plaintext, for migrations.
    #[default]
    Permissive,
}

/// One port the app listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundPort {
    /// 1 to 65535.
    #[schemars(range(min = ranges::PORT.min, max = ranges::PORT.max))]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// This port's mTLS mode, over `inbound.mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<InboundMode>,
}

/// HTTP settings for the whole proxy, inbound and outbound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    /// Largest request header block, 1024 to 1048576 bytes; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    #[schemars(range(min = ranges::MAX_HEADER_BYTES.min, max = ranges::MAX_HEADER_BYTES.max))]
    pub max_header_bytes: u32,
    /// Most header fields in a request, 1 to 1000; more gets 431.
    #[serde(default = "default_max_headers")]
    #[schemars(range(min = ranges::MAX_HEADERS.min, max = ranges::MAX_HEADERS.max))]
    pub max_headers: u32,
    #[serde(default)]
    pub x_forwarded_for: XForwardedFor,
    /// HTTP/1 protocol upgrades (`Upgrade` tokens) passed to the upstream,
    /// compared case-insensitively. `h2c` is never allowed: it would tunnel
    /// past routing. Others are dropped from the request.
    #[serde(default = "default_allowed_upgrades")]
    pub allowed_upgrades: Vec<String>,
    /// How request paths are normalised before routing and forwarding.
    #[serde(default)]
    pub path_normalization: PathNormalization,
    /// Time a client has to send a whole HTTP/1 request head, first byte
    /// included; past it the client gets 408.
    #[serde(default = "default_request_headers_timeout", with = "serde_duration")]
    #[schemars(with = "GatewayDuration")]
    pub request_headers_timeout: Duration,
    /// Longest pause allowed between two pieces of a request body; past
    /// it the upstream request is aborted and the client gets 408.
    #[serde(default = "default_request_body_idle_timeout", with = "serde_duration")]
    #[schemars(with = "GatewayDuration")]
    pub request_body_idle_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            x_forwarded_for: XForwardedFor::default(),
            allowed_upgrades: default_allowed_upgrades(),
            path_normalization: PathNormalization::default(),
            request_headers_timeout: default_request_headers_timeout(),
            request_body_idle_timeout: default_request_body_idle_timeout(),
        }
    }
}

fn default_max_header_bytes() -> u32 {
    64 * 1024
}

fn default_max_headers() -> u32 {
    100
}

fn default_allowed_upgrades() -> Vec<String> {
    vec!["websocket".to_owned()]
}

fn default_request_headers_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_request_body_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Path normalisation, as Istio's `pathNormalization`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathNormalization {
    #[serde(default)]
    pub mode: PathNormalizationMode,
    /// Also merge runs of `/` into one (`/a//b` becomes `/a/b`).
    #[serde(default)]
    pub merge_slashes: bool,
}

/// Whether request paths are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PathNormalizationMode {
    /// RFC 3986: dot-segments removed, percent-encoded unreserved
    /// characters decoded, other escapes' hex uppercased.
    #[default]
    Default,
    /// Paths are matched and forwarded as the client sent them.
    None,
}

/// What the proxy does with `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum XForwardedFor {
    /// Append the downstream peer's address.
    #[default]
    Append,
    /// Leave the header as it came.
    None,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::{HashOn, LoadBalancer};
    use crate::route::{PathModifier, RouteFilter};

    const EXAMPLE: &str = include_str!("../examples/mesh.yaml");
    const DOCS: &str = include_str!("../../docs/config.md");

    fn example() -> MeshConfig {
        MeshConfig::from_yaml(EXAMPLE).unwrap_or_else(|e| panic!("example: {e}"))
    }

    #[test]
    fn complete_example_parses_into_parsed_values() {
        let config = example();
        assert_eq!(config.version, "2024-06-01.1");
        assert_eq!(config.inbound.mode, InboundMode::Permissive);
        let reviews = &config.outbound.services[0];
        assert_eq!(reviews.addresses, ["10.96.0.20".parse::<IpAddr>().unwrap()]);
        let api = &reviews.ports[0].routes[2];
        assert_eq!(api.timeouts.request, Some(Duration::from_secs(10)));
        assert_eq!(api.timeouts.backend_request, Some(Duration::from_secs(2)));
        assert_eq!(api.backend_refs[0].weight, 90);
        assert!(matches!(api.filters[2], RouteFilter::RequestMirror(ref m) if m.percent == 10));
        let rewrite = &reviews.ports[0].routes[3].filters[0];
        assert!(matches!(
            rewrite,
            RouteFilter::UrlRewrite(r) if r.path == Some(PathModifier::ReplacePrefixMatch("/api/v1".into()))
        ));
        assert_eq!(
            config.outbound.services[2].ports[0].protocol,
            Protocol::Opaque
        );
        let ratings = &config.backends["ratings"];
        assert_eq!(
            ratings.load_balancer,
            LoadBalancer::ConsistentHash(HashOn::Header("x-user-id".into()))
        );
        assert_eq!(
            config.backends["redis"].load_balancer,
            LoadBalancer::ConsistentHash(HashOn::SourceIp)
        );
        let v1 = &config.backends["reviews-v1"];
        assert_eq!(v1.endpoints[1].address, "10.0.2.9:9080".parse().unwrap());
        assert_eq!(v1.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn docs_show_the_complete_example() {
        assert!(
            DOCS.contains(EXAMPLE),
            "docs/config.md must contain api/examples/mesh.yaml verbatim"
        );
    }

    #[test]
    fn minimal_config_is_tiny_and_gets_defaults() {
        let config = MeshConfig::from_yaml("version: v1").unwrap();
        assert!(config.outbound.services.is_empty());
        assert_eq!(config.inbound.mode, InboundMode::Permissive);
        assert_eq!(config.inbound.default_protocol, Protocol::Http);
        assert_eq!(config.http, HttpSettings::default());
        assert_eq!(config.http.x_forwarded_for, XForwardedFor::Append);

        let config = MeshConfig::from_yaml(
            "version: v1\n\
             backends: {web: {endpoints: [{address: '10.0.0.1:80'}]}}\n\
             outbound: {services: [{name: web, addresses: [10.96.0.1], ports: [{port: 80, backendRefs: [{name: web}]}]}]}",
        )
        .unwrap();
        let web = &config.backends["web"];
        assert_eq!(web.load_balancer, LoadBalancer::LeastRequest);
        assert_eq!(web.connect_timeout, Duration::from_secs(1));
        assert_eq!(web.endpoints[0].weight, 1);
        assert_eq!(
            config.outbound.services[0].ports[0].backend_refs[0].weight,
            1
        );
    }

    #[test]
    fn yaml_to_json_to_struct_round_trips() {
        let config = example();
        let json = serde_json::to_string_pretty(&config).unwrap();
        let again = MeshConfig::from_json(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert_eq!(config, again);
        // Gateway API's wire shapes survive the trip.
        assert!(json.contains(r#""type": "URLRewrite""#), "{json}");
        assert!(
            json.contains(r#""replacePrefixMatch": "/api/v1""#),
            "{json}"
        );
        assert!(json.contains(r#""backendRequest": "2s""#), "{json}");
    }

    #[test]
    fn json_rejects_trailing_garbage() {
        let err = MeshConfig::from_json(r#"{"version": "v1"} {}"#).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    /// Serde-level errors: the path and the message, per input.
    #[test]
    fn syntax_errors_name_their_path() {
        let cases = [
            (
                "version: v1\nbogus: 1",
                "bogus",
                "unknown field `bogus`",
            ),
            (
                "version: v1\noutbound: {services: [{name: a, addresses: [10.0.0.1], ports: [{port: 80, routes: [{matches: [{path: {typo: /}}]}]}]}]}",
                "outbound.services[0].ports[0].routes[0].matches[0].path.typo",
                "unknown field `typo`",
            ),
            (
                "version: v1\nbackends: {reviews-v2: {endpoints: [{address: '10.0.0.300:80'}]}}",
                "backends.reviews-v2.endpoints[0].address",
                "\"10.0.0.300:80\" is not a socket address",
            ),
            (
                "version: v1\nbackends: {b: {connectTimeout: 1.5s}}",
                "backends.b.connectTimeout",
                "\"1.5s\" is not a Gateway API duration",
            ),
            (
                "version: v1\nbackends: {b: {loadBalancer: random}}",
                "backends.b.loadBalancer",
                "unknown variant `random`",
            ),
            (
                "version: v1\nbackends: {b: {loadBalancer: consistentHash}}",
                "backends.b.loadBalancer",
                "consistentHash needs what to hash",
            ),
            (
                "version: v1\noutbound: {services: [{name: a, hostnames: [a], ports: [{port: 70000}]}]}",
                "outbound.services[0].ports[0].port",
                "invalid value",
            ),
            (
                "version: v1\noutbound: {services: [{name: a, hostnames: [a], ports: [{port: 80, protocol: udp}]}]}",
                "outbound.services[0].ports[0].protocol",
                "unknown variant `udp`",
            ),
            (
                "version: v1\noutbound: {services: [{name: a, hostnames: [a], ports: [{port: 80, routes: [{filters: [{type: URLRewrite, requestRedirect: {}}]}]}]}]}",
                "outbound.services[0].ports[0].routes[0].filters[0]",
                "filter type URLRewrite takes urlRewrite, not requestRedirect",
            ),
            (
                "version: v1\noutbound: {services: [{name: a, hostnames: [a], ports: [{port: 80, routes: [{filters: [{type: RequestMirror}]}]}]}]}",
                "outbound.services[0].ports[0].routes[0].filters[0]",
                "takes requestMirror, which is missing",
            ),
            (
                "version: v1\noutbound: {services: [{name: a, hostnames: [a], ports: [{port: 80, routes: [{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replacePrefixMatch: /}}}]}]}]}]}",
                "outbound.services[0].ports[0].routes[0].filters[0].urlRewrite.path",
                "takes exactly the field replaceFullPath",
            ),
            ("outbound: {}", ".", "missing field `version`"),
        ];
        for (yaml, path, message) in cases {
            let err = MeshConfig::from_yaml(yaml).unwrap_err();
            let ConfigError::Syntax {
                path: got,
                message: text,
            } = &err
            else {
                panic!("{yaml}: expected a syntax error, got {err}");
            };
            assert_eq!(got, path, "{yaml}: {err}");
            assert!(text.contains(message), "{yaml}: {err}");
            // JSON reports the same path.
            let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
            let err = MeshConfig::from_json(&value.to_string()).unwrap_err();
            assert_eq!(err.path(), path, "{yaml} as JSON: {err}");
        }
    }
}
