//! Remora's custom resources (`remora.dev/v1alpha1`): the settings Gateway API
//! has no field for, attached to Services, HTTPRoutes and Namespaces by
//! `targetRefs` (Gateway API policy attachment).
//!
//! This module owns their Rust types, their OpenAPI schemas, and
//! [`crds_yaml`], which `remora-cp crds` prints and the chart's
//! `crds/remora.dev.yaml` must equal. What the objects mean is translation's
//! (`translate`).

use std::collections::BTreeMap;
use std::time::Duration;

use kube::{CustomResource, CustomResourceExt};
use remora_api::{
    AuthzAction, CircuitBreaker, HealthCheck, HttpMethod, InboundMode, OutlierDetection, Retry,
    RetryBudget,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Remora resource.
pub const GROUP: &str = "remora.dev";

/// A CRD set that cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("rendering the CRDs as YAML: {0}")]
    Yaml(String),
}

/// What a policy attaches to: a Service, an HTTPRoute, a GRPCRoute or a
/// Namespace, in the policy's own namespace (or the Namespace named).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// `""` for Service and Namespace, `gateway.networking.k8s.io` for routes.
    #[serde(default)]
    pub group: String,
    /// `Service`, `HTTPRoute`, `GRPCRoute` or `Namespace`.
    pub kind: String,
    pub name: String,
    /// A Service port, to attach to that port only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

/// APISIX plugin configs for the Services, routes or Namespaces it targets.
/// Each config is checked with the plugin's own schema before any proxy
/// sees it.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "remora.dev",
    version = "v1alpha1",
    kind = "PluginPolicy",
    plural = "pluginpolicies",
    namespaced,
    status = "PolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct PluginPolicySpec {
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,
    /// Plugin configs by plugin name, as APISIX writes them.
    #[schemars(schema_with = "free_object_map")]
    pub plugins: BTreeMap<String, serde_json::Value>,
}

/// An APISIX consumer: someone who calls, with credentials for the auth
/// plugins taken from Kubernetes Secrets. Mesh-wide.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "remora.dev",
    version = "v1alpha1",
    kind = "Consumer",
    plural = "consumers",
    namespaced,
    status = "PolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSpec {
    /// Defaults to the object's name. Letters, digits, `_` and `-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Each credential sets one field of one plugin's config from a Secret.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub credentials: Vec<Credential>,
    /// Plugin configs that are not secret (and plugins that run for this
    /// consumer once authenticated).
    #[serde(default)]
    #[schemars(schema_with = "free_object_map")]
    pub plugins: BTreeMap<String, serde_json::Value>,
}

/// One secret field of an auth plugin's consumer config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// e.g. `key-auth`, `basic-auth`, `jwt-auth`.
    pub plugin: String,
    /// The field of the plugin's config, e.g. `key`, `password`, `secret`.
    pub field: String,
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the consumer's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Who may call the workloads behind the Services (or in the Namespaces) it
/// targets.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "remora.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    namespaced,
    status = "PolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,
    pub action: AuthzAction,
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<AuthorizationRule>,
}

/// A rule matches when each of its non-empty lists has a match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// SPIFFE IDs, `*` as a trailing wildcard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Callers' ServiceAccounts as `<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Callers' namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,
}

/// Whether inbound traffic must be mutual TLS. Scope: in the mesh's root
/// namespace without a selector, the whole mesh; elsewhere without a
/// selector, its namespace; with a selector, the pods it selects. The most
/// specific wins, and a `ports` entry wins over the policy's `mode`.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "remora.dev",
    version = "v1alpha1",
    kind = "MeshTLSPolicy",
    plural = "meshtlspolicies",
    namespaced,
    status = "PolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct MeshTlsPolicySpec {
    /// Pod labels, all of which must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub ports: Vec<PortTlsMode>,
}

/// One port's mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortTlsMode {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    pub mode: TlsMode,
}

/// Istio's spelling of the inbound modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TlsMode {
    /// Mutual TLS only.
    Strict,
    /// Mutual TLS or plaintext.
    Permissive,
}

impl From<TlsMode> for InboundMode {
    fn from(mode: TlsMode) -> Self {
        match mode {
            TlsMode::Strict => InboundMode::Strict,
            TlsMode::Permissive => InboundMode::Permissive,
        }
    }
}

/// How proxies talk to the Services it targets: the settings Gateway API has
/// no field for. Unset fields keep the defaults of the mesh config model.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "remora.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    plural = "trafficpolicies",
    namespaced,
    status = "PolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<PolicyTargetRef>,
    /// `roundRobin`, `leastRequest` or `{consistentHash: ...}`, as in the
    /// mesh config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_value")]
    pub load_balancer: Option<remora_api::LoadBalancer>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "remora_api::serde_opt_duration"
    )]
    #[schemars(with = "Option<String>")]
    pub connect_timeout: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "remora_api::serde_opt_duration"
    )]
    #[schemars(with = "Option<String>")]
    pub idle_timeout: Option<Duration>,
    /// The request timeout of routes that set none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "remora_api::serde_opt_duration"
    )]
    #[schemars(with = "Option<String>")]
    pub request_timeout: Option<Duration>,
    /// The retry of routes that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// Conditions as Gateway API policies report them (Accepted, ResolvedRefs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// A map of free-form objects (plugin configs), kept whole by the API server.
fn free_object_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

/// Any value (a string or an object), checked by translation.
fn free_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// Every Remora CRD as one multi-document YAML text, in a fixed order.
pub fn crds_yaml() -> Result<String, CrdError> {
    let crds = [
        PluginPolicy::crd(),
        Consumer::crd(),
        AuthorizationPolicy::crd(),
        MeshTLSPolicy::crd(),
        TrafficPolicy::crd(),
    ];
    let mut out = String::from(
        "# Generated by `remora-cp crds`; a test keeps this file equal to its output.\n",
    );
    for crd in &crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(crd).map_err(|e| CrdError::Yaml(e.to_string()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHART_CRDS: &str = include_str!("../../charts/remora/crds/remora.dev.yaml");

    /// Regenerate with `cargo run -p remora-cp -- crds > charts/remora/crds/remora.dev.yaml`.
    #[test]
    fn chart_crds_equal_the_command_output() {
        let generated = crds_yaml().unwrap();
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::write(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../charts/remora/crds/remora.dev.yaml"
                ),
                &generated,
            )
            .unwrap();
            return;
        }
        assert!(
            generated == CHART_CRDS,
            "charts/remora/crds/remora.dev.yaml drifted from `remora-cp crds`; \
             regenerate with UPDATE_CRDS=1 cargo test -p remora-cp crds"
        );
    }

    #[test]
    fn names_match_the_chart_rbac() {
        let rbac = include_str!("../../charts/remora/templates/cp-rbac.yaml");
        for crd in [
            PluginPolicy::crd(),
            Consumer::crd(),
            AuthorizationPolicy::crd(),
            MeshTLSPolicy::crd(),
            TrafficPolicy::crd(),
        ] {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.versions[0].name, "v1alpha1");
            assert!(
                rbac.contains(&crd.spec.names.plural),
                "{} is not in the chart's RBAC",
                crd.spec.names.plural
            );
        }
        assert_eq!(PluginPolicy::crd().spec.names.plural, "pluginpolicies");
        assert_eq!(MeshTLSPolicy::crd().spec.names.plural, "meshtlspolicies");
    }

    #[test]
    fn a_traffic_policy_parses_with_gateway_durations() {
        let policy: TrafficPolicySpec = serde_saphyr::from_str(
            "targetRefs: [{kind: Service, name: reviews}]\n\
             loadBalancer: {consistentHash: {header: x-user}}\n\
             connectTimeout: 250ms\n\
             circuitBreaker: {maxConnections: 10}\n",
        )
        .unwrap();
        assert_eq!(policy.connect_timeout, Some(Duration::from_millis(250)));
        assert_eq!(
            policy.load_balancer,
            Some(remora_api::LoadBalancer::ConsistentHash(
                remora_api::HashOn::Header("x-user".into())
            ))
        );
        assert_eq!(policy.circuit_breaker.unwrap().max_connections, 10);
    }

    #[test]
    fn a_traffic_policy_with_a_bad_duration_is_rejected() {
        let err = serde_saphyr::from_str::<TrafficPolicySpec>(
            "targetRefs: [{kind: Service, name: reviews}]\nconnectTimeout: 1.5s\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("1.5s"), "{err}");
    }
}
