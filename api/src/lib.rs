//! The mesh config model shared by the control plane and the proxy.
//!
//! This crate owns the serde types that describe what one proxy needs to know
//! (services, routes, backends, endpoints, inbound ports, HTTP settings,
//! plugin attachments, global rules and consumers), their
//! JSON Schema, and the checks a config must pass before a proxy uses it. It
//! does no I/O: callers hand it text or bytes.
//!
//! Text from outside the process goes through [`MeshConfig::parse`], which
//! tells JSON from YAML, bounds the cost with [`ParseLimits`] and validates;
//! [`MeshConfig::from_yaml`] and [`MeshConfig::from_json`] do the same for a
//! known format with the default limits, and [`MeshConfig::validate`] checks
//! configs built in code. docs/config.md describes the model field by field.

mod authz;
mod backend;
mod duration;
mod error;
mod mesh;
mod parse;
mod plugin;
pub mod ranges;
mod route;
mod validate;

pub use authz::{Authorization, AuthorizationPolicy, AuthzAction, AuthzRule};
pub use backend::{
    Backend, CircuitBreaker, Endpoint, HashOn, HealthCheck, LoadBalancer, OutlierDetection,
    RetryBudget,
};
pub use duration::{
    format_duration, parse_duration, serde_opt_duration, DurationError, MAX_DURATION,
};
pub use error::{ConfigError, FieldError, LimitError, ValidationError};
pub use mesh::{
    HttpSettings, InboundConfig, InboundMode, InboundPort, MeshConfig, OutboundConfig,
    PathNormalization, PathNormalizationMode, Protocol, Service, ServicePort, XForwardedFor,
};
pub use parse::ParseLimits;
pub use plugin::{Consumer, GlobalRule, Plugins};
pub use route::{
    BackendObjectRef, BackendRef, GrpcCode, GrpcMethodMatch, HeaderMatch, HeaderModifier,
    HttpHeader, HttpMethod, MatchType, PathMatch, PathMatchType, PathModifier, QueryParamMatch,
    RequestMirror, RequestRedirect, Retry, Route, RouteFilter, RouteMatch, Scheme, Timeouts,
    UrlRewrite,
};

/// The JSON Schema (draft 2020-12) of [`MeshConfig`], for editors and for
/// checking configs outside Rust. api/schema/mesh-config.schema.json holds
/// a copy that a test keeps current.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(MeshConfig).to_value()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The committed schema must be what the types generate. Regenerate with
    /// `UPDATE_SCHEMA=1 cargo test -p remora-api`.
    #[test]
    fn committed_schema_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/mesh-config.schema.json");
        let mut generated = serde_json::to_string_pretty(&super::json_schema())
            .unwrap_or_else(|e| panic!("schema does not serialize: {e}"));
        generated.push('\n');
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale: run UPDATE_SCHEMA=1 cargo test -p remora-api and commit it",
            path.display()
        );
    }

    /// Editors see the ranges validation enforces.
    #[test]
    fn schema_carries_the_numeric_ranges() {
        let schema = super::json_schema();
        let defs = &schema["$defs"];
        let http = &defs["HttpSettings"]["properties"];
        assert_eq!(http["maxHeaders"]["minimum"], 1);
        assert_eq!(http["maxHeaders"]["maximum"], 1000);
        assert_eq!(http["maxHeaderBytes"]["maximum"], 1_048_576);
        assert_eq!(defs["ServicePort"]["properties"]["port"]["minimum"], 1);
        let codes = &defs["Retry"]["properties"]["codes"]["items"];
        assert_eq!(
            (&codes["minimum"], &codes["maximum"]),
            (&400.into(), &599.into())
        );
        assert_eq!(defs["Retry"]["properties"]["attempts"]["maximum"], 10);
        assert_eq!(
            defs["RetryBudget"]["properties"]["ratio"]["maximum"],
            1000.0
        );
    }

    #[test]
    fn schema_rejects_unknown_fields_and_names_durations() {
        let schema = super::json_schema();
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["$defs"]["Duration"]["type"], "string");
        assert!(schema["$defs"]["RouteFilter"]["properties"]["urlRewrite"].is_object());
    }
}
