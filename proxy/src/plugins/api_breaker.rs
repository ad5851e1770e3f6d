//! `api-breaker`: a circuit breaker on a route's responses, as APISIX's
//! plugin of that name.
//!
//! Responses whose status is in `unhealthy.http_statuses` (500) count as
//! failures; every `unhealthy.failures` (3) of them trip the breaker, which
//! then answers `break_response_code` (with `break_response_body` and
//! `break_response_headers`) without calling the upstream, for 2, 4, 8...
//! seconds (doubling with each trip, at most `max_breaker_sec`, 300).
//! Once it lets requests through again, `healthy.successes` (3) responses
//! in `healthy.http_statuses` (200) close it and forget the failures. The
//! breaker counts per route (APISIX counts per host and URI). Its own break
//! responses are not counted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{request, HeaderName, HeaderValue, Response, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{header_name, in_range, parse, Ctx, Descriptor, Env, Fault, Flow, LogEntry, Plugin};
use crate::body::full;

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("api-breaker", 1005, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// 200 to 599.
    #[schemars(range(min = 200, max = 599))]
    break_response_code: u16,
    #[serde(default)]
    break_response_body: Option<String>,
    #[serde(default)]
    break_response_headers: Vec<KeyValue>,
    /// 3 to 86400.
    #[serde(default = "default_max")]
    #[schemars(range(min = 3, max = 86400))]
    max_breaker_sec: u64,
    #[serde(default)]
    unhealthy: Unhealthy,
    #[serde(default)]
    healthy: Healthy,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KeyValue {
    key: String,
    value: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Unhealthy {
    /// 500 to 599.
    #[serde(default = "default_unhealthy")]
    http_statuses: Vec<u16>,
    /// 1 to 1000.
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 1000))]
    failures: u32,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Healthy {
    /// 200 to 499.
    #[serde(default = "default_healthy")]
    http_statuses: Vec<u16>,
    /// 1 to 1000.
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 1000))]
    successes: u32,
}

impl Default for Unhealthy {
    fn default() -> Self {
        Unhealthy {
            http_statuses: default_unhealthy(),
            failures: three(),
        }
    }
}

impl Default for Healthy {
    fn default() -> Self {
        Healthy {
            http_statuses: default_healthy(),
            successes: three(),
        }
    }
}

fn default_max() -> u64 {
    300
}
fn default_unhealthy() -> Vec<u16> {
    vec![500]
}
fn default_healthy() -> Vec<u16> {
    vec![200]
}
fn three() -> u32 {
    3
}

#[derive(Debug)]
struct ApiBreaker {
    code: StatusCode,
    body: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    max: Duration,
    unhealthy: Vec<u16>,
    failures: u32,
    healthy: Vec<u16>,
    successes: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    unhealthy: u32,
    healthy: u32,
    open_until: Option<Instant>,
}

const BROKE: &str = "api-breaker";

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    Ok(Arc::new(build(parse(value)?)?))
}

fn build(c: Config) -> Result<ApiBreaker, Fault> {
    in_range("break_response_code", c.break_response_code, 200..=599)?;
    in_range("max_breaker_sec", c.max_breaker_sec, 3..=86400)?;
    in_range("unhealthy.failures", c.unhealthy.failures, 1..=1000)?;
    in_range("healthy.successes", c.healthy.successes, 1..=1000)?;
    for (i, s) in c.unhealthy.http_statuses.iter().enumerate() {
        in_range(&format!("unhealthy.http_statuses[{i}]"), *s, 500..=599)?;
    }
    for (i, s) in c.healthy.http_statuses.iter().enumerate() {
        in_range(&format!("healthy.http_statuses[{i}]"), *s, 200..=499)?;
    }
    let headers = c
        .break_response_headers
        .iter()
        .enumerate()
        .map(|(i, kv)| {
            let at = format!("break_response_headers[{i}]");
            let value = HeaderValue::from_str(&kv.value)
                .map_err(|_| Fault::new(&at, format!("{:?} is not a header value", kv.value)))?;
            Ok((header_name(&at, &kv.key)?, value))
        })
        .collect::<Result<_, Fault>>()?;
    Ok(ApiBreaker {
        code: StatusCode::from_u16(c.break_response_code)
            .map_err(|_| Fault::new("break_response_code", "not a status code"))?,
        body: c.break_response_body.unwrap_or_default(),
        headers,
        max: Duration::from_secs(c.max_breaker_sec),
        unhealthy: c.unhealthy.http_statuses,
        failures: c.unhealthy.failures,
        healthy: c.healthy.http_statuses,
        successes: c.healthy.successes,
        state: Mutex::default(),
    })
}

impl ApiBreaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_open(&self, now: Instant) -> bool {
        self.lock().open_until.is_some_and(|until| now < until)
    }

    /// Counts a response; trips or closes the breaker.
    fn observe(&self, status: u16, now: Instant) {
        let mut s = self.lock();
        if self.unhealthy.contains(&status) {
            s.healthy = 0;
            s.unhealthy = s.unhealthy.saturating_add(1);
            if s.unhealthy.is_multiple_of(self.failures) {
                let trips = (s.unhealthy / self.failures).min(30);
                let open = Duration::from_secs(1u64 << trips).min(self.max);
                s.open_until = Some(now + open);
            }
        } else if self.healthy.contains(&status) && s.unhealthy > 0 {
            s.healthy += 1;
            if s.healthy >= self.successes {
                *s = State::default();
            }
        }
    }
}

impl Plugin for ApiBreaker {
    fn access(&self, ctx: &mut Ctx<'_>, _req: &mut request::Parts) -> Flow {
        if !self.is_open(Instant::now()) {
            return Flow::Continue;
        }
        ctx.mark(BROKE);
        let mut r = Response::new(full(self.body.clone()));
        *r.status_mut() = self.code;
        for (name, value) in &self.headers {
            r.headers_mut().insert(name.clone(), value.clone());
        }
        Flow::Respond(r)
    }

    fn log(&self, ctx: &Ctx<'_>, entry: &LogEntry<'_>) {
        if !ctx.marked(BROKE) {
            self.observe(entry.status.as_u16(), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::assert_faults;
    use super::*;

    fn breaker(config: serde_json::Value) -> ApiBreaker {
        build(parse(&config).expect("parses")).expect("builds")
    }

    #[test]
    fn failures_trip_it_for_doubling_periods_and_successes_close_it() {
        let b = breaker(serde_json::json!({"break_response_code": 502, "max_breaker_sec": 5}));
        let t0 = Instant::now();
        b.observe(500, t0);
        b.observe(500, t0);
        assert!(!b.is_open(t0), "two failures: still closed");
        b.observe(404, t0);
        b.observe(500, t0);
        assert!(b.is_open(t0), "the third trips it");
        assert!(b.is_open(t0 + Duration::from_millis(1999)));
        assert!(!b.is_open(t0 + Duration::from_secs(2)), "open for 2 s");
        let t1 = t0 + Duration::from_secs(2);
        for _ in 0..3 {
            b.observe(500, t1);
        }
        assert!(b.is_open(t1 + Duration::from_millis(3999)), "then 4 s");
        assert!(!b.is_open(t1 + Duration::from_secs(4)));
        let t2 = t1 + Duration::from_secs(4);
        for _ in 0..3 {
            b.observe(503, t2);
        }
        assert!(!b.is_open(t2), "503 is not unhealthy by default");
        for _ in 0..3 {
            b.observe(500, t2);
        }
        assert!(
            b.is_open(t2 + Duration::from_millis(4999)),
            "8 s capped at 5"
        );
        assert!(!b.is_open(t2 + Duration::from_secs(5)));
        // Healthy responses close it and forget the failures.
        for _ in 0..3 {
            b.observe(200, t2);
        }
        b.observe(500, t2);
        b.observe(500, t2);
        assert!(!b.is_open(t2), "counting from zero again");
    }

    #[test]
    fn an_open_breaker_answers_with_the_break_response() {
        let compiled = super::super::testing::consumers(&[]);
        let p = build(
            parse(&serde_json::json!({
                "break_response_code": 503, "break_response_body": "try later",
                "break_response_headers": [{"key": "retry-after", "value": "2"}],
                "unhealthy": {"failures": 1}
            }))
            .expect("parses"),
        )
        .expect("builds");
        p.observe(500, Instant::now());
        let mut ctx = super::super::testing::ctx(&compiled);
        let Flow::Respond(r) = p.access(&mut ctx, &mut super::super::testing::request("/", &[]))
        else {
            panic!("open")
        };
        assert_eq!(
            (
                r.status().as_u16(),
                r.headers()["retry-after"].to_str().unwrap()
            ),
            (503, "2")
        );
        assert_eq!(super::super::testing::body_text(r), "try later");
        // Its own answer is not counted.
        p.log(
            &ctx,
            &LogEntry {
                status: StatusCode::SERVICE_UNAVAILABLE,
                latency: Duration::ZERO,
                headers: &http::HeaderMap::new(),
                upstream: None,
            },
        );
        assert_eq!(p.lock().unhealthy, 1);
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (
                    serde_json::json!({}),
                    "",
                    "missing field `break_response_code`",
                ),
                (
                    serde_json::json!({"break_response_code": 199}),
                    ".break_response_code",
                    "out of range",
                ),
                (
                    serde_json::json!({"break_response_code": 502, "max_breaker_sec": 2}),
                    ".max_breaker_sec",
                    "out of range",
                ),
                (
                    serde_json::json!({"break_response_code": 502, "unhealthy": {"failures": 0}}),
                    ".unhealthy.failures",
                    "out of range",
                ),
                (
                    serde_json::json!({"break_response_code": 502, "unhealthy": {"http_statuses": [404]}}),
                    ".unhealthy.http_statuses[0]",
                    "out of range",
                ),
                (
                    serde_json::json!({"break_response_code": 502, "healthy": {"http_statuses": [500]}}),
                    ".healthy.http_statuses[0]",
                    "out of range",
                ),
                (
                    serde_json::json!({"break_response_code": 502, "break_response_headers": [{"key": "a b", "value": "1"}]}),
                    ".break_response_headers[0]",
                    "not a header name",
                ),
            ],
        );
    }
}
