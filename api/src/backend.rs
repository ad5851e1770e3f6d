//! Backends: named sets of endpoints and how the proxy talks to them.
//!
//! A backend is what routes point at (`backendRefs[].name`): its endpoints
//! (socket address, weight, identity, zone), the load-balancing policy,
//! health checking, outlier detection, circuit breaking, connection timeouts
//! and the retry budget. It is Envoy's cluster, or a Kubernetes Service port
//! after EndpointSlices are resolved. Checks live in `validate`.

use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::duration::{serde_duration, GatewayDuration};
use crate::ranges;

/// A named set of endpoints with its policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    /// May be empty (scaled to zero); requests then fail with 503.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Active HTTP health checks; none unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive health: ejects endpoints that keep failing.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// Time allowed to establish a connection (TCP and TLS), 1ms to 5m.
    #[serde(default = "default_connect_timeout", with = "serde_duration")]
    #[schemars(with = "GatewayDuration")]
    pub connect_timeout: Duration,
    /// Pooled connections idle this long are closed; 1ms to 24h.
    #[serde(default = "default_idle_timeout", with = "serde_duration")]
    #[schemars(with = "GatewayDuration")]
    pub idle_timeout: Duration,
    #[serde(default)]
    pub retry_budget: RetryBudget,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

/// One destination of a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// `ip:port`, e.g. `10.0.1.7:9080` or `[fd00::7]:9080`.
    #[serde(deserialize_with = "socket_addr")]
    #[schemars(with = "String")]
    pub address: SocketAddr,
    /// Relative share under weighted policies, 1 to 1,000,000.
    #[serde(default = "crate::route::default_weight")]
    #[schemars(range(min = ranges::ENDPOINT_WEIGHT.min, max = ranges::ENDPOINT_WEIGHT.max))]
    pub weight: u32,
    /// The SPIFFE id the endpoint must present, e.g.
    /// `spiffe://cluster.local/ns/default/sa/reviews`. Set: the proxy uses
    /// mesh mTLS and checks the peer's identity. Unset: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Topology zone, e.g. `eu-west-1a`, for zone-aware balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// Like `SocketAddr`'s own `Deserialize`, but the error names the value.
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{s:?} is not a socket address: write ip:port, e.g. 10.0.1.7:9080 or [fd00::7]:9080"
        ))
    })
}

/// How requests are spread over endpoints. Written as a bare name
/// (`roundRobin`, `leastRequest`) or, for hashing, a one-key map
/// (`{consistentHash: {header: x-user}}`, `{consistentHash: sourceIp}`).
//
// `Deserialize` is written by hand for its errors. serde-saphyr and
// serde_json both read the one-key map into a derived enum, but a derived
// one answers `consistentHash` alone with "unexpected mapping end" (YAML) or
// "invalid type: unit variant, expected newtype variant" (JSON); this one
// says what to write.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    /// Weighted round robin.
    RoundRobin,
    /// Power of two choices over peak-EWMA latency times outstanding
    /// requests, scaled by weight.
    #[default]
    LeastRequest,
    /// A ring hash of a request property, so one key keeps its endpoint
    /// while the endpoints do not change.
    ConsistentHash(HashOn),
}

/// What a consistent hash is taken of: `{header: <name>}`, `{cookie: <name>}`
/// or `sourceIp`.
// `Deserialize` is by hand, as for `LoadBalancer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    /// A request header's value; requests without it are spread at random.
    Header(String),
    /// A cookie's value; requests without it are spread at random.
    Cookie(String),
    /// The downstream peer's IP address.
    SourceIp,
}

const LB_VARIANTS: &[&str] = &["roundRobin", "leastRequest", "consistentHash"];
const HASH_VARIANTS: &[&str] = &["header", "cookie", "sourceIp"];

impl<'de> Deserialize<'de> for LoadBalancer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LbVisitor;

        impl<'de> Visitor<'de> for LbVisitor {
            type Value = LoadBalancer;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("roundRobin, leastRequest, or {consistentHash: ...}")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "roundRobin" => Ok(LoadBalancer::RoundRobin),
                    "leastRequest" => Ok(LoadBalancer::LeastRequest),
                    "consistentHash" => Err(E::custom(
                        "consistentHash needs what to hash: write {consistentHash: {header: <name>}}, {consistentHash: {cookie: <name>}} or {consistentHash: sourceIp}",
                    )),
                    other => Err(E::unknown_variant(other, LB_VARIANTS)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let key: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let lb = match key.as_str() {
                    "consistentHash" => LoadBalancer::ConsistentHash(map.next_value()?),
                    "roundRobin" | "leastRequest" => {
                        return Err(de::Error::custom(format!(
                            "{key} takes no settings: write it as a plain string"
                        )))
                    }
                    other => return Err(de::Error::unknown_variant(other, LB_VARIANTS)),
                };
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("name one policy only"));
                }
                Ok(lb)
            }
        }

        d.deserialize_any(LbVisitor)
    }
}

impl<'de> Deserialize<'de> for HashOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HashVisitor;

        impl<'de> Visitor<'de> for HashVisitor {
            type Value = HashOn;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("{header: <name>}, {cookie: <name>} or sourceIp")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "sourceIp" => Ok(HashOn::SourceIp),
                    "header" | "cookie" => Err(E::custom(format!(
                        "{v} needs a name: write {{{v}: <name>}}"
                    ))),
                    other => Err(E::unknown_variant(other, HASH_VARIANTS)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let key: String = map
                    .next_key()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let on = match key.as_str() {
                    "header" => HashOn::Header(map.next_value()?),
                    "cookie" => HashOn::Cookie(map.next_value()?),
                    "sourceIp" => {
                        return Err(de::Error::custom(
                            "sourceIp takes no settings: write it as a plain string",
                        ))
                    }
                    other => return Err(de::Error::unknown_variant(other, HASH_VARIANTS)),
                };
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("hash on one thing only"));
                }
                Ok(on)
            }
        }

        d.deserialize_any(HashVisitor)
    }
}

/// Active HTTP health checking of every endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    /// Path of the `GET` probe; a 2xx answer is healthy.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Probe this port instead of the endpoint's own, 1 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = ranges::PORT.min, max = ranges::PORT.max))]
    pub port: Option<u16>,
    /// 100ms to 1h.
    #[serde(default = "default_health_interval", with = "serde_duration")]
    #[schemars(with = "GatewayDuration")]
    pub interval: Duration,
    /// 1ms to 1h, and at most `interval`.
    #[serde(default = "default_health_timeout", with = "serde_duration")]
    #[schemars(with = "GatewayDuration")]
    pub timeout: Duration,
    /// Consecutive passes that bring an endpoint back, 1 to 1000.
    #[serde(default = "default_healthy_threshold")]
    #[schemars(range(min = ranges::HEALTH_THRESHOLD.min, max = ranges::HEALTH_THRESHOLD.max))]
    pub healthy_threshold: u32,
    /// Consecutive failures that take an endpoint out, 1 to 1000.
    #[serde(default = "default_unhealthy_threshold")]
    #[schemars(range(min = ranges::HEALTH_THRESHOLD.min, max = ranges::HEALTH_THRESHOLD.max))]
    pub unhealthy_threshold: u32,
}

fn default_health_path() -> String {
    "/healthz".to_owned()
}

fn default_health_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_healthy_threshold() -> u32 {
    2
}

fn default_unhealthy_threshold() -> u32 {
    3
}

/// Passive outlier detection. A counter of 0 turns that trigger off;
/// `maxEjectionPercent: 0` turns ejection off altogether.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (any cause) that eject an endpoint, 0 to 1000.
    #[serde(default = "five")]
    #[schemars(range(min = ranges::OUTLIER_CONSECUTIVE.min, max = ranges::OUTLIER_CONSECUTIVE.max))]
    pub consecutive_5xx: u32,
    /// Consecutive 502, 503 and 504 answers that eject an endpoint, 0 to
    /// 1000.
    #[serde(default = "five")]
    #[schemars(range(min = ranges::OUTLIER_CONSECUTIVE.min, max = ranges::OUTLIER_CONSECUTIVE.max))]
    pub consecutive_gateway_failures: u32,
    /// Consecutive failed connects (refused, reset, timed out, TLS failed),
    /// 0 to 1000.
    #[serde(default = "five")]
    #[schemars(range(min = ranges::OUTLIER_CONSECUTIVE.min, max = ranges::OUTLIER_CONSECUTIVE.max))]
    pub consecutive_connect_failures: u32,
    /// How often ejections are reviewed, 100ms to 1h.
    #[serde(default = "default_outlier_interval", with = "serde_duration")]
    #[schemars(with = "GatewayDuration")]
    pub interval: Duration,
    /// First ejection length, 1ms to 1h; each repeat ejection multiplies
    /// it, up to 5m or this, whichever is longer.
    #[serde(default = "default_base_ejection_time", with = "serde_duration")]
    #[schemars(with = "GatewayDuration")]
    pub base_ejection_time: Duration,
    /// Largest share of endpoints ejected at once, 0 to 100.
    #[serde(default = "default_max_ejection_percent")]
    #[schemars(range(min = ranges::PERCENT.min, max = ranges::PERCENT.max))]
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: five(),
            consecutive_gateway_failures: five(),
            consecutive_connect_failures: five(),
            interval: default_outlier_interval(),
            base_ejection_time: default_base_ejection_time(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn five() -> u32 {
    5
}

fn default_outlier_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_base_ejection_time() -> Duration {
    Duration::from_secs(30)
}

fn default_max_ejection_percent() -> u8 {
    50
}

/// Concurrency limits per backend; past them requests fail fast with 503.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Open connections to all endpoints, 1 to 1,000,000.
    #[serde(default = "default_limit")]
    #[schemars(range(min = ranges::CIRCUIT_BREAKER.min, max = ranges::CIRCUIT_BREAKER.max))]
    pub max_connections: u32,
    /// Requests waiting for a connection, 1 to 1,000,000.
    #[serde(default = "default_limit")]
    #[schemars(range(min = ranges::CIRCUIT_BREAKER.min, max = ranges::CIRCUIT_BREAKER.max))]
    pub max_pending_requests: u32,
    /// Requests in flight, 1 to 1,000,000.
    #[serde(default = "default_limit")]
    #[schemars(range(min = ranges::CIRCUIT_BREAKER.min, max = ranges::CIRCUIT_BREAKER.max))]
    pub max_requests: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            max_connections: default_limit(),
            max_pending_requests: default_limit(),
            max_requests: default_limit(),
        }
    }
}

fn default_limit() -> u32 {
    1024
}

/// Caps retries to a share of recent requests, so that retries cannot
/// multiply load on a backend that is already failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed per original request over `ttl`, 0 to 1000 (0.2: one
    /// retry per five requests).
    #[serde(default = "default_retry_ratio")]
    #[schemars(range(min = ranges::RETRY_RATIO.min, max = ranges::RETRY_RATIO.max))]
    pub ratio: f64,
    /// Retries always allowed, whatever the ratio, 0 to 100,000.
    #[serde(default = "default_min_retries_per_second")]
    #[schemars(range(min = ranges::MIN_RETRIES_PER_SECOND.min, max = ranges::MIN_RETRIES_PER_SECOND.max))]
    pub min_retries_per_second: u32,
    /// The window over which requests are counted, 1s to 1h.
    #[serde(default = "default_budget_ttl", with = "serde_duration")]
    #[schemars(with = "GatewayDuration")]
    pub ttl: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: default_retry_ratio(),
            min_retries_per_second: default_min_retries_per_second(),
            ttl: default_budget_ttl(),
        }
    }
}

fn default_retry_ratio() -> f64 {
    0.2
}

fn default_min_retries_per_second() -> u32 {
    10
}

fn default_budget_ttl() -> Duration {
    Duration::from_secs(10)
}
