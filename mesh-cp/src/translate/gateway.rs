//! The Gateway API objects translation reads (HTTPRoute and GRPCRoute, with
//! a Service parentRef as GAMMA attaches them), as serde types of the fields Remora
//! uses. The `gateway-api` crate (0.22) is built on kube 4 and
//! k8s-openapi 0.28, while this workspace is on kube 5 and k8s-openapi
//! 0.29, so its types cannot be mixed with ours yet; match, filter and
//! timeout shapes are the mesh config model's, which keeps Gateway API's
//! wire names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use remora_api::{
    GrpcMethodMatch, HeaderMatch, HeaderModifier, RequestRedirect, RouteMatch, UrlRewrite,
};
use serde::{Deserialize, Serialize};

/// `gateway.networking.k8s.io/v1` HTTPRoute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    pub spec: HttpRouteSpec,
    /// The status as the API server holds it, kept whole (other
    /// controllers' `parents` entries too) for status write-back; never
    /// read by translation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// A reference to a Service (group `""` or `core`, kind `Service`): a
/// GAMMA parent, or a rule's backend. A parent without `port` is every port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

/// A parent of a route.
pub type ParentRef = ServiceRef;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef<HttpRouteFilter>>,
    #[serde(default)]
    pub timeouts: Option<remora_api::Timeouts>,
    #[serde(default)]
    pub retry: Option<remora_api::Retry>,
}

/// A rule's backend: a Service and port, weighted, with the filters
/// applied only to requests sent to it (`F`: the route kind's filters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef<F> {
    #[serde(flatten)]
    pub target: ServiceRef,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<F>,
}

fn one() -> u32 {
    1
}

/// `gateway.networking.k8s.io/v1` GRPCRoute. `hostnames` is read and
/// ignored, as GAMMA says a mesh should (GEP-1426).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRoute {
    pub metadata: ObjectMeta,
    pub spec: GrpcRouteSpec,
    /// As on [`HttpRoute`]: kept whole for status write-back only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default)]
    pub filters: Vec<GrpcRouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef<GrpcRouteFilter>>,
}

/// `GRPCRouteMatch`: a method and headers, all of which must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// `GRPCRouteFilter`, the types a GRPCRoute may carry and Remora implements.
/// On the wire `{type: RequestMirror, requestMirror: {...}}`; any other
/// type (`ExtensionRef`, or an HTTPRoute-only one) is refused with its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum GrpcRouteFilter {
    RequestHeaderModifier {
        request_header_modifier: HeaderModifier,
    },
    ResponseHeaderModifier {
        response_header_modifier: HeaderModifier,
    },
    RequestMirror {
        request_mirror: Mirror,
    },
}

/// `HTTPRouteFilter`, the types Remora implements: on the wire
/// `{type: URLRewrite, urlRewrite: {...}}`. Header modifiers, redirects and
/// rewrites have the model's shape (Gateway API's fields); a mirror names a
/// Service port and is resolved to a backend on attachment. Any other type
/// (`ExtensionRef`, `CORS`) is refused with its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum HttpRouteFilter {
    RequestHeaderModifier {
        request_header_modifier: HeaderModifier,
    },
    ResponseHeaderModifier {
        response_header_modifier: HeaderModifier,
    },
    RequestRedirect {
        request_redirect: RequestRedirect,
    },
    #[serde(rename = "URLRewrite")]
    UrlRewrite {
        url_rewrite: UrlRewrite,
    },
    RequestMirror {
        request_mirror: Mirror,
    },
}

/// `HTTPRequestMirrorFilter` as Gateway API writes it: a Service backend,
/// and the share mirrored as `percent` or as a `fraction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mirror {
    pub backend_ref: ServiceRef,
    #[serde(default)]
    pub percent: Option<u8>,
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

/// `numerator / denominator` of the requests (denominator 100 when unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fraction {
    pub numerator: u32,
    #[serde(default = "hundred")]
    pub denominator: u32,
}

fn hundred() -> u32 {
    100
}
