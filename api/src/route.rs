//! Routes: Gateway API `HTTPRoute`/`GRPCRoute` rules as one proxy sees them.
//!
//! A [`Route`] is one rule of an `HTTPRoute` or `GRPCRoute` attached to a
//! service port (GAMMA): matches, filters, weighted backend references,
//! timeouts and retries. Field names are Gateway API's wherever the meaning is
//! the same, so a rule can be copied from a route object. The wire shape of a
//! filter (`type` plus a field of the same name) is Gateway API's too; in Rust
//! it is an enum, so the proxy never meets a filter without its settings.
//!
//! This module owns the shapes. Checks live in `validate`, and choosing a
//! route for a request is the proxy's job (see docs/config.md for precedence).

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::{serde_opt_duration, GatewayDuration};
use crate::ranges;

/// One routing rule. The first route in precedence order whose `matches`
/// accept the request wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// A name for metrics and logs, e.g. `reviews-canary`; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one match accepts the request. Empty matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Applied in order before the request is sent to a backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    /// Where matching requests go, split by weight. Empty (and no redirect)
    /// answers 500, as Gateway API says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default, skip_serializing_if = "Timeouts::is_unset")]
    pub timeouts: Timeouts,
    /// No retry block, no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// APISIX plugins by name; for the same plugin this config wins over the
    /// service's (or inbound port's).
    #[serde(
        default,
        skip_serializing_if = "std::collections::BTreeMap::is_empty",
        deserialize_with = "crate::parse::unique_keys"
    )]
    pub plugins: crate::plugin::Plugins,
}

/// `HTTPRouteMatch`, with `grpcMethod` for `GRPCRouteMatch.method`. Every
/// condition that is set must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
    /// gRPC service and method; exclusive with `path`, which it implies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_method: Option<GrpcMethodMatch>,
}

/// `HTTPPathMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(default, rename = "type")]
    pub kind: PathMatchType,
    #[serde(default = "root_path")]
    pub value: String,
}

fn root_path() -> String {
    "/".to_owned()
}

/// How a path is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    /// Whole path, case-sensitive.
    Exact,
    /// Element-wise prefix: `/foo` matches `/foo`, `/foo/` and `/foo/bar`,
    /// not `/foobar`. A trailing `/` in the value is ignored.
    #[default]
    PathPrefix,
    /// A regex (Rust `regex` syntax) that must match the whole path.
    RegularExpression,
}

/// Exact or regular-expression match, for headers, query parameters and gRPC
/// methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum MatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// `HTTPHeaderMatch`. Header names compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    #[serde(default, rename = "type")]
    pub kind: MatchType,
    pub name: String,
    pub value: String,
}

/// `HTTPQueryParamMatch`. Names compare case-sensitively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryParamMatch {
    #[serde(default, rename = "type")]
    pub kind: MatchType,
    pub name: String,
    pub value: String,
}

/// `GRPCMethodMatch`: matches the `/<service>/<method>` request path. An
/// unset part matches anything; at least one must be set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    #[serde(default, rename = "type")]
    pub kind: MatchType,
    /// Fully qualified service, e.g. `reviews.v1.Reviews`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// The HTTP methods Gateway API can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl HttpMethod {
    /// The method as it appears on the wire, e.g. `"GET"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
        }
    }
}

/// `HTTPRouteFilter`. On the wire: `{type: URLRewrite, urlRewrite: {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawFilter", into = "RawFilter")]
pub enum RouteFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(RequestRedirect),
    UrlRewrite(UrlRewrite),
    RequestMirror(RequestMirror),
}

impl RouteFilter {
    /// The Gateway API name of the filter type, e.g. `"URLRewrite"`.
    pub fn type_name(&self) -> &'static str {
        self.kind().as_str()
    }

    fn kind(&self) -> FilterType {
        match self {
            Self::RequestHeaderModifier(_) => FilterType::RequestHeaderModifier,
            Self::ResponseHeaderModifier(_) => FilterType::ResponseHeaderModifier,
            Self::RequestRedirect(_) => FilterType::RequestRedirect,
            Self::UrlRewrite(_) => FilterType::UrlRewrite,
            Self::RequestMirror(_) => FilterType::RequestMirror,
        }
    }
}

impl JsonSchema for RouteFilter {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        RawFilter::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        RawFilter::json_schema(generator)
    }
}

/// The filter types Remora implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    RequestMirror,
}

impl FilterType {
    fn as_str(self) -> &'static str {
        match self {
            Self::RequestHeaderModifier => "RequestHeaderModifier",
            Self::ResponseHeaderModifier => "ResponseHeaderModifier",
            Self::RequestRedirect => "RequestRedirect",
            Self::UrlRewrite => "URLRewrite",
            Self::RequestMirror => "RequestMirror",
        }
    }
}

/// The Gateway API wire shape of a filter: a `type` and the settings field
/// that the type names.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "RouteFilter")]
struct RawFilter {
    #[serde(rename = "type")]
    kind: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_redirect: Option<RequestRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_mirror: Option<RequestMirror>,
}

/// A settings field that does not belong to the filter's `type`.
#[derive(Debug, thiserror::Error)]
#[error("filter type {kind} takes {wanted}{extra}")]
pub(crate) struct FilterShapeError {
    kind: &'static str,
    wanted: &'static str,
    extra: String,
}

impl TryFrom<RawFilter> for RouteFilter {
    type Error = FilterShapeError;

    fn try_from(raw: RawFilter) -> Result<Self, Self::Error> {
        let RawFilter {
            kind,
            request_header_modifier,
            response_header_modifier,
            request_redirect,
            url_rewrite,
            request_mirror,
        } = raw;
        let present = [
            ("requestHeaderModifier", request_header_modifier.is_some()),
            ("responseHeaderModifier", response_header_modifier.is_some()),
            ("requestRedirect", request_redirect.is_some()),
            ("urlRewrite", url_rewrite.is_some()),
            ("requestMirror", request_mirror.is_some()),
        ];
        let wanted = match kind {
            FilterType::RequestHeaderModifier => "requestHeaderModifier",
            FilterType::ResponseHeaderModifier => "responseHeaderModifier",
            FilterType::RequestRedirect => "requestRedirect",
            FilterType::UrlRewrite => "urlRewrite",
            FilterType::RequestMirror => "requestMirror",
        };
        let stray: Vec<&str> = present
            .iter()
            .filter(|(name, set)| *set && *name != wanted)
            .map(|(name, _)| *name)
            .collect();
        let error = |extra: String| FilterShapeError {
            kind: kind.as_str(),
            wanted,
            extra,
        };
        if !stray.is_empty() {
            return Err(error(format!(", not {}", stray.join(", "))));
        }
        let missing = || error(", which is missing".to_owned());
        Ok(match kind {
            FilterType::RequestHeaderModifier => {
                Self::RequestHeaderModifier(request_header_modifier.ok_or_else(missing)?)
            }
            FilterType::ResponseHeaderModifier => {
                Self::ResponseHeaderModifier(response_header_modifier.ok_or_else(missing)?)
            }
            FilterType::RequestRedirect => {
                Self::RequestRedirect(request_redirect.ok_or_else(missing)?)
            }
            FilterType::UrlRewrite => Self::UrlRewrite(url_rewrite.ok_or_else(missing)?),
            FilterType::RequestMirror => Self::RequestMirror(request_mirror.ok_or_else(missing)?),
        })
    }
}

impl From<RouteFilter> for RawFilter {
    fn from(filter: RouteFilter) -> Self {
        let mut raw = RawFilter {
            kind: filter.kind(),
            request_header_modifier: None,
            response_header_modifier: None,
            request_redirect: None,
            url_rewrite: None,
            request_mirror: None,
        };
        match filter {
            RouteFilter::RequestHeaderModifier(m) => raw.request_header_modifier = Some(m),
            RouteFilter::ResponseHeaderModifier(m) => raw.response_header_modifier = Some(m),
            RouteFilter::RequestRedirect(r) => raw.request_redirect = Some(r),
            RouteFilter::UrlRewrite(r) => raw.url_rewrite = Some(r),
            RouteFilter::RequestMirror(m) => raw.request_mirror = Some(m),
        }
        raw
    }
}

/// `HTTPHeaderFilter`: applied as remove, then set, then add.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Overwrites the header, or adds it if absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    /// Appends a value, keeping any existing ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    /// Header names to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// `HTTPURLRewriteFilter`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    /// Replaces the `Host`/`:authority` sent to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// `HTTPRequestRedirectFilter`: the proxy answers with a redirect and the
/// request reaches no backend. Unset parts keep the request's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// Unset: the well-known port of the scheme when the scheme changes,
    /// otherwise the request's port. 1 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = ranges::PORT.min, max = ranges::PORT.max))]
    pub port: Option<u16>,
    /// One of 301, 302, 303, 307, 308.
    #[serde(default = "default_redirect_status")]
    pub status_code: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// The scheme of a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Http,
    Https,
}

/// `HTTPPathModifier`. On the wire:
/// `{type: ReplacePrefixMatch, replacePrefixMatch: /v2}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPathModifier", into = "RawPathModifier")]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the part matched by the route's `PathPrefix` match.
    ReplacePrefixMatch(String),
}

impl JsonSchema for PathModifier {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        RawPathModifier::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        RawPathModifier::json_schema(generator)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(rename = "PathModifier")]
struct RawPathModifier {
    #[serde(rename = "type")]
    kind: PathModifierType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replace_prefix_match: Option<String>,
}

/// A path modifier whose value field does not match its `type`.
#[derive(Debug, thiserror::Error)]
#[error("path modifier type {0} takes exactly the field {1}")]
pub(crate) struct PathModifierShapeError(&'static str, &'static str);

impl TryFrom<RawPathModifier> for PathModifier {
    type Error = PathModifierShapeError;

    fn try_from(raw: RawPathModifier) -> Result<Self, Self::Error> {
        match (raw.kind, raw.replace_full_path, raw.replace_prefix_match) {
            (PathModifierType::ReplaceFullPath, Some(path), None) => {
                Ok(Self::ReplaceFullPath(path))
            }
            (PathModifierType::ReplacePrefixMatch, None, Some(prefix)) => {
                Ok(Self::ReplacePrefixMatch(prefix))
            }
            (PathModifierType::ReplaceFullPath, ..) => {
                Err(PathModifierShapeError("ReplaceFullPath", "replaceFullPath"))
            }
            (PathModifierType::ReplacePrefixMatch, ..) => Err(PathModifierShapeError(
                "ReplacePrefixMatch",
                "replacePrefixMatch",
            )),
        }
    }
}

impl From<PathModifier> for RawPathModifier {
    fn from(modifier: PathModifier) -> Self {
        match modifier {
            PathModifier::ReplaceFullPath(path) => Self {
                kind: PathModifierType::ReplaceFullPath,
                replace_full_path: Some(path),
                replace_prefix_match: None,
            },
            PathModifier::ReplacePrefixMatch(prefix) => Self {
                kind: PathModifierType::ReplacePrefixMatch,
                replace_full_path: None,
                replace_prefix_match: Some(prefix),
            },
        }
    }
}

/// `HTTPRequestMirrorFilter`: a copy of the request goes to another backend
/// and its response is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    pub backend_ref: BackendObjectRef,
    /// The share of requests mirrored, 0 to 100.
    #[serde(default = "hundred_percent")]
    #[schemars(range(min = ranges::PERCENT.min, max = ranges::PERCENT.max))]
    pub percent: u8,
}

fn hundred_percent() -> u8 {
    100
}

/// A reference to a backend by name (mirror targets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendObjectRef {
    /// A key of the top-level `backends` map.
    pub name: String,
}

/// `HTTPBackendRef`: a backend by name, with its share of the traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// A key of the top-level `backends` map.
    pub name: String,
    /// Relative share, 0 to 1,000,000. A backend with weight 0 gets nothing.
    #[serde(default = "default_weight")]
    #[schemars(range(min = ranges::BACKEND_WEIGHT.min, max = ranges::BACKEND_WEIGHT.max))]
    pub weight: u32,
    /// Filters applied only to requests sent to this backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
}

pub(crate) fn default_weight() -> u32 {
    1
}

/// `HTTPRouteTimeouts`. Unset means no timeout; `"0s"` also means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// From the request's arrival to the last byte of the response header,
    /// across all retries. `0s` turns it off.
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<GatewayDuration>")]
    pub request: Option<Duration>,
    /// One attempt at one backend. At most `request` unless either is
    /// `0s`, which turns it off.
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<GatewayDuration>")]
    pub backend_request: Option<Duration>,
}

impl Timeouts {
    pub(crate) fn is_unset(&self) -> bool {
        *self == Self::default()
    }
}

/// `HTTPRouteRetry` (GEP-1731), plus gRPC codes and connect failures.
/// Retries also spend from the backend's retry budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    /// Retries after the first attempt (not counting it), 0 to 10.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = ranges::RETRY_ATTEMPTS.min, max = ranges::RETRY_ATTEMPTS.max))]
    pub attempts: u32,
    /// Base of the jittered exponential backoff between attempts, 1ms to
    /// 1m.
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<GatewayDuration>")]
    pub backoff: Option<Duration>,
    /// HTTP statuses (400 to 599) that are retried, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = ranges::RETRY_CODE.min, max = ranges::RETRY_CODE.max)))]
    pub codes: Vec<u16>,
    /// gRPC statuses that are retried, e.g. `unavailable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_codes: Vec<GrpcCode>,
    /// Retry when no connection to the endpoint could be made; such a request
    /// never reached the backend, so this is safe for any method.
    #[serde(default = "yes")]
    pub on_connect_failure: bool,
}

fn default_attempts() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// gRPC status codes by name (the gRPC spec's names in camelCase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GrpcCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl GrpcCode {
    /// The numeric code carried in `grpc-status`.
    pub fn code(self) -> u8 {
        match self {
            Self::Cancelled => 1,
            Self::Unknown => 2,
            Self::InvalidArgument => 3,
            Self::DeadlineExceeded => 4,
            Self::NotFound => 5,
            Self::AlreadyExists => 6,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::FailedPrecondition => 9,
            Self::Aborted => 10,
            Self::OutOfRange => 11,
            Self::Unimplemented => 12,
            Self::Internal => 13,
            Self::Unavailable => 14,
            Self::DataLoss => 15,
            Self::Unauthenticated => 16,
        }
    }
}
