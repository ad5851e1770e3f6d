//! `limit-req`: a leaky bucket per key, as APISIX's plugin of that name
//! (nginx's `limit_req`).
//!
//! Requests drain at `rate` per second; up to `burst` more may queue. Each
//! request adds one to its key's excess, which leaks at `rate`; a request
//! that would push the excess past `burst` is rejected (`rejected_code`,
//! 503; `{"error_msg": rejected_msg}` when set). An admitted request with
//! excess waits `excess / rate` seconds before it goes on, unless `nodelay`.
//! The key is made as limit-count's (`key_type`, `key`). One lock guards the
//! buckets, so concurrent requests are counted exactly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::request;
use schemars::JsonSchema;
use serde::Deserialize;

use super::limits::{self, Key, KeyType, Rejection};
use super::{parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("limit-req", 1001, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Requests per second, above 0 and at most 1,000,000.
    rate: f64,
    /// Requests that may queue past the rate, 0 to 1,000,000.
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
    /// Accepted; meaningful with a remote policy.
    #[serde(default)]
    #[allow(dead_code)]
    allow_degradation: bool,
    #[serde(default = "local")]
    policy: String,
}

fn local() -> String {
    "local".to_owned()
}

#[derive(Debug)]
struct LimitReq {
    rate: f64,
    burst: f64,
    key: Key,
    rejection: Rejection,
    nodelay: bool,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    excess: f64,
    last: Instant,
}

/// Past this many keys, buckets that have drained are dropped.
const SWEEP_AT: usize = 4096;

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    Ok(Arc::new(build(parse(value)?)?))
}

fn build(c: Config) -> Result<LimitReq, Fault> {
    if !(c.rate > 0.0 && c.rate <= 1_000_000.0) {
        return Err(Fault::new(
            "rate",
            format!("{} is out of range: above 0, at most 1000000", c.rate),
        ));
    }
    if !(0.0..=1_000_000.0).contains(&c.burst) {
        return Err(Fault::new(
            "burst",
            format!("{} is out of range: 0 to 1000000", c.burst),
        ));
    }
    if c.policy != "local" {
        return Err(Fault::new(
            "policy",
            "only local buckets are supported by this proxy yet; use policy: local",
        ));
    }
    Ok(LimitReq {
        rate: c.rate,
        burst: c.burst,
        key: Key::compile(c.key_type, &c.key)?,
        rejection: Rejection::compile(c.rejected_code, c.rejected_msg.as_deref())?,
        nodelay: c.nodelay,
        buckets: Mutex::new(HashMap::new()),
    })
}

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

impl Plugin for LimitReq {
    fn access(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let key = self.key.of(ctx, req);
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
                    ".policy",
                    "only local",
                ),
            ],
        );
    }
}
