//! `fault-injection`: delays or aborts requests on purpose, to test how
//! callers cope, as APISIX's plugin of that name.
//!
//! `delay: {duration, percentage, vars}` waits `duration` seconds (0 to
//! 3600, fractions allowed) before the request goes on; `abort:
//! {http_status, body, headers, percentage, vars}` answers with
//! `http_status` (200 to 599) and `body` (variables allowed) instead of
//! forwarding. Each applies to `percentage` (0 to 100, default all) of the
//! requests whose `vars` match (APISIX's list of condition lists: any list
//! that holds). The delay comes first, then the abort. Waiting is the only
//! thing here that is not synchronous, so only a delayed request pays for
//! a boxed future.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{request, HeaderName, HeaderValue, Response, StatusCode};
use rand::Rng;
use schemars::JsonSchema;
use serde::Deserialize;

use super::expr::Expr;
use super::vars::{Template, Var};
use super::{header_name, in_range, parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};
use crate::body::full;

pub(super) const DESCRIPTOR: Descriptor = Descriptor::new(
    "fault-injection",
    11000,
    super::schema_of::<Config>,
    compile,
);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    abort: Option<Abort>,
    #[serde(default)]
    delay: Option<Delay>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Abort {
    /// 200 to 599.
    #[schemars(range(min = 200, max = 599))]
    http_status: u16,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// 0 to 100; all requests when unset.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    percentage: Option<u8>,
    /// Lists of conditions; any list that holds selects the request.
    #[serde(default)]
    vars: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Delay {
    /// Seconds, 0 to 3600.
    #[schemars(range(min = 0, max = 3600))]
    duration: f64,
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    percentage: Option<u8>,
    #[serde(default)]
    vars: Option<serde_json::Value>,
}

/// Who a fault applies to.
#[derive(Debug)]
struct Selector {
    percentage: u8,
    /// Any one list holding selects; none given selects all.
    vars: Vec<Expr>,
}

impl Selector {
    fn compile(
        field: &str,
        percentage: Option<u8>,
        vars: Option<&serde_json::Value>,
    ) -> Result<Self, Fault> {
        let percentage = percentage.unwrap_or(100);
        in_range(&format!("{field}.percentage"), percentage, 0..=100)?;
        let vars = match vars {
            None => Vec::new(),
            Some(serde_json::Value::Array(lists)) if !lists.is_empty() => lists
                .iter()
                .enumerate()
                .map(|(i, list)| Expr::compile(&format!("{field}.vars[{i}]"), list, Var::parse))
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(Fault::new(
                    &format!("{field}.vars"),
                    "must be a non-empty list of condition lists, e.g. [[[\"arg_name\", \"==\", \"jack\"]]]",
                ))
            }
        };
        Ok(Selector { percentage, vars })
    }

    fn selects(&self, ctx: &Ctx<'_>, req: &request::Parts) -> bool {
        let matched =
            self.vars.is_empty() || self.vars.iter().any(|e| e.eval(&|var| var.value(ctx, req)));
        matched && (self.percentage >= 100 || rand::rng().random_range(0..100) < self.percentage)
    }
}

/// The response an abort answers with, and who gets it.
#[derive(Debug)]
struct AbortWith {
    status: StatusCode,
    body: Option<Template>,
    headers: Vec<(HeaderName, Template)>,
    selector: Selector,
}

#[derive(Debug)]
struct FaultInjection {
    abort: Option<AbortWith>,
    delay: Option<(Duration, Selector)>,
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    if config.abort.is_none() && config.delay.is_none() {
        return Err(Fault::new("", "needs abort or delay"));
    }
    let abort = match &config.abort {
        Some(a) => {
            in_range("abort.http_status", a.http_status, 200..=599)?;
            let status = StatusCode::from_u16(a.http_status)
                .map_err(|_| Fault::new("abort.http_status", "not a status code"))?;
            let body = a
                .body
                .as_deref()
                .map(|b| Template::compile("abort.body", b))
                .transpose()?;
            let headers = a
                .headers
                .iter()
                .map(|(name, value)| {
                    let at = format!("abort.headers.{name}");
                    Ok((header_name(&at, name)?, Template::compile(&at, value)?))
                })
                .collect::<Result<_, Fault>>()?;
            let selector = Selector::compile("abort", a.percentage, a.vars.as_ref())?;
            Some(AbortWith {
                status,
                body,
                headers,
                selector,
            })
        }
        None => None,
    };
    let delay = match &config.delay {
        Some(d) => {
            if !(0.0..=3600.0).contains(&d.duration) {
                return Err(Fault::new(
                    "delay.duration",
                    format!("{} is out of range: 0 to 3600 seconds", d.duration),
                ));
            }
            let selector = Selector::compile("delay", d.percentage, d.vars.as_ref())?;
            Some((Duration::from_secs_f64(d.duration), selector))
        }
        None => None,
    };
    Ok(Arc::new(FaultInjection { abort, delay }))
}

impl Plugin for FaultInjection {
    fn rewrite(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let abort = self.abort.as_ref().and_then(|a| {
            if !a.selector.selects(ctx, req) {
                return None;
            }
            let text = a
                .body
                .as_ref()
                .map(|b| b.render(ctx, req).0)
                .unwrap_or_default();
            let mut response = Response::new(full(text));
            *response.status_mut() = a.status;
            for (name, template) in &a.headers {
                if let Ok(value) = HeaderValue::from_str(&template.render(ctx, req).0) {
                    response.headers_mut().insert(name.clone(), value);
                }
            }
            Some(response)
        });
        let delay = self
            .delay
            .as_ref()
            .filter(|(_, selector)| selector.selects(ctx, req))
            .map(|(d, _)| *d);
        match (delay, abort) {
            (Some(d), abort) => Flow::Wait(Box::pin(async move {
                tokio::time::sleep(d).await;
                abort.map_or(Flow::Continue, Flow::Respond)
            })),
            (None, Some(response)) => Flow::Respond(response),
            (None, None) => Flow::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, body_text, consumers, ctx, env, request};
    use super::*;

    fn run(config: serde_json::Value, uri: &str) -> Flow {
        let p = compile(&config, &env()).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        p.rewrite(&mut ctx, &mut request(uri, &[]))
    }

    #[test]
    fn abort_answers_with_the_status_body_and_headers() {
        let flow = run(
            serde_json::json!({"abort": {"http_status": 418, "body": "no, $remote_addr", "headers": {"x-fault": "$arg_who"}}}),
            "/?who=me",
        );
        let Flow::Respond(r) = flow else {
            panic!("{flow:?}")
        };
        assert_eq!(r.status(), 418);
        assert_eq!(r.headers()["x-fault"], "me");
        assert_eq!(body_text(r), "no, 10.0.0.7");
    }

    #[test]
    fn vars_and_percentages_select_requests() {
        let config = serde_json::json!({"abort": {"http_status": 503, "vars": [[["arg_name", "==", "jack"]], [["arg_age", "<", 18]]]}});
        assert!(matches!(
            run(config.clone(), "/?name=jack"),
            Flow::Respond(_)
        ));
        assert!(matches!(run(config.clone(), "/?age=9"), Flow::Respond(_)));
        assert!(matches!(
            run(config.clone(), "/?name=rose&age=30"),
            Flow::Continue
        ));
        assert!(matches!(run(config, "/"), Flow::Continue));
        let never = serde_json::json!({"abort": {"http_status": 503, "percentage": 0}});
        assert!((0..50).all(|_| matches!(run(never.clone(), "/"), Flow::Continue)));
        let half = serde_json::json!({"abort": {"http_status": 503, "percentage": 50}});
        let aborted = (0..2000)
            .filter(|_| matches!(run(half.clone(), "/"), Flow::Respond(_)))
            .count();
        assert!((800..1200).contains(&aborted), "{aborted} of 2000 at 50%");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_waits_then_goes_on_or_aborts() {
        let start = tokio::time::Instant::now();
        let Flow::Wait(wait) = run(serde_json::json!({"delay": {"duration": 1.5}}), "/") else {
            panic!("a wait")
        };
        assert!(matches!(wait.await, Flow::Continue));
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        let Flow::Wait(wait) = run(
            serde_json::json!({"delay": {"duration": 0.2}, "abort": {"http_status": 500}}),
            "/",
        ) else {
            panic!("a wait")
        };
        let Flow::Respond(r) = wait.await else {
            panic!("then the abort")
        };
        assert_eq!(r.status(), 500);
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (serde_json::json!({}), "", "needs abort or delay"),
                (
                    serde_json::json!({"abort": {}}),
                    ".abort",
                    "missing field `http_status`",
                ),
                (
                    serde_json::json!({"abort": {"http_status": 199}}),
                    ".abort.http_status",
                    "out of range",
                ),
                (
                    serde_json::json!({"abort": {"http_status": 500, "percentage": 101}}),
                    ".abort.percentage",
                    "out of range",
                ),
                (
                    serde_json::json!({"abort": {"http_status": 500, "percentage": -1}}),
                    ".abort.percentage",
                    "invalid value",
                ),
                (
                    serde_json::json!({"abort": {"http_status": 500, "vars": []}}),
                    ".abort.vars",
                    "non-empty list",
                ),
                (
                    serde_json::json!({"abort": {"http_status": 500, "vars": [[["nope", "==", 1]]]}}),
                    ".abort.vars[0][0]",
                    "not a variable",
                ),
                (
                    serde_json::json!({"abort": {"http_status": 500, "body": "$nope"}}),
                    ".abort.body",
                    "$nope",
                ),
                (
                    serde_json::json!({"abort": {"http_status": 500, "headers": {"a b": "1"}}}),
                    ".abort.headers.a b",
                    "not a header name",
                ),
                (
                    serde_json::json!({"delay": {"duration": -1}}),
                    ".delay.duration",
                    "out of range",
                ),
                (
                    serde_json::json!({"delay": {"duration": 3601}}),
                    ".delay.duration",
                    "out of range",
                ),
                (
                    serde_json::json!({"delay": {"duration": "1s"}}),
                    ".delay.duration",
                    "invalid type",
                ),
            ],
        );
    }
}
