//! `consumer-restriction`: allows or denies requests by who made them (the
//! consumer an auth plugin found), or by the service or route they are
//! for, as APISIX's plugin of that name.
//!
//! `type` picks what is compared: `consumer_name` (the default),
//! `service_id` or `route_id` (Remora's service and route names). A request
//! with nothing to compare (no consumer authenticated) gets 401
//! `{"message":"Missing authentication or identity verification."}`; one on
//! the `blacklist`, off a `whitelist`, or with a method its consumer is not
//! allowed (`allowed_by_methods`) gets `rejected_code` (403) with
//! `rejected_msg` or `"The <type> is forbidden."`.

use std::collections::HashSet;
use std::sync::Arc;

use http::{request, Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{in_range, parse, reject, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor = Descriptor::new(
    "consumer-restriction",
    2400,
    super::schema_of::<Config>,
    compile,
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default, rename = "type")]
    kind: Kind,
    #[serde(default)]
    whitelist: Option<Vec<String>>,
    #[serde(default)]
    blacklist: Option<Vec<String>>,
    #[serde(default)]
    allowed_by_methods: Option<Vec<UserMethods>>,
    /// 200 to 599.
    #[serde(default = "default_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Kind {
    #[default]
    ConsumerName,
    ServiceId,
    RouteId,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::ConsumerName => "consumer_name",
            Kind::ServiceId => "service_id",
            Kind::RouteId => "route_id",
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct UserMethods {
    user: String,
    methods: Vec<String>,
}

fn default_code() -> u16 {
    403
}

#[derive(Debug)]
struct ConsumerRestriction {
    kind: Kind,
    whitelist: Option<HashSet<String>>,
    blacklist: HashSet<String>,
    by_methods: Vec<(String, Vec<Method>)>,
    rejected: StatusCode,
    message: String,
}

const MISSING: &str = "Missing authentication or identity verification.";

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    in_range("rejected_code", config.rejected_code, 200..=599)?;
    if config.whitelist.is_none()
        && config.blacklist.is_none()
        && config.allowed_by_methods.is_none()
    {
        return Err(Fault::new(
            "",
            "needs one of whitelist, blacklist or allowed_by_methods",
        ));
    }
    for (field, list) in [
        ("whitelist", &config.whitelist),
        ("blacklist", &config.blacklist),
    ] {
        if list.as_ref().is_some_and(Vec::is_empty) {
            return Err(Fault::new(field, "must list at least one name"));
        }
    }
    let mut by_methods = Vec::new();
    for (i, entry) in config.allowed_by_methods.iter().flatten().enumerate() {
        let mut methods = Vec::with_capacity(entry.methods.len());
        for (j, m) in entry.methods.iter().enumerate() {
            let method = Method::from_bytes(m.as_bytes())
                .ok()
                .filter(|_| m.bytes().all(|b| b.is_ascii_uppercase()))
                .ok_or_else(|| {
                    Fault::new(
                        &format!("allowed_by_methods[{i}].methods[{j}]"),
                        format!("{m:?} is not an HTTP method in upper case"),
                    )
                })?;
            methods.push(method);
        }
        by_methods.push((entry.user.clone(), methods));
    }
    let rejected = StatusCode::from_u16(config.rejected_code)
        .map_err(|_| Fault::new("rejected_code", "not a status code"))?;
    let message = config
        .rejected_msg
        .unwrap_or_else(|| format!("The {} is forbidden.", config.kind.as_str()));
    Ok(Arc::new(ConsumerRestriction {
        kind: config.kind,
        whitelist: config.whitelist.map(|l| l.into_iter().collect()),
        blacklist: config.blacklist.unwrap_or_default().into_iter().collect(),
        by_methods,
        rejected,
        message,
    }))
}

impl Plugin for ConsumerRestriction {
    fn access(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let value = match self.kind {
            Kind::ConsumerName => ctx.consumer_name(),
            Kind::ServiceId => Some(&*ctx.service).filter(|s| !s.is_empty()),
            Kind::RouteId => Some(&*ctx.route).filter(|r| !r.is_empty()),
        };
        let Some(value) = value else {
            return Flow::Respond(reject(StatusCode::UNAUTHORIZED, MISSING));
        };
        let denied = self.blacklist.contains(value)
            || self.whitelist.as_ref().is_some_and(|w| !w.contains(value))
            || self
                .by_methods
                .iter()
                .find(|(user, _)| user == value)
                .is_some_and(|(_, methods)| !methods.contains(&req.method));
        if denied {
            return Flow::Respond(reject(self.rejected, &self.message));
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{body_text, consumer, consumers, ctx, env, request};
    use super::*;

    fn verdict(config: serde_json::Value, who: Option<&str>, method: &str) -> (u16, String) {
        let p = compile(&config, &env()).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        ctx.consumer = who.map(consumer);
        ctx.route = Arc::from("admin");
        let mut req = request("/", &[]);
        req.method = Method::from_bytes(method.as_bytes()).unwrap();
        match p.access(&mut ctx, &mut req) {
            Flow::Continue => (200, String::new()),
            Flow::Respond(r) => (r.status().as_u16(), body_text(r)),
            Flow::Wait(_) | Flow::ContinueWith(_) => (0, String::new()),
        }
    }

    #[test]
    fn lists_allow_and_deny_by_consumer() {
        let white = serde_json::json!({"whitelist": ["jack"]});
        assert_eq!(verdict(white.clone(), Some("jack"), "GET").0, 200);
        assert_eq!(
            verdict(white.clone(), Some("rose"), "GET"),
            (
                403,
                "{\"message\":\"The consumer_name is forbidden.\"}\n".into()
            )
        );
        assert_eq!(
            verdict(white, None, "GET"),
            (401, format!("{{\"message\":\"{MISSING}\"}}\n"))
        );
        let black = serde_json::json!({"blacklist": ["rose"], "rejected_code": 401, "rejected_msg": "go away"});
        assert_eq!(verdict(black.clone(), Some("jack"), "GET").0, 200);
        assert_eq!(
            verdict(black, Some("rose"), "GET"),
            (401, "{\"message\":\"go away\"}\n".into())
        );
    }

    #[test]
    fn methods_and_routes_can_be_restricted() {
        let methods =
            serde_json::json!({"allowed_by_methods": [{"user": "jack", "methods": ["GET"]}]});
        assert_eq!(verdict(methods.clone(), Some("jack"), "GET").0, 200);
        assert_eq!(verdict(methods.clone(), Some("jack"), "POST").0, 403);
        assert_eq!(
            verdict(methods, Some("rose"), "POST").0,
            200,
            "not listed: not restricted"
        );
        let routes = serde_json::json!({"type": "route_id", "blacklist": ["admin"]});
        assert_eq!(
            verdict(routes, None, "GET"),
            (403, "{\"message\":\"The route_id is forbidden.\"}\n".into())
        );
    }

    #[test]
    fn bad_configs_name_their_field() {
        super::super::testing::assert_faults(
            compile,
            &[
                (serde_json::json!({}), "", "needs one of"),
                (
                    serde_json::json!({"whitelist": []}),
                    ".whitelist",
                    "at least one",
                ),
                (
                    serde_json::json!({"whitelist": "jack"}),
                    ".whitelist",
                    "invalid type",
                ),
                (
                    serde_json::json!({"type": "consumer_group_id", "whitelist": ["a"]}),
                    ".type",
                    "unknown variant",
                ),
                (
                    serde_json::json!({"whitelist": ["a"], "rejected_code": 99}),
                    ".rejected_code",
                    "out of range",
                ),
                (
                    serde_json::json!({"allowed_by_methods": [{"user": "a", "methods": ["get"]}]}),
                    ".allowed_by_methods[0].methods[0]",
                    "upper case",
                ),
                (
                    serde_json::json!({"allowed_by_methods": [{"user": "a"}]}),
                    ".allowed_by_methods[0]",
                    "missing field `methods`",
                ),
            ],
        );
    }
}
