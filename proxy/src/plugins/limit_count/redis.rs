//! limit-count's `policy: redis`: one counter per key in a Redis server
//! that many sidecars share, so a limit holds across a fleet, as APISIX's.
//!
//! A window is one Redis key that expires with the window: a Lua script
//! sets it to `count - 1` (with the window as its expiry) when absent and
//! decrements it otherwise, in one round trip, so concurrent proxies admit
//! exactly `count`. The connection is multiplexed, made on first use and
//! remade after a failure. A request never waits longer than
//! `redis_timeout` for Redis; when Redis cannot answer in time, the request
//! is admitted with `allow_degradation` and refused with 500
//! `{"error_msg":"failed to limit count"}` without, and
//! `remora_plugin_degraded_total{plugin="limit-count"}` counts it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use redis::aio::MultiplexedConnection;

use super::super::Fault;

/// Where the shared counters are, and how long a request may wait.
#[derive(Debug)]
pub(super) struct RedisCounters {
    client: redis::Client,
    timeout: Duration,
    allow_degradation: bool,
    connection: Mutex<Option<MultiplexedConnection>>,
    degraded: IntCounter,
}

const SCRIPT: &str = r"
local ttl = redis.call('pttl', KEYS[1])
if ttl < 0 then
  redis.call('set', KEYS[1], ARGV[1] - 1, 'PX', ARGV[2])
  return {tonumber(ARGV[1]) - 1, tonumber(ARGV[2])}
end
return {redis.call('decr', KEYS[1]), ttl}
";

/// What Redis said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Remaining after this request (negative: rejected) and milliseconds
    /// left in the window.
    Counted { remaining: i64, reset_ms: i64 },
    /// Redis did not answer in time: admit (`allow_degradation`) or not.
    Degraded { admit: bool },
}

/// The connection settings of a limit-count config.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) database: i64,
    pub(super) timeout: Duration,
    pub(super) allow_degradation: bool,
}

impl RedisCounters {
    pub(super) fn new(s: Settings, degraded: IntCounter) -> Result<Self, Fault> {
        if s.host.is_empty() {
            return Err(Fault::new("redis_host", "policy redis needs redis_host"));
        }
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(s.host, s.port),
            redis: redis::RedisConnectionInfo {
                db: s.database,
                username: s.username,
                password: s.password,
                ..Default::default()
            },
        };
        let client = redis::Client::open(info)
            .map_err(|e| Fault::new("redis_host", format!("not a Redis address: {e}")))?;
        Ok(RedisCounters {
            client,
            timeout: s.timeout,
            allow_degradation: s.allow_degradation,
            connection: Mutex::new(None),
            degraded,
        })
    }

    /// Counts one request against `key` in a window of `window`.
    pub(super) async fn incoming(
        self: Arc<Self>,
        key: String,
        count: u64,
        window: Duration,
    ) -> Outcome {
        let attempt = async {
            let cached = self
                .connection
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let mut conn = match cached {
                Some(conn) => conn,
                None => {
                    let conn = self.client.get_multiplexed_async_connection().await?;
                    *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
                    conn
                }
            };
            let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
            redis::Script::new(SCRIPT)
                .key(key)
                .arg(count)
                .arg(window_ms)
                .invoke_async::<(i64, i64)>(&mut conn)
                .await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok((remaining, reset_ms))) => Outcome::Counted {
                remaining,
                reset_ms,
            },
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", self.timeout),
                };
                tracing::warn!(error = %why, "limit-count: Redis unavailable");
                *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.degraded.inc();
                Outcome::Degraded {
                    admit: self.allow_degradation,
                }
            }
        }
    }
}
