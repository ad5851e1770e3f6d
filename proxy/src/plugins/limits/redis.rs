//! `policy: redis` for limit-count and limit-req: the counters or buckets
//! live in one Redis server that many sidecars share, so a limit holds
//! across a fleet, as APISIX's does.
//!
//! Each decision is one Lua script, so it is one round trip and atomic:
//! concurrent proxies admit exactly what the limit allows. The connection
//! is multiplexed, made on first use and remade after a failure. A request
//! never waits longer than `redis_timeout` for Redis; when Redis cannot
//! answer in time the plugin admits the request with `allow_degradation`
//! and refuses it with 500 `{"error_msg":"failed to limit <count|req>"}`
//! without, and `remora_plugin_degraded_total{plugin}` counts it (the
//! warning in the log is throttled to one a second).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, ToRedisArgs};
use schemars::JsonSchema;
use serde::Deserialize;

use super::super::{in_range, json_response, Env, Fault, Flow};
use crate::limits::Throttle;

/// Where the state is: `local` (this proxy) or `redis` (a Redis server
/// that sidecars share); `redis-cluster` is refused at load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Policy {
    #[default]
    Local,
    Redis,
    RedisCluster,
}

/// The connection fields of a limit plugin's config, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) host: Option<String>,
    pub(crate) port: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) database: i64,
    /// Milliseconds.
    pub(crate) timeout: u64,
    pub(crate) allow_degradation: bool,
}

pub(crate) fn default_port() -> u16 {
    6379
}

pub(crate) fn default_timeout() -> u64 {
    1000
}

/// Where the shared state is, and how long a request may wait for it.
#[derive(Debug)]
pub(crate) struct Store {
    client: redis::Client,
    timeout: Duration,
    allow_degradation: bool,
    connection: Mutex<Option<MultiplexedConnection>>,
    degraded: IntCounter,
    /// With Redis down, every request fails: one warning a second, with
    /// how many it stands for (the metric counts each).
    warnings: Mutex<Throttle>,
    /// The plugin's name: in logs, the metric and the 500's message.
    plugin: &'static str,
}

impl Store {
    /// The store for `policy`, or `None` for `local`.
    pub(crate) fn for_policy(
        policy: Policy,
        s: Settings,
        plugin: &'static str,
        env: &Env,
    ) -> Result<Option<Self>, Fault> {
        match policy {
            Policy::Local => return Ok(None),
            Policy::Redis => {}
            Policy::RedisCluster => {
                return Err(Fault::new(
                    "policy",
                    "redis-cluster is not supported by this proxy yet; use local or redis",
                ))
            }
        }
        in_range("redis_port", s.port, 1..=65535)?;
        in_range("redis_database", s.database, 0..=15)?;
        in_range("redis_timeout", s.timeout, 1..=60_000)?;
        let host = s
            .host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Fault::new("redis_host", "policy redis needs redis_host"))?;
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(host, s.port),
            redis: redis::RedisConnectionInfo {
                db: s.database,
                username: s.username,
                password: s.password,
                ..Default::default()
            },
        };
        let client = redis::Client::open(info)
            .map_err(|e| Fault::new("redis_host", format!("not a Redis address: {e}")))?;
        Ok(Some(Store {
            client,
            timeout: Duration::from_millis(s.timeout),
            allow_degradation: s.allow_degradation,
            connection: Mutex::new(None),
            degraded: env.degraded.with_label_values(&[plugin]),
            warnings: Mutex::new(Throttle::new(Duration::from_secs(1))),
            plugin,
        }))
    }

    /// Runs `script` on `key` with `args`; on no answer within
    /// `redis_timeout` (or an error), the flow the degradation setting
    /// says, counted.
    pub(crate) async fn eval<T: FromRedisValue, A: ToRedisArgs>(
        &self,
        script: &redis::Script,
        key: String,
        args: &[A],
    ) -> Result<T, Flow> {
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
            let mut invocation = script.key(key);
            for arg in args {
                invocation.arg(arg);
            }
            invocation.invoke_async::<T>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(answer)) => Ok(answer),
            failed => {
                let due = self
                    .warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .note(Instant::now());
                if let Some(requests) = due {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.timeout),
                    };
                    tracing::warn!(plugin = self.plugin, error = %why, requests, "Redis unavailable");
                }
                *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.degraded.inc();
                if self.allow_degradation {
                    return Err(Flow::Continue);
                }
                let what = self.plugin.strip_prefix("limit-").unwrap_or(self.plugin);
                let body = serde_json::json!({ "error_msg": format!("failed to limit {what}") })
                    .to_string()
                    + "\n";
                Err(Flow::Respond(json_response(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    body,
                )))
            }
        }
    }
}
