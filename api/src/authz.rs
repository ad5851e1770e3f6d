//! Inbound authorization: who may call this workload, on which port, path
//! and method. The proxy evaluates it for each inbound request (HTTP) or
//! connection (opaque TCP); this module only describes it.
//!
//! A deny rule that matches wins; then an allow rule that matches; then the
//! default action. A rule matches when each of its non-empty lists has an
//! entry that matches (entries in one list are alternatives).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::route::HttpMethod;

/// The inbound authorization of one workload.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authorization {
    /// What happens to a request no policy matches. Default `allow`.
    #[serde(default)]
    pub default_action: AuthzAction,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<AuthorizationPolicy>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
}

/// A named set of rules with one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Unique; the `policy` label of the denial metric.
    pub name: String,
    pub action: AuthzAction,
    /// At least one; the policy applies when any rule matches.
    pub rules: Vec<AuthzRule>,
}

/// One rule: every non-empty condition must match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzRule {
    /// The client's proven identity: an exact SPIFFE id, a namespace
    /// wildcard `spiffe://<td>/ns/<namespace>/*`, or `*` for any mesh
    /// identity. A plaintext client has no identity and matches none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// The app port the request is for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// HTTP path prefixes, segment-wise (`/admin` matches `/admin` and
    /// `/admin/x`, not `/administrator`). HTTP only: see `methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP methods. On an opaque TCP connection a rule with `paths` or
    /// `methods` never matches if it allows, and always matches if it
    /// denies: an HTTP-only condition can't narrow a deny at L4.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,
}
