//! `limit-count`: at most `count` requests per `time_window` seconds per
//! key, a fixed window, as APISIX's plugin of that name (`policy: local`).
//!
//! The key is a variable (`key_type: var`, `key: remote_addr`, the
//! default; `consumer_name`, `http_x_user_id`...), a combination
//! (`var_combination`, `key: "$remote_addr $consumer_name"`), or one
//! `constant` for all. A key whose variables are all empty falls back to
//! the client address, as in APISIX. A window starts at its key's first
//! request. Counters live in the compiled plugin: a plugin on a service
//! counts across its routes, and a counter survives config updates that
//! leave the plugin's config unchanged. Rejections are `rejected_code`
//! (503) with `{"error_msg": rejected_msg}` when set; admitted and rejected
//! responses carry `X-RateLimit-Limit`, `-Remaining` and `-Reset` unless
//! `show_limit_quota_header` is false. One mutex guards the counters, so
//! concurrent requests admit exactly `count`. With `policy: redis` the
//! counters are in a Redis server that many sidecars share
//! (`limits::redis`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use http::{request, HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;

use super::limits::redis::{self, Policy, Store};
use super::limits::{self, Key, KeyType, Rejection};
use super::{in_range, parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("limit-count", 1002, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Requests admitted per window, 1 to 1,000,000,000.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    count: u64,
    /// The window in seconds, 1 to 31,536,000 (a year).
    #[schemars(range(min = 1, max = 31_536_000))]
    time_window: u64,
    #[serde(default)]
    key_type: KeyType,
    #[serde(default = "limits::default_key")]
    key: String,
    /// 200 to 599.
    #[serde(default = "limits::default_rejected_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    policy: Policy,
    /// With `policy: redis`: admit requests when Redis cannot answer in
    /// time (else refuse them with 500).
    #[serde(default)]
    allow_degradation: bool,
    /// With `policy: redis`: the server.
    #[serde(default)]
    redis_host: Option<String>,
    /// 1 to 65535.
    #[serde(default = "redis::default_port")]
    #[schemars(range(min = 1, max = 65535))]
    redis_port: u16,
    #[serde(default)]
    redis_username: Option<String>,
    #[serde(default)]
    redis_password: Option<String>,
    /// 0 to 15.
    #[serde(default)]
    #[schemars(range(min = 0, max = 15))]
    redis_database: i64,
    /// Milliseconds a request may wait for Redis, 1 to 60,000.
    #[serde(default = "redis::default_timeout")]
    #[schemars(range(min = 1, max = 60_000))]
    redis_timeout: u64,
    #[serde(default = "yes")]
    show_limit_quota_header: bool,
    /// Configs with one group share their counters.
    #[serde(default)]
    group: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug)]
struct LimitCount {
    count: u64,
    window: Duration,
    key: Key,
    rejection: Rejection,
    headers: bool,
    counters: Mutex<Counters>,
    limit_value: HeaderValue,
    /// `policy: redis`: the shared counters, and the key prefix.
    remote: Option<(Arc<Store>, Option<String>)>,
}

#[derive(Debug)]
struct Counters {
    windows: HashMap<String, Window>,
    /// Past this many keys, expired windows are swept before inserting.
    sweep_at: usize,
    /// The last `X-RateLimit-Reset` value made: it changes once a second,
    /// so most responses share it instead of formatting their own.
    reset_header: (u64, HeaderValue),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    used: u64,
}

const SWEEP_FIRST: usize = 1024;

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    let settings = redis::Settings {
        host: config.redis_host.clone(),
        port: config.redis_port,
        username: config.redis_username.clone(),
        password: config.redis_password.clone(),
        database: config.redis_database,
        timeout: config.redis_timeout,
        allow_degradation: config.allow_degradation,
    };
    let remote = Store::for_policy(config.policy, settings, "limit-count", env)?
        .map(|store| (Arc::new(store), config.group.clone()));
    let mut limit = build(config)?;
    limit.remote = remote;
    Ok(Arc::new(limit))
}

fn build(config: Config) -> Result<LimitCount, Fault> {
    in_range("count", config.count, 1..=1_000_000_000)?;
    in_range("time_window", config.time_window, 1..=31_536_000)?;
    if config.group.as_deref() == Some("") {
        return Err(Fault::new("group", "must not be empty"));
    }
    let key = Key::compile(config.key_type, &config.key)?;
    let rejection = Rejection::compile(config.rejected_code, config.rejected_msg.as_deref())?;
    Ok(LimitCount {
        count: config.count,
        window: Duration::from_secs(config.time_window),
        key,
        rejection,
        headers: config.show_limit_quota_header,
        counters: Mutex::new(Counters {
            windows: HashMap::new(),
            sweep_at: SWEEP_FIRST,
            reset_header: (0, HeaderValue::from_static("0")),
        }),
        limit_value: HeaderValue::from(config.count),
        remote: None,
    })
}

/// What the counter said.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    admitted: bool,
    remaining: u64,
    /// Seconds until the window ends, rounded up.
    reset: u64,
    /// `reset` as a header value.
    reset_header: HeaderValue,
}

impl LimitCount {
    fn incoming(&self, key: &str, now: Instant) -> Verdict {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.window;
        if counters.windows.len() >= counters.sweep_at && !counters.windows.contains_key(key) {
            counters
                .windows
                .retain(|_, w| now.duration_since(w.started) < window);
            counters.sweep_at = (counters.windows.len() * 2).max(SWEEP_FIRST);
        }
        let count = self.count;
        let decide = |entry: &mut Window| {
            if now.duration_since(entry.started) >= window {
                *entry = Window {
                    started: now,
                    used: 0,
                };
            }
            let left = window.saturating_sub(now.duration_since(entry.started));
            let reset = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            if entry.used >= count {
                return (false, 0, reset);
            }
            entry.used += 1;
            (true, count - entry.used, reset)
        };
        // Looked up by reference: a known key (the usual case) costs no
        // allocation.
        let (admitted, remaining, reset) = match counters.windows.get_mut(key) {
            Some(entry) => decide(entry),
            None => {
                let mut entry = Window {
                    started: now,
                    used: 0,
                };
                let decided = decide(&mut entry);
                counters.windows.insert(key.to_owned(), entry);
                decided
            }
        };
        if counters.reset_header.0 != reset {
            counters.reset_header = (reset, HeaderValue::from(reset));
        }
        Verdict {
            admitted,
            remaining,
            reset,
            reset_header: counters.reset_header.1.clone(),
        }
    }
}

impl LimitCount {
    /// `policy: redis`: the count happens in Redis, so the request waits
    /// for it (at most `redis_timeout`). The counter is named by the group,
    /// else by the service and route, so that sidecars with the same config
    /// share it.
    fn remote_access(
        &self,
        ctx: &Ctx<'_>,
        remote: &Arc<Store>,
        group: Option<&str>,
        key: &str,
    ) -> Flow {
        let name = match group {
            Some(group) => format!("remora:limit-count:{group}:{key}"),
            None => format!("remora:limit-count:{}:{}:{key}", ctx.service, ctx.route),
        };
        let remote = remote.clone();
        let (count, window, headers) = (self.count, self.window, self.headers);
        let limit = self.limit_value.clone();
        let rejected = self.rejection.response();
        Flow::Wait(Box::pin(async move {
            let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            let (remaining, reset_ms) = match remote
                .eval::<(i64, i64), i64>(&COUNT_SCRIPT, name, &[count, window_ms])
                .await
            {
                Ok(counted) => counted,
                Err(degraded) => return degraded,
            };
            let quota = [
                (LIMIT, limit),
                (
                    REMAINING,
                    super::unindexed(HeaderValue::from(remaining.max(0))),
                ),
                (RESET, HeaderValue::from((reset_ms.max(0) + 999) / 1000)),
            ];
            let quota = if headers { quota.to_vec() } else { Vec::new() };
            if remaining >= 0 {
                Flow::ContinueWith(quota)
            } else {
                let mut r = rejected;
                for (name, value) in quota {
                    r.headers_mut().insert(name, value);
                }
                Flow::Respond(r)
            }
        }))
    }
}

/// One window per Redis key, which expires with it: set to `count - 1`
/// (with the window as its expiry) when absent, decremented otherwise.
/// Returns what is left after this request (negative: rejected) and the
/// milliseconds left in the window.
static COUNT_SCRIPT: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(
        r"
local ttl = redis.call('pttl', KEYS[1])
if ttl < 0 then
  redis.call('set', KEYS[1], ARGV[1] - 1, 'PX', ARGV[2])
  return {tonumber(ARGV[1]) - 1, tonumber(ARGV[2])}
end
return {redis.call('decr', KEYS[1]), ttl}
",
    )
});

const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

impl Plugin for LimitCount {
    fn access(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let key = self.key.of(ctx, req);
        if let Some((remote, group)) = &self.remote {
            return self.remote_access(ctx, remote, group.as_deref(), &key);
        }
        let verdict = self.incoming(&key, Instant::now());
        drop(key); // It may borrow from `ctx`, which the headers change.
        if self.headers {
            ctx.set_response_header(LIMIT, self.limit_value.clone());
            ctx.set_response_header(
                REMAINING,
                super::unindexed(HeaderValue::from(verdict.remaining)),
            );
            ctx.set_response_header(RESET, verdict.reset_header);
        }
        if verdict.admitted {
            return Flow::Continue;
        }
        let response = self.rejection.response();
        Flow::Respond(response)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{consumers, ctx, env, request};
    use super::*;

    fn compiled(config: serde_json::Value) -> Arc<dyn Plugin> {
        compile(&config, &env()).expect("compiles")
    }

    fn status(flow: &Flow) -> u16 {
        match flow {
            Flow::Continue => 200,
            Flow::Respond(r) => r.status().as_u16(),
            Flow::Wait(_) | Flow::ContinueWith(_) => 0,
        }
    }

    #[test]
    fn a_window_admits_count_then_rejects_and_reopens() {
        let p = LimitCount::from_json(serde_json::json!({"count": 3, "time_window": 10}));
        let t0 = Instant::now();
        let verdicts: Vec<_> = (0..5).map(|_| p.incoming("k", t0)).collect();
        assert_eq!(
            verdicts
                .iter()
                .map(|v| (v.admitted, v.remaining))
                .collect::<Vec<_>>(),
            [(true, 2), (true, 1), (true, 0), (false, 0), (false, 0)]
        );
        assert_eq!(verdicts[0].reset, 10);
        let later = p.incoming("k", t0 + Duration::from_millis(9_500));
        assert_eq!((later.admitted, later.reset), (false, 1));
        let other = p.incoming("other", t0);
        assert_eq!(
            (other.admitted, other.remaining),
            (true, 2),
            "keys count apart"
        );
        let next = p.incoming("k", t0 + Duration::from_secs(10));
        assert_eq!((next.admitted, next.remaining, next.reset), (true, 2, 10));
    }

    #[test]
    fn the_reset_header_follows_the_window_it_was_counted_in() {
        // The header value is shared while it stays the same; it must never
        // be one made for another second or another key's window.
        let p = LimitCount::from_json(serde_json::json!({"count": 100, "time_window": 10}));
        let t0 = Instant::now();
        let header = |key: &str, ms: u64| {
            let v = p.incoming(key, t0 + Duration::from_millis(ms));
            assert_eq!(
                v.reset_header,
                v.reset.to_string().as_str(),
                "{key} at {ms} ms"
            );
            v.reset_header
        };
        assert_eq!(header("a", 0), "10");
        assert_eq!(header("a", 400), "10");
        assert_eq!(header("a", 1_200), "9");
        assert_eq!(header("b", 1_200), "10", "b's window starts now");
        assert_eq!(header("a", 1_300), "9");
        assert_eq!(header("a", 9_999), "1");
        assert_eq!(header("a", 10_000), "10", "a new window");
    }

    #[test]
    fn threads_hammering_one_key_admit_exactly_count() {
        let p = Arc::new(LimitCount::from_json(
            serde_json::json!({"count": 1000, "time_window": 60}),
        ));
        let now = Instant::now();
        let admitted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let p = p.clone();
                    s.spawn(move || {
                        (0..500).filter(|_| p.incoming("one", now).admitted).count() as u64
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn keys_come_from_vars_combinations_and_fall_back_to_the_address() {
        let compiled_consumers = consumers(&[]);
        let mut ctx = ctx(&compiled_consumers);
        let req = request("/p?user=u1", &[("x-user-id", "42")]);
        let key = |config: serde_json::Value, ctx: &Ctx<'_>| {
            LimitCount::from_json(config).key.of(ctx, &req).into_owned()
        };
        assert_eq!(
            key(serde_json::json!({"count": 1, "time_window": 1}), &ctx),
            "10.0.0.7"
        );
        assert_eq!(
            key(
                serde_json::json!({"count": 1, "time_window": 1, "key": "http_x_user_id"}),
                &ctx
            ),
            "42"
        );
        assert_eq!(
            key(
                serde_json::json!({"count": 1, "time_window": 1, "key": "arg_user"}),
                &ctx
            ),
            "u1"
        );
        assert_eq!(
            key(
                serde_json::json!({"count": 1, "time_window": 1, "key": "consumer_name"}),
                &ctx
            ),
            "10.0.0.7",
            "no consumer: the address"
        );
        ctx.consumer = Some(super::super::testing::consumer("jack"));
        assert_eq!(
            key(
                serde_json::json!({"count": 1, "time_window": 1, "key": "consumer_name"}),
                &ctx
            ),
            "jack"
        );
        assert_eq!(
            key(
                serde_json::json!({"count": 1, "time_window": 1, "key_type": "var_combination", "key": "$consumer_name:$http_x_user_id"}),
                &ctx
            ),
            "jack:42"
        );
        assert_eq!(
            key(
                serde_json::json!({"count": 1, "time_window": 1, "key_type": "var_combination", "key": "$http_x_none $arg_none"}),
                &ctx
            ),
            "10.0.0.7"
        );
        assert_eq!(
            key(
                serde_json::json!({"count": 1, "time_window": 1, "key_type": "constant", "key": "x"}),
                &ctx
            ),
            ""
        );
    }

    #[test]
    fn rejections_carry_the_code_the_message_and_the_quota_headers() {
        let p = compiled(
            serde_json::json!({"count": 1, "time_window": 60, "rejected_code": 429, "rejected_msg": "slow down"}),
        );
        let compiled_consumers = consumers(&[]);
        let mut ctx = ctx(&compiled_consumers);
        let mut req = request("/", &[]);
        assert_eq!(status(&p.access(&mut ctx, &mut req)), 200);
        let flow = p.access(&mut ctx, &mut req);
        let Flow::Respond(r) = flow else {
            panic!("{flow:?}")
        };
        assert_eq!(r.status(), 429);
        assert_eq!(
            super::super::testing::body_text(r),
            "{\"error_msg\":\"slow down\"}\n"
        );
        let headers: Vec<_> = ctx
            .response_headers
            .iter()
            .map(|(n, v, _)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                "x-ratelimit-limit: 1",
                "x-ratelimit-remaining: 0",
                "x-ratelimit-reset: 60",
                "x-ratelimit-limit: 1",
                "x-ratelimit-remaining: 0",
                "x-ratelimit-reset: 60",
            ]
        );
        // Only the value that changes on every request stays out of HPACK
        // tables.
        let sensitive: Vec<_> = ctx
            .response_headers
            .iter()
            .map(|(_, v, _)| v.is_sensitive())
            .collect();
        assert_eq!(sensitive, [false, true, false, false, true, false]);
        let quiet = compiled(
            serde_json::json!({"count": 1, "time_window": 60, "show_limit_quota_header": false}),
        );
        let mut ctx = super::super::testing::ctx(&compiled_consumers);
        quiet.access(&mut ctx, &mut req);
        let flow = quiet.access(&mut ctx, &mut req);
        assert_eq!(status(&flow), 503, "APISIX's default");
        assert!(ctx.response_headers.is_empty());
    }

    #[test]
    fn bad_configs_name_their_field() {
        super::super::testing::assert_faults(
            compile,
            &[
                (
                    serde_json::json!({"time_window": 1}),
                    "",
                    "missing field `count`",
                ),
                (
                    serde_json::json!({"count": 1}),
                    "",
                    "missing field `time_window`",
                ),
                (
                    serde_json::json!({"count": 0, "time_window": 1}),
                    ".count",
                    "out of range",
                ),
                (
                    serde_json::json!({"count": -1, "time_window": 1}),
                    ".count",
                    "invalid value",
                ),
                (
                    serde_json::json!({"count": "ten", "time_window": 1}),
                    ".count",
                    "invalid type",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 0}),
                    ".time_window",
                    "out of range",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 31_536_001u64}),
                    ".time_window",
                    "out of range",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "rejected_code": 199}),
                    ".rejected_code",
                    "out of range",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "rejected_code": 600}),
                    ".rejected_code",
                    "out of range",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "rejected_msg": ""}),
                    ".rejected_msg",
                    "empty",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "key": "nope"}),
                    ".key",
                    "not a variable",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "key_type": "var_combination", "key": "plain"}),
                    ".key",
                    "names variables",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "key_type": "var_combination", "key": "$bogus"}),
                    ".key",
                    "$bogus",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "key_type": "other"}),
                    ".key_type",
                    "unknown variant",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "policy": "redis"}),
                    ".redis_host",
                    "needs redis_host",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "policy": "redis", "redis_host": "r", "redis_port": 0}),
                    ".redis_port",
                    "out of range",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "policy": "redis", "redis_host": "r", "redis_database": 16}),
                    ".redis_database",
                    "out of range",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "policy": "redis", "redis_host": "r", "redis_timeout": 0}),
                    ".redis_timeout",
                    "out of range",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "policy": "redis", "redis_host": "r", "redis_timeout": 60_001}),
                    ".redis_timeout",
                    "out of range",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "policy": "redis-cluster"}),
                    ".policy",
                    "not supported",
                ),
                (
                    serde_json::json!({"count": 1, "time_window": 1, "extra": 1}),
                    ".extra",
                    "unknown field `extra`",
                ),
            ],
        );
    }

    #[test]
    fn expired_windows_are_swept_when_keys_pile_up() {
        let p = LimitCount::from_json(serde_json::json!({"count": 1, "time_window": 1}));
        let t0 = Instant::now();
        for i in 0..SWEEP_FIRST {
            p.incoming(&format!("k{i}"), t0);
        }
        p.incoming("late", t0 + Duration::from_secs(2));
        let counters = p.counters.lock().unwrap();
        assert_eq!(counters.windows.len(), 1, "only the live key stays");
    }

    impl LimitCount {
        fn from_json(config: serde_json::Value) -> LimitCount {
            build(parse(&config).expect("parses")).expect("builds")
        }
    }
}
