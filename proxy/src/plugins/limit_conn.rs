//! `limit-conn`: at most `conn` requests in flight per key, as APISIX's
//! plugin of that name.
//!
//! Past `conn`, up to `burst` more are admitted after a delay
//! (`default_conn_delay` seconds times how many `conn`s over they are, or
//! just `default_conn_delay` with `only_use_default_delay`); past `conn +
//! burst` a request is rejected (`rejected_code`, 503; `{"error_msg":
//! rejected_msg}` when set). A request counts from `access` until it is
//! over: answered, or dropped when its client goes away (the slot is held
//! in the request's context, so it is always given back). It stops
//! counting when its response head is ready, not when the body ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::request;
use schemars::JsonSchema;
use serde::Deserialize;

use super::limits::{self, Key, KeyType, Rejection};
use super::{in_range, parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("limit-conn", 1003, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Requests in flight per key, 1 to 1,000,000.
    #[schemars(range(min = 1, max = 1_000_000))]
    conn: u64,
    /// More admitted after a delay, 0 to 1,000,000.
    #[schemars(range(min = 0, max = 1_000_000))]
    burst: u64,
    /// Seconds, above 0 and at most 60.
    default_conn_delay: f64,
    #[serde(default)]
    only_use_default_delay: bool,
    #[serde(default)]
    key_type: KeyType,
    #[serde(default = "limits::default_key")]
    key: String,
    #[serde(default = "limits::default_rejected_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    /// Accepted; meaningful with a remote policy.
    #[serde(default)]
    #[allow(dead_code)]
    allow_degradation: bool,
}

#[derive(Debug)]
struct LimitConn {
    conn: u64,
    burst: u64,
    delay: Duration,
    only_default: bool,
    key: Key,
    rejection: Rejection,
    in_flight: Arc<Mutex<HashMap<String, u64>>>,
}

/// A request's slot; given back when dropped.
#[derive(Debug)]
struct Slot {
    key: String,
    in_flight: Arc<Mutex<HashMap<String, u64>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    Ok(Arc::new(build(parse(value)?)?))
}

fn build(c: Config) -> Result<LimitConn, Fault> {
    in_range("conn", c.conn, 1..=1_000_000)?;
    in_range("burst", c.burst, 0..=1_000_000)?;
    if !(c.default_conn_delay > 0.0 && c.default_conn_delay <= 60.0) {
        return Err(Fault::new(
            "default_conn_delay",
            format!(
                "{} is out of range: above 0, at most 60 seconds",
                c.default_conn_delay
            ),
        ));
    }
    Ok(LimitConn {
        conn: c.conn,
        burst: c.burst,
        delay: Duration::from_secs_f64(c.default_conn_delay),
        only_default: c.only_use_default_delay,
        key: Key::compile(c.key_type, &c.key)?,
        rejection: Rejection::compile(c.rejected_code, c.rejected_msg.as_deref())?,
        in_flight: Arc::default(),
    })
}

impl LimitConn {
    /// Takes a slot for `key`: its delay, or `None` when past the burst.
    fn incoming(&self, key: String) -> Option<(Slot, Duration)> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        let conn = *n + 1;
        if conn > self.conn + self.burst {
            if *n == 0 {
                map.remove(&key);
            }
            return None;
        }
        *n = conn;
        let delay = if conn <= self.conn {
            Duration::ZERO
        } else if self.only_default {
            self.delay
        } else {
            self.delay
                .saturating_mul(u32::try_from((conn - 1) / self.conn).unwrap_or(u32::MAX))
        };
        let slot = Slot {
            key,
            in_flight: self.in_flight.clone(),
        };
        Some((slot, delay))
    }
}

impl Plugin for LimitConn {
    fn access(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        let key = self.key.of(ctx, req).into_owned();
        let Some((slot, delay)) = self.incoming(key) else {
            return Flow::Respond(self.rejection.response());
        };
        ctx.hold(slot);
        if delay.is_zero() {
            return Flow::Continue;
        }
        Flow::Wait(Box::pin(async move {
            tokio::time::sleep(delay).await;
            Flow::Continue
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::assert_faults;
    use super::*;

    fn limit(config: serde_json::Value) -> LimitConn {
        build(parse(&config).expect("parses")).expect("builds")
    }

    #[test]
    fn slots_fill_delay_past_conn_reject_past_burst_and_come_back() {
        let l = limit(serde_json::json!({"conn": 2, "burst": 1, "default_conn_delay": 0.1}));
        let a = l.incoming("k".into()).expect("1");
        let b = l.incoming("k".into()).expect("2");
        assert_eq!((a.1, b.1), (Duration::ZERO, Duration::ZERO));
        let c = l.incoming("k".into()).expect("3: in the burst");
        assert_eq!(c.1, Duration::from_millis(100));
        assert!(l.incoming("k".into()).is_none(), "4: past conn + burst");
        assert!(l.incoming("other".into()).is_some(), "keys apart");
        drop(a);
        let d = l.incoming("k".into()).expect("a slot came back");
        drop((b, c));
        let map = l.in_flight.lock().unwrap();
        assert_eq!(map.get("k"), Some(&1));
        assert_eq!(map.get("other"), None, "released keys are forgotten");
        drop(map);
        drop(d);
        assert!(l.in_flight.lock().unwrap().is_empty());
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (
                    serde_json::json!({"burst": 0, "default_conn_delay": 1}),
                    "",
                    "missing field `conn`",
                ),
                (
                    serde_json::json!({"conn": 0, "burst": 0, "default_conn_delay": 1}),
                    ".conn",
                    "out of range",
                ),
                (
                    serde_json::json!({"conn": 1, "burst": -1, "default_conn_delay": 1}),
                    ".burst",
                    "invalid value",
                ),
                (
                    serde_json::json!({"conn": 1, "burst": 0, "default_conn_delay": 0}),
                    ".default_conn_delay",
                    "out of range",
                ),
                (
                    serde_json::json!({"conn": 1, "burst": 0, "default_conn_delay": 61}),
                    ".default_conn_delay",
                    "out of range",
                ),
                (
                    serde_json::json!({"conn": 1, "burst": 0, "default_conn_delay": 1, "key_type": "var_combination", "key": "x"}),
                    ".key",
                    "names variables",
                ),
            ],
        );
    }
}
