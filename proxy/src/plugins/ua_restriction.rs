//! `ua-restriction`: allows or refuses requests by their `User-Agent`, as
//! APISIX's plugin of that name.
//!
//! Exactly one of `allowlist` and `denylist`, each a list of regexes
//! (unanchored, case-sensitive, as APISIX's), compiled into one set at
//! config load. With `denylist` an agent that matches any is refused; with
//! `allowlist` an agent that matches none is. A request with several
//! `User-Agent` headers passes only if every one does. A request without
//! one (or with one that is not UTF-8) is refused unless `bypass_missing`.
//! A refused request gets 403 with `{"message": message}` ("Not allowed").

use std::sync::Arc;

use http::{header, request, StatusCode};
use regex::RegexSet;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{parse, reject, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("ua-restriction", 2999, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Regexes of the agents allowed; every other agent is refused.
    #[serde(default)]
    allowlist: Option<Vec<String>>,
    /// Regexes of the agents refused; every other agent passes.
    #[serde(default)]
    denylist: Option<Vec<String>>,
    /// Let requests without a `User-Agent` through.
    #[serde(default)]
    bypass_missing: bool,
    /// 1 to 1024 characters.
    #[serde(default = "default_message")]
    message: String,
}

fn default_message() -> String {
    "Not allowed".to_owned()
}

/// The most regexes one list may hold.
const MAX_RULES: usize = 1024;

#[derive(Debug)]
struct UaRestriction {
    rules: RegexSet,
    /// Whether matching agents are the allowed ones.
    allow: bool,
    bypass_missing: bool,
    message: String,
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    Ok(Arc::new(build(parse(value)?)?))
}

fn build(config: Config) -> Result<UaRestriction, Fault> {
    let (field, list, allow) = match (config.allowlist, config.denylist) {
        (Some(list), None) => ("allowlist", list, true),
        (None, Some(list)) => ("denylist", list, false),
        _ => {
            return Err(Fault::new(
                "",
                "needs exactly one of allowlist and denylist",
            ))
        }
    };
    if list.is_empty() || list.len() > MAX_RULES {
        return Err(Fault::new(
            field,
            format!("must list 1 to {MAX_RULES} regexes"),
        ));
    }
    for (i, rule) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if rule.is_empty() {
            return Err(Fault::new(&at, "must not be empty"));
        }
        regex::RegexBuilder::new(rule)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| Fault::new(&at, format!("does not compile: {e}")))?;
    }
    let rules = regex::RegexSetBuilder::new(&list)
        .size_limit(8 << 20)
        .build()
        .map_err(|e| Fault::new(field, format!("do not compile together: {e}")))?;
    if config.message.is_empty() || config.message.len() > 1024 {
        return Err(Fault::new("message", "must be 1 to 1024 characters"));
    }
    Ok(UaRestriction {
        rules,
        allow,
        bypass_missing: config.bypass_missing,
        message: config.message,
    })
}

impl UaRestriction {
    /// Whether a request with these `User-Agent` values may pass.
    fn allows<'a>(&self, mut agents: impl Iterator<Item = &'a [u8]>) -> bool {
        let Some(first) = agents.next() else {
            return self.bypass_missing;
        };
        std::iter::once(first).chain(agents).all(|agent| {
            std::str::from_utf8(agent).is_ok_and(|agent| self.rules.is_match(agent) == self.allow)
        })
    }
}

impl Plugin for UaRestriction {
    fn access(&self, _ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let agents = req.headers.get_all(header::USER_AGENT).iter();
        if self.allows(agents.map(|v| v.as_bytes())) {
            Flow::Continue
        } else {
            Flow::Respond(reject(StatusCode::FORBIDDEN, &self.message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, body_text, consumers, ctx, env, request};
    use super::*;

    fn restriction(config: serde_json::Value) -> UaRestriction {
        build(parse(&config).expect("parses")).expect("builds")
    }

    fn allows(r: &UaRestriction, agents: &[&str]) -> bool {
        r.allows(agents.iter().map(|a| a.as_bytes()))
    }

    #[test]
    fn allowlists_and_denylists_match_every_agent_header() {
        let deny = restriction(serde_json::json!({"denylist": ["(Baiduspider)", "^curl/7\\."]}));
        assert!(!allows(
            &deny,
            &["Mozilla/5.0 (compatible; Baiduspider/2.0)"]
        ));
        assert!(!allows(&deny, &["curl/7.88.1"]));
        assert!(allows(&deny, &["curl/8.5.0"]));
        assert!(allows(&deny, &["Mozilla/5.0", "Go-http-client/1.1"]));
        assert!(!allows(&deny, &["Mozilla/5.0", "curl/7.1"]), "every header");
        assert!(!allows(&deny, &[]), "missing, without bypass_missing");
        assert!(allows(&deny, &["baiduspider"]), "case-sensitive");
        let allow = restriction(
            serde_json::json!({"allowlist": ["^Remora-Probe/"], "bypass_missing": true}),
        );
        assert!(allows(&allow, &["Remora-Probe/1"]));
        assert!(!allows(&allow, &["Mozilla/5.0"]));
        assert!(allows(&allow, &[]), "bypass_missing");
        assert!(
            !allow.allows([&b"Remora-Probe/\xff"[..]].into_iter()),
            "not UTF-8"
        );
    }

    #[test]
    fn a_refused_agent_gets_403_and_the_message() {
        let p = compile(&serde_json::json!({"denylist": ["bot"]}), &env()).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut req = request("/", &[("user-agent", "evilbot/1")]);
        let Flow::Respond(r) = p.access(&mut ctx, &mut req) else {
            panic!("a bot")
        };
        assert_eq!(r.status(), 403);
        assert_eq!(body_text(r), "{\"message\":\"Not allowed\"}\n");
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (serde_json::json!({}), "", "exactly one"),
                (
                    serde_json::json!({"allowlist": ["a"], "denylist": ["b"]}),
                    "",
                    "exactly one",
                ),
                (
                    serde_json::json!({"denylist": []}),
                    ".denylist",
                    "1 to 1024",
                ),
                (
                    serde_json::json!({"denylist": ["ok", "("]}),
                    ".denylist[1]",
                    "does not compile",
                ),
                (
                    serde_json::json!({"allowlist": [""]}),
                    ".allowlist[0]",
                    "must not be empty",
                ),
                (
                    serde_json::json!({"allowlist": ["a"], "message": ""}),
                    ".message",
                    "1 to 1024",
                ),
                (
                    serde_json::json!({"allowlist": "a"}),
                    ".allowlist",
                    "invalid type",
                ),
            ],
        );
    }
}
