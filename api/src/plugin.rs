//! Plugin attachment in the mesh config: the `plugins` maps on services,
//! routes and inbound ports, the top-level `globalRules`, and `consumers`.
//!
//! This module owns only the shapes: a plugin's config is the JSON object
//! APISIX users know, kept here as a JSON value under the plugin's name. What
//! each plugin accepts (its typed config and JSON Schema) and how configs
//! merge and run is the proxy's (`proxy/src/plugins.rs`); a config naming an
//! unknown plugin or a bad field is rejected there, whole.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Plugin configs by plugin name, e.g. `{"key-auth": {}, "limit-count":
/// {"count": 10, "time_window": 60}}`. Each name once.
pub type Plugins = BTreeMap<String, serde_json::Value>;

/// APISIX's global rule: plugins that run before every request's own, in
/// both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GlobalRule {
    /// Names the rule in errors and `/config_dump`; each id once.
    pub id: String,
    #[serde(default, deserialize_with = "crate::parse::unique_keys")]
    pub plugins: Plugins,
}

/// APISIX's consumer: someone who calls services, with the credentials the
/// authentication plugins check (`key-auth: {key: ...}`) and plugins that
/// apply to their requests once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Consumer {
    /// Letters, digits, `_` and `-`, as APISIX; each name once. Sent to the
    /// app in `x-remora-consumer`.
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, deserialize_with = "crate::parse::unique_keys")]
    pub plugins: Plugins,
}
