//! `uri-blocker`: refuses requests whose URI (path and query) matches one
//! of `block_rules`, as APISIX's plugin of that name.
//!
//! The rules are regexes, compiled into one set at config load
//! (`case_insensitive` for any case). A blocked request gets
//! `rejected_code` (403), with `{"error_msg": rejected_msg}` when set.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{request, StatusCode};
use regex::RegexSet;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{in_range, json_response, parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};
use crate::body::empty;

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("uri-blocker", 2900, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Regexes matched against the path and query; at least one.
    block_rules: Vec<String>,
    /// 200 to 599.
    #[serde(default = "default_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    case_insensitive: bool,
}

fn default_code() -> u16 {
    403
}

#[derive(Debug)]
struct UriBlocker {
    rules: RegexSet,
    rejected: StatusCode,
    body: Option<String>,
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    if config.block_rules.is_empty() {
        return Err(Fault::new("block_rules", "must list at least one regex"));
    }
    for (i, rule) in config.block_rules.iter().enumerate() {
        regex::RegexBuilder::new(rule)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                Fault::new(
                    &format!("block_rules[{i}]"),
                    format!("does not compile: {e}"),
                )
            })?;
    }
    let rules = regex::RegexSetBuilder::new(&config.block_rules)
        .case_insensitive(config.case_insensitive)
        .size_limit(8 << 20)
        .build()
        .map_err(|e| Fault::new("block_rules", format!("do not compile together: {e}")))?;
    in_range("rejected_code", config.rejected_code, 200..=599)?;
    if config.rejected_msg.as_deref() == Some("") {
        return Err(Fault::new("rejected_msg", "must not be empty"));
    }
    Ok(Arc::new(UriBlocker {
        rules,
        rejected: StatusCode::from_u16(config.rejected_code)
            .map_err(|_| Fault::new("rejected_code", "not a status code"))?,
        body: config
            .rejected_msg
            .map(|m| serde_json::json!({ "error_msg": m }).to_string() + "\n"),
    }))
}

impl Plugin for UriBlocker {
    fn rewrite(&self, _ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let uri = req.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        if !self.rules.is_match(uri) {
            return Flow::Continue;
        }
        Flow::Respond(match &self.body {
            Some(body) => json_response(self.rejected, body.clone()),
            None => {
                let mut r = http::Response::new(empty());
                *r.status_mut() = self.rejected;
                r
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, body_text, consumers, ctx, env, request};
    use super::*;

    fn status(config: serde_json::Value, uri: &str) -> (u16, String) {
        let p = compile(&config, &env()).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        match p.rewrite(&mut ctx, &mut request(uri, &[])) {
            Flow::Respond(r) => (r.status().as_u16(), body_text(r)),
            _ => (200, String::new()),
        }
    }

    #[test]
    fn matching_uris_are_blocked() {
        let config = serde_json::json!({"block_rules": ["^/admin", "\\.php$", "token=[a-z]+"], "rejected_msg": "blocked"});
        assert_eq!(
            status(config.clone(), "/admin/x"),
            (403, "{\"error_msg\":\"blocked\"}\n".into())
        );
        assert_eq!(
            status(config.clone(), "/a/index.php"),
            (403, "{\"error_msg\":\"blocked\"}\n".into())
        );
        assert_eq!(
            status(config.clone(), "/p?token=abc"),
            (403, "{\"error_msg\":\"blocked\"}\n".into())
        );
        assert_eq!(
            status(config.clone(), "/ADMIN"),
            (200, String::new()),
            "case matters by default"
        );
        assert_eq!(status(config, "/public"), (200, String::new()));
        let any_case = serde_json::json!({"block_rules": ["^/admin"], "case_insensitive": true, "rejected_code": 404});
        assert_eq!(status(any_case, "/ADMIN"), (404, String::new()));
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (serde_json::json!({}), "", "missing field `block_rules`"),
                (
                    serde_json::json!({"block_rules": []}),
                    ".block_rules",
                    "at least one",
                ),
                (
                    serde_json::json!({"block_rules": ["ok", "("]}),
                    ".block_rules[1]",
                    "does not compile",
                ),
                (
                    serde_json::json!({"block_rules": ["a"], "rejected_code": 100}),
                    ".rejected_code",
                    "out of range",
                ),
                (
                    serde_json::json!({"block_rules": ["a"], "rejected_msg": ""}),
                    ".rejected_msg",
                    "must not be empty",
                ),
            ],
        );
    }
}
