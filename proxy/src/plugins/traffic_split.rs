//! `traffic-split`: sends some of a route's requests to other backends, by
//! condition and by weight, as APISIX's plugin of that name.
//!
//! `rules` are tried in order; a rule applies when any of its `match`
//! entries' `vars` hold (no `match`: always). The first rule that applies
//! picks one of its `weighted_upstreams` by weight: `upstream_id` names a
//! backend of the mesh config (the top-level `backends`), and an entry
//! without one stands for the route's own `backendRefs`. Requests no rule
//! applies to go to the route's backends as usual.
//!
//! The pick reuses the route split's cumulative weight table, walked by a
//! counter per rule rather than a random point, so weights hold exactly
//! over every run of `sum(weights)` requests (3:1 gives 75 and 25 of 100).
//! APISIX's inline `upstream` objects (nodes) are not taken: a backend is
//! defined once in `backends` and named here. The plugin acts on outbound
//! routes; inbound there is no backend to choose, and it does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::request;
use schemars::JsonSchema;
use serde::Deserialize;

use super::expr::Expr;
use super::vars::Var;
use super::{in_range, parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};
use crate::route::Split;

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("traffic-split", 966, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Tried in order; the first that applies picks the backend. 1 to 64.
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// Any one entry holding applies the rule; none: always.
    #[serde(default, rename = "match")]
    matches: Vec<Match>,
    /// 1 to 64 entries.
    weighted_upstreams: Vec<Weighted>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Match {
    /// APISIX's `[[var, operator, value], ...]`.
    vars: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Weighted {
    /// A backend of the mesh config; unset, the route's own backends.
    #[serde(default)]
    upstream_id: Option<String>,
    /// APISIX's inline upstream; not taken here (use `upstream_id`).
    #[serde(default)]
    upstream: Option<serde_json::Value>,
    /// 0 to 10000.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 10000))]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// The most rules, and upstreams per rule.
const MAX_ENTRIES: usize = 64;

/// The split's name for "the route's own backends".
const ROUTE_DEFAULT: &str = "";

#[derive(Debug)]
struct CompiledRule {
    matches: Vec<Expr>,
    split: Split,
    /// How many requests this rule has placed.
    placed: AtomicU64,
}

#[derive(Debug)]
struct TrafficSplit {
    rules: Vec<CompiledRule>,
}

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    Ok(Arc::new(build(parse(value)?, env)?))
}

fn build(config: Config, env: &Env) -> Result<TrafficSplit, Fault> {
    if config.rules.is_empty() || config.rules.len() > MAX_ENTRIES {
        return Err(Fault::new(
            "rules",
            format!("must list 1 to {MAX_ENTRIES} rules"),
        ));
    }
    let mut rules = Vec::with_capacity(config.rules.len());
    for (ri, rule) in config.rules.into_iter().enumerate() {
        let at = format!("rules[{ri}]");
        let matches = rule
            .matches
            .iter()
            .enumerate()
            .map(|(mi, m)| Expr::compile(&format!("{at}.match[{mi}].vars"), &m.vars, Var::parse))
            .collect::<Result<Vec<_>, _>>()?;
        let list = &rule.weighted_upstreams;
        if list.is_empty() || list.len() > MAX_ENTRIES {
            return Err(Fault::new(
                &format!("{at}.weighted_upstreams"),
                format!("must list 1 to {MAX_ENTRIES} upstreams"),
            ));
        }
        let mut weighted = Vec::with_capacity(list.len());
        for (wi, w) in list.iter().enumerate() {
            let wat = format!("{at}.weighted_upstreams[{wi}]");
            if w.upstream.is_some() {
                return Err(Fault::new(
                    &format!("{wat}.upstream"),
                    "inline upstreams are not supported: define the backend in backends and name it in upstream_id",
                ));
            }
            in_range(&format!("{wat}.weight"), w.weight, 0..=10_000)?;
            let name = match &w.upstream_id {
                Some(id) if env.has_backend(id) => id.clone(),
                Some(id) => {
                    return Err(Fault::new(
                        &format!("{wat}.upstream_id"),
                        format!("{id:?} is not one of backends"),
                    ))
                }
                None => ROUTE_DEFAULT.to_owned(),
            };
            weighted.push((name, w.weight));
        }
        let split = Split::weighted(weighted);
        if split.total_weight() == 0 {
            return Err(Fault::new(
                &format!("{at}.weighted_upstreams"),
                "the weights add up to 0",
            ));
        }
        rules.push(CompiledRule {
            matches,
            split,
            placed: AtomicU64::new(0),
        });
    }
    Ok(TrafficSplit { rules })
}

impl TrafficSplit {
    /// The backend for this request: `Some("")` for the route's own,
    /// `None` when no rule applies.
    fn place(&self, ctx: &Ctx<'_>, req: &request::Parts) -> Option<&str> {
        let rule = self.rules.iter().find(|r| {
            r.matches.is_empty() || r.matches.iter().any(|e| e.eval(&|var| var.value(ctx, req)))
        })?;
        let n = rule.placed.fetch_add(1, Ordering::Relaxed);
        rule.split.at(n).map(|b| b.name())
    }
}

impl Plugin for TrafficSplit {
    fn access(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        match self.place(ctx, req) {
            Some(ROUTE_DEFAULT) | None => {}
            Some(backend) => ctx.upstream = Some(Arc::from(backend)),
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{consumers, ctx, env_naming, request};
    use super::*;

    fn split(config: serde_json::Value) -> TrafficSplit {
        build(
            parse(&config).expect("parses"),
            &env_naming(&["canary", "blue"], &[]),
        )
        .expect("builds")
    }

    #[test]
    fn weights_hold_exactly_over_each_cycle() {
        let s = split(serde_json::json!({"rules": [{"weighted_upstreams": [
            {"upstream_id": "canary", "weight": 1}, {"weight": 3}
        ]}]}));
        let compiled = consumers(&[]);
        let ctx = ctx(&compiled);
        let req = request("/", &[]);
        let picks: Vec<_> = (0..100)
            .map(|_| s.place(&ctx, &req).map(str::to_owned))
            .collect();
        let canary = picks
            .iter()
            .filter(|p| p.as_deref() == Some("canary"))
            .count();
        let default = picks.iter().filter(|p| p.as_deref() == Some("")).count();
        assert_eq!((canary, default), (25, 75));
        assert_eq!(
            picks[..4],
            [
                Some("canary".into()),
                Some("".into()),
                Some("".into()),
                Some("".into())
            ]
        );
    }

    #[test]
    fn the_first_matching_rule_places_the_request() {
        let s = split(serde_json::json!({"rules": [
            {"match": [{"vars": [["http_x_beta", "==", "1"]]}, {"vars": [["arg_beta", "==", "yes"]]}],
             "weighted_upstreams": [{"upstream_id": "canary"}]},
            {"match": [{"vars": [["uri", "~~", "^/blue"]]}],
             "weighted_upstreams": [{"upstream_id": "blue", "weight": 1}, {"upstream_id": "canary", "weight": 0}]}
        ]}));
        let compiled = consumers(&[]);
        let ctx = ctx(&compiled);
        for (uri, headers, placed) in [
            ("/", &[("x-beta", "1")][..], Some("canary")),
            ("/blue?beta=yes", &[][..], Some("canary")),
            ("/blue/x", &[("x-beta", "0")][..], Some("blue")),
            ("/red", &[][..], None),
        ] {
            assert_eq!(s.place(&ctx, &request(uri, headers)), placed, "{uri}");
        }
    }

    #[test]
    fn bad_configs_name_their_field() {
        let env = env_naming(&["canary"], &[]);
        let compile = |v: &serde_json::Value| build(parse(v)?, &env).map(|_| ());
        for (config, field, message) in [
            (serde_json::json!({}), "", "missing field `rules`"),
            (serde_json::json!({"rules": []}), ".rules", "1 to 64"),
            (
                serde_json::json!({"rules": [{"weighted_upstreams": []}]}),
                ".rules[0].weighted_upstreams",
                "1 to 64",
            ),
            (
                serde_json::json!({"rules": [{"weighted_upstreams": [{"upstream_id": "nope"}]}]}),
                ".rules[0].weighted_upstreams[0].upstream_id",
                "\"nope\" is not one of backends",
            ),
            (
                serde_json::json!({"rules": [{"weighted_upstreams": [{"upstream": {"nodes": {"1.2.3.4:80": 1}}}]}]}),
                ".rules[0].weighted_upstreams[0].upstream",
                "not supported",
            ),
            (
                serde_json::json!({"rules": [{"weighted_upstreams": [{"weight": 10001}]}]}),
                ".rules[0].weighted_upstreams[0].weight",
                "out of range",
            ),
            (
                serde_json::json!({"rules": [{"weighted_upstreams": [{"weight": 0}]}]}),
                ".rules[0].weighted_upstreams",
                "add up to 0",
            ),
            (
                serde_json::json!({"rules": [{"match": [{"vars": [["nope_var", "==", "1"]]}], "weighted_upstreams": [{}]}]}),
                ".rules[0].match[0].vars[0]",
                "not a variable",
            ),
        ] {
            let fault = compile(&config).expect_err("refused");
            assert_eq!(fault.field, field, "{config}: {}", fault.message);
            assert!(
                fault.message.contains(message),
                "{config}: {}",
                fault.message
            );
        }
    }
}
