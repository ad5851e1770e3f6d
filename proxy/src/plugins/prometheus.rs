//! `prometheus`: APISIX's HTTP metrics for the requests of the routes it is
//! on, exported beside Remora's own on the admin port's `/metrics`.
//!
//! `apisix_http_status{code, route, matched_uri, matched_host, service,
//! consumer, node}` counts responses; `apisix_http_latency{type="request",
//! route, service, node}` is the time to the response head in
//! milliseconds, with APISIX's buckets. Route and service are Remora's
//! names; `matched_uri`, `matched_host` and `node` are empty (the same label
//! set, so APISIX dashboards' queries work). Only `apisix_http_status`
//! carries the consumer: a latency series per consumer would cost more than
//! it tells. The metrics are registered once, when the proxy starts.

use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{parse, Ctx, Descriptor, Env, Fault, LogEntry, Plugin};
use crate::metrics::{Metrics, SeriesCache};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("prometheus", 500, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// APISIX's switch between route ids and names; Remora's routes have
    /// only names, which are always used.
    #[serde(default)]
    #[allow(dead_code)]
    prefer_name: bool,
}

/// APISIX's latency buckets, in milliseconds.
const BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
    60000.0,
];

/// The metric families, shared by every compiled `prometheus` plugin.
#[derive(Debug, Clone)]
pub(crate) struct ApisixMetrics {
    status: IntCounterVec,
    latency: HistogramVec,
    /// Both families' series by route, service and consumer (and status).
    series: Arc<SeriesCache<3, (IntCounter, Histogram)>>,
}

impl ApisixMetrics {
    /// Defines the families and registers them with the proxy's registry.
    pub(crate) fn register(metrics: &Metrics) -> Self {
        let status = IntCounterVec::new(
            Opts::new(
                "apisix_http_status",
                "HTTP status codes per service in APISIX",
            ),
            &[
                "code",
                "route",
                "matched_uri",
                "matched_host",
                "service",
                "consumer",
                "node",
            ],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "apisix_http_latency",
                "HTTP request latency in milliseconds per service in APISIX",
            )
            .buckets(BUCKETS.to_vec()),
            &["type", "route", "service", "node"],
        );
        let (Ok(status), Ok(latency)) = (status, latency) else {
            // The definitions are constants; this arm is never taken.
            unreachable_metrics()
        };
        for collector in [
            Box::new(status.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
        ] {
            if let Err(e) = metrics.registry().register(collector) {
                tracing::warn!(error = %e, "APISIX metrics not registered");
            }
        }
        ApisixMetrics {
            status,
            latency,
            series: Arc::default(),
        }
    }

    /// Drops the series of routes and services `keep(service, route)` says
    /// are gone, as the data plane does for Remora's own.
    pub(crate) fn retain(&self, keep: &dyn Fn(&str, &str) -> bool) {
        let keep = |service: &str, route: &str, _: &str| keep(service, route);
        self.series.clear();
        crate::metrics::retain_in(&self.status, &keep);
        crate::metrics::retain_in(&self.latency, &keep);
    }
}

/// `remora_plugin_degraded_total{plugin}`, registered beside Remora's
/// metrics (see [`super::Env`]).
pub(crate) fn degraded(metrics: &Metrics) -> IntCounterVec {
    let Ok(vec) = IntCounterVec::new(
        Opts::new(
            "remora_plugin_degraded_total",
            "Requests a plugin decided without what it depends on (Redis for limit-count), by plugin",
        ),
        &["plugin"],
    ) else {
        unreachable_metrics()
    };
    if let Err(e) = metrics.registry().register(Box::new(vec.clone())) {
        tracing::warn!(error = %e, "plugin metrics not registered");
    }
    vec
}

/// `remora_plugin_dropped_total{plugin, reason}`, registered beside Remora's
/// metrics (see [`super::Env`]).
pub(crate) fn dropped(metrics: &Metrics) -> IntCounterVec {
    let Ok(vec) = IntCounterVec::new(
        Opts::new(
            "remora_plugin_dropped_total",
            "Log entries and spans a plugin dropped: its queue was full (queue_full) or its endpoint did not take them (undelivered)",
        ),
        &["plugin", "reason"],
    ) else {
        unreachable_metrics()
    };
    if let Err(e) = metrics.registry().register(Box::new(vec.clone())) {
        tracing::warn!(error = %e, "plugin metrics not registered");
    }
    vec
}

#[allow(clippy::panic)]
fn unreachable_metrics() -> ! {
    panic!("the APISIX metric definitions are static and valid")
}

#[derive(Debug)]
struct Prometheus {
    metrics: ApisixMetrics,
}

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let _config: Config = parse(value)?;
    Ok(Arc::new(Prometheus {
        metrics: env.apisix.clone(),
    }))
}

impl Plugin for Prometheus {
    fn log(&self, ctx: &Ctx<'_>, entry: &LogEntry<'_>) {
        let metrics = &self.metrics;
        let nobody = Arc::<str>::default();
        let consumer = ctx.consumer.as_ref().map_or(&nobody, |c| &c.name);
        metrics.series.with(
            [&ctx.route, &ctx.service, consumer],
            u32::from(entry.status.as_u16()),
            || {
                let status = metrics.status.with_label_values(&[
                    entry.status.as_str(),
                    &ctx.route,
                    "",
                    "",
                    &ctx.service,
                    consumer,
                    "",
                ]);
                let latency =
                    metrics
                        .latency
                        .with_label_values(&["request", &ctx.route, &ctx.service, ""]);
                (status, latency)
            },
            |(status, latency)| {
                status.inc();
                latency.observe(entry.latency.as_secs_f64() * 1000.0);
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{consumers, ctx};
    use super::*;

    #[test]
    fn responses_are_counted_in_apisix_names() {
        let metrics = Metrics::new();
        let env = Env::new(&metrics);
        let p = compile(&serde_json::json!({"prefer_name": true}), &env).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        ctx.route = Arc::from("admin");
        ctx.service = Arc::from("web");
        ctx.consumer = Some(super::super::testing::consumer("jack"));
        let entry = LogEntry {
            status: http::StatusCode::TOO_MANY_REQUESTS,
            latency: std::time::Duration::from_millis(3),
            headers: &http::HeaderMap::new(),
            upstream: None,
        };
        p.log(&ctx, &entry);
        p.log(&ctx, &entry);
        let text = metrics.render();
        assert!(
            text.contains(r#"apisix_http_status{code="429",consumer="jack",matched_host="",matched_uri="",node="",route="admin",service="web"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"apisix_http_latency_bucket{node="",route="admin",service="web",type="request",le="5"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"apisix_http_latency_bucket{node="",route="admin",service="web",type="request",le="2"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn bad_configs_name_their_field() {
        let env = super::super::testing::env();
        let fault = compile(&serde_json::json!({"prefer_name": 1}), &env).expect_err("type");
        assert_eq!(fault.field, ".prefer_name");
        let fault = compile(&serde_json::json!({"export_uri": "/m"}), &env).expect_err("unknown");
        assert!(
            fault.message.contains("unknown field `export_uri`"),
            "{}",
            fault.message
        );
    }
}
