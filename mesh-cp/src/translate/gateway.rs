//! The Gateway API objects translation reads (HTTPRoute, with a Service
//! parentRef as GAMMA attaches it), as serde types of the fields Remora
//! uses. The `gateway-api` crate (0.22) is built on kube 4 and
//! k8s-openapi 0.28, while this workspace is on kube 5 and k8s-openapi
//! 0.29, so its types cannot be mixed with ours yet; match, filter and
//! timeout shapes are the mesh config model's, which keeps Gateway API's
//! wire names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use remora_api::{RouteFilter, RouteMatch};
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
    pub filters: Vec<RouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub timeouts: Option<remora_api::Timeouts>,
    #[serde(default)]
    pub retry: Option<remora_api::Retry>,
}

/// A rule's backend: a Service and port, weighted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(flatten)]
    pub target: ServiceRef,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}
