//! `limit-req`: a leaky bucket per key, as APISIX's plugin of that name
//! (nginx's `limit_req`).
//!
//! Requests drain at `rate` per second; up to `burst` more may queue. Each
//! request adds one to its key's excess, which leaks at `rate`; a request
//! that would push the excess past `burst` is rejected (`rejected_code`,
//! 503; `{"error_msg": rejected_msg}` when set). An admitted request with
//! excess waits `excess / rate` seconds before it goes on, unless `nodelay`.
//! The key is made as limit-count's (`key_type`, `key`). One lock guards the
//! buckets, so concurrent requests are counted exactly. With
//! `policy: redis` the buckets are in a Redis server that many sidecars
//! share (`limits::redis`), and the clock is Redis's, so sidecars whose
//! clocks differ still drain one bucket at one rate.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use http::request;
use schemars::JsonSchema;
use serde::Deserialize;

use super::limits::redis::{self, Policy, Store};
use super::limits::{self, Key, KeyType, Rejection};
use super::{parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("limit-req", 1001, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Requests per second, 0.001 (one per 1,000 s) to 1,000,000: with
    /// `burst`, this bounds a queued request's delay (`excess / rate`).
    #[schemars(range(min = 0.001, max = 1_000_000))]
    rate: f64,
    /// Requests that may queue past the rate, 0 to 1,000,000.
    #[schemars(range(min = 0, max = 1_000_000))]
    burst: f64,
    #[serde(default)]
    key_type: KeyType,
    #[serde(default = "limits::default_key")]
    key: String,
    #[serde(default = "limits::default_rejected_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    /// Admit queued requests at once instead of delaying them.
    #[serde(default)]
    nodelay: bool,
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
}

#[derive(Debug)]
struct LimitReq {
    rate: f64,
    burst: f64,
    key: Key,
    rejection: Rejection,
    nodelay: bool,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// `policy: redis`: the shared buckets.
    remote: Option<Arc<Store>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    excess: f64,
    last: Instant,
}

/// Past this many keys, buckets that have drained are dropped.
const SWEEP_AT: usize = 4096;

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
    let remote = Store::for_policy(config.policy, settings, "limit-req", env)?;
    let mut limit = build(config)?;
    limit.remote = remote.map(Arc::new);
    Ok(Arc::new(limit))
}

fn build(c: Config) -> Result<LimitReq, Fault> {
    if !(0.001..=1_000_000.0).contains(&c.rate) {
        return Err(Fault::new(
            "rate",
            format!("{} is out of range: 0.001 to 1000000", c.rate),
        ));
    }
    if !(0.0..=1_000_000.0).contains(&c.burst) {
        return Err(Fault::new(
            "burst",
            format!("{} is out of range: 0 to 1000000", c.burst),
        ));
    }
    Ok(LimitReq {
        rate: c.rate,
        burst: c.burst,
        key: Key::compile(c.key_type, &c.key)?,
        rejection: Rejection::compile(c.rejected_code, c.rejected_msg.as_deref())?,
        nodelay: c.nodelay,
        buckets: Mutex::new(HashMap::new()),
        remote: None,
    })
}

/// One bucket per Redis hash (`excess`, `last`, in Redis's own clock, ms),
/// as the local one: the excess leaks at `rate`, and a request that would
/// take it past `burst` changes nothing and gets -1. An admitted request
/// gets its delay in microseconds. The hash expires once it has drained.
static BUCKET_SCRIPT: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(
        r"
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('hmget', KEYS[1], 'excess', 'last')
local excess = 0
if b[1] and b[2] then
  excess = math.max(tonumber(b[1]) - rate * math.abs(now - tonumber(b[2])) / 1000 + 1, 0)
  if excess > burst then
    return -1
  end
end
redis.call('hset', KEYS[1], 'excess', tostring(excess), 'last', tostring(now))
redis.call('pexpire', KEYS[1], math.ceil((excess + 1) * 1000 / rate) + 1000)
return math.floor(excess * 1000000 / rate)
",
    )
});

impl LimitReq {
    /// The delay for an admitted request, or `None` for a rejected one.
    fn incoming(&self, key: &str, now: Instant) -> Option<Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_AT && !buckets.contains_key(key) {
            let rate = self.rate;
            buckets.retain(|_, b| b.excess - rate * now.duration_since(b.last).as_secs_f64() > 0.0);
        }
        let excess = match buckets.get(key) {
            Some(b) => {
                let drained = self.rate * now.saturating_duration_since(b.last).as_secs_f64();
                (b.excess - drained + 1.0).max(0.0)
            }
            None => 0.0,
        };
        if excess > self.burst {
            return None;
        }
        let bucket = Bucket { excess, last: now };
        match buckets.get_mut(key) {
            Some(b) => *b = bucket,
            None => {
                buckets.insert(key.to_owned(), bucket);
            }
        }
        Some(Duration::from_secs_f64(excess / self.rate))
    }
}

impl LimitReq {
    /// `policy: redis`: the bucket is in Redis, so the request waits for
    /// it (at most `redis_timeout`). It is named by the service and route,
    /// so that sidecars with the same config share it.
    fn remote_access(&self, ctx: &Ctx<'_>, remote: &Arc<Store>, key: &str) -> Flow {
        let name = format!("remora:limit-req:{}:{}:{key}", ctx.service, ctx.route);
        let remote = remote.clone();
        let args = [self.rate, self.burst];
        let nodelay = self.nodelay;
        let rejected = self.rejection.response();
        Flow::Wait(Box::pin(async move {
            match remote.eval::<i64, f64>(&BUCKET_SCRIPT, name, &args).await {
                Err(degraded) => degraded,
                Ok(micros) => match u64::try_from(micros) {
                    Err(_) => Flow::Respond(rejected),
                    Ok(micros) => {
                        let delay = Duration::from_micros(micros);
                        if !nodelay && delay >= Duration::from_millis(1) {
                            tokio::time::sleep(delay).await;
                        }
                        Flow::Continue
                    }
                },
            }
        }))
    }
}

impl Plugin for LimitReq {
    fn access(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let key = self.key.of(ctx, req);
        if let Some(remote) = &self.remote {
            return self.remote_access(ctx, remote, &key);
        }
        match self.incoming(&key, Instant::now()) {
            None => Flow::Respond(self.rejection.response()),
            Some(delay) if !self.nodelay && delay >= Duration::from_millis(1) => {
                Flow::Wait(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    Flow::Continue
                }))
            }
            Some(_) => Flow::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::assert_faults;
    use super::*;

    fn limit(config: serde_json::Value) -> LimitReq {
        build(parse(&config).expect("parses")).expect("builds")
    }

    #[test]
    fn a_bucket_admits_the_rate_plus_burst_and_delays_the_excess() {
        let l = limit(serde_json::json!({"rate": 2, "burst": 1, "key": "remote_addr"}));
        let t0 = Instant::now();
        // At once: the first passes, the second queues (0.5 s), the third
        // is past the burst.
        assert_eq!(l.incoming("k", t0), Some(Duration::ZERO));
        assert_eq!(l.incoming("k", t0), Some(Duration::from_millis(500)));
        assert_eq!(l.incoming("k", t0), None);
        // Half a second later one has leaked out: room for one more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.incoming("k", t1), Some(Duration::from_millis(500)));
        assert_eq!(l.incoming("k", t1), None);
        assert_eq!(l.incoming("other", t1), Some(Duration::ZERO), "keys apart");
        // Long idle: drained.
        assert_eq!(
            l.incoming("k", t1 + Duration::from_secs(10)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn the_slowest_rate_and_largest_burst_give_a_finite_delay() {
        let l = limit(serde_json::json!({"rate": 0.001, "burst": 1000000, "key": "remote_addr"}));
        let t0 = Instant::now();
        assert_eq!(l.incoming("k", t0), Some(Duration::ZERO));
        assert_eq!(l.incoming("k", t0), Some(Duration::from_secs(1000)));
    }

    #[test]
    fn threads_on_one_key_are_admitted_exactly() {
        let l = Arc::new(limit(
            serde_json::json!({"rate": 0.001, "burst": 99, "key": "remote_addr"}),
        ));
        let now = Instant::now();
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let l = l.clone();
                    s.spawn(move || (0..50).filter(|_| l.incoming("k", now).is_some()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(admitted, 100, "one, then a burst of 99");
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_wait_unless_nodelay() {
        let compiled = super::super::testing::consumers(&[]);
        let p = compile(
            &serde_json::json!({"rate": 4, "burst": 4, "key_type": "constant", "key": ""}),
            &super::super::testing::env(),
        )
        .expect("valid");
        let mut ctx = super::super::testing::ctx(&compiled);
        let mut req = super::super::testing::request("/", &[]);
        assert!(matches!(p.access(&mut ctx, &mut req), Flow::Continue));
        let Flow::Wait(wait) = p.access(&mut ctx, &mut req) else {
            panic!("queued")
        };
        let start = tokio::time::Instant::now();
        assert!(matches!(wait.await, Flow::Continue));
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        let fast = compile(&serde_json::json!({"rate": 4, "burst": 4, "key_type": "constant", "key": "", "nodelay": true}), &super::super::testing::env()).expect("valid");
        assert!(matches!(fast.access(&mut ctx, &mut req), Flow::Continue));
        assert!(matches!(fast.access(&mut ctx, &mut req), Flow::Continue));
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (serde_json::json!({"burst": 1}), "", "missing field `rate`"),
                (
                    serde_json::json!({"rate": 0, "burst": 1}),
                    ".rate",
                    "out of range",
                ),
                (
                    serde_json::json!({"rate": -1, "burst": 1}),
                    ".rate",
                    "out of range",
                ),
                // A queued request's delay (burst / rate seconds) would not
                // fit a Duration.
                (
                    serde_json::json!({"rate": 1e-300, "burst": 5}),
                    ".rate",
                    "out of range: 0.001 to 1000000",
                ),
                (
                    serde_json::json!({"rate": 1, "burst": -1}),
                    ".burst",
                    "out of range",
                ),
                (
                    serde_json::json!({"rate": 1, "burst": "x"}),
                    ".burst",
                    "invalid type",
                ),
                (
                    serde_json::json!({"rate": 1, "burst": 1, "key": "nope"}),
                    ".key",
                    "not a variable",
                ),
                (
                    serde_json::json!({"rate": 1, "burst": 1, "rejected_code": 600}),
                    ".rejected_code",
                    "out of range",
                ),
                (
                    serde_json::json!({"rate": 1, "burst": 1, "policy": "redis"}),
                    ".redis_host",
                    "policy redis needs redis_host",
                ),
                (
                    serde_json::json!({"rate": 1, "burst": 1, "policy": "redis-cluster", "redis_host": "10.0.0.1"}),
                    ".policy",
                    "redis-cluster is not supported",
                ),
                (
                    serde_json::json!({"rate": 1, "burst": 1, "policy": "redis", "redis_host": "10.0.0.1", "redis_timeout": 0}),
                    ".redis_timeout",
                    "out of range",
                ),
                (
                    serde_json::json!({"rate": 1, "burst": 1, "policy": "redis", "redis_host": "10.0.0.1", "redis_database": 16}),
                    ".redis_database",
                    "out of range",
                ),
                (
                    serde_json::json!({"rate": 1, "burst": 1, "policy": "memcached"}),
                    ".policy",
                    "unknown variant",
                ),
            ],
        );
    }
}
