//! The proxy's Prometheus metrics. One registry per process, rendered in the
//! text format by the admin server. Hot paths take label handles once per
//! connection and then only touch atomics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::direction::Direction;
use crate::error::ErrorKind;
use crate::transport::detect::Protocol;

/// Latency buckets in seconds: sub-millisecond to tens of seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How many label sets a [`SeriesCache`] keeps.
const CACHED_SERIES: usize = 64;

/// The series a request bumps, by the labels it carries: found by
/// comparing the labels' `Arc`s by address and a number (status,
/// direction), where `with_label_values` hashes every label's text and
/// takes the family's lock, twice per request. The labels come from the
/// config snapshot and the connection, so the same few `Arc`s recur; the
/// entries hold them, so an address is never reused while cached. Bounded:
/// past [`CACHED_SERIES`] label sets, entries are replaced in turn.
#[derive(Debug)]
pub(crate) struct SeriesCache<const N: usize, V> {
    slots: Mutex<Slots<N, V>>,
}

#[derive(Debug)]
struct Slots<const N: usize, V> {
    entries: Vec<([Arc<str>; N], u32, V)>,
    next: usize,
}

impl<const N: usize, V> Default for SeriesCache<N, V> {
    fn default() -> Self {
        SeriesCache {
            slots: Mutex::new(Slots {
                entries: Vec::new(),
                next: 0,
            }),
        }
    }
}

impl<const N: usize, V> SeriesCache<N, V> {
    /// Runs `apply` on the series for `labels` and `number`, made by `make`
    /// the first time (or again after it was replaced).
    pub(crate) fn with(
        &self,
        labels: [&Arc<str>; N],
        number: u32,
        make: impl FnOnce() -> V,
        apply: impl FnOnce(&V),
    ) {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = slots.entries.iter().find(|(cached, n, _)| {
            *n == number && cached.iter().zip(labels).all(|(a, b)| Arc::ptr_eq(a, b))
        });
        if let Some((_, _, series)) = found {
            apply(series);
            return;
        }
        let series = make();
        apply(&series);
        let entry = (labels.map(Arc::clone), number, series);
        if slots.entries.len() < CACHED_SERIES {
            slots.entries.push(entry);
        } else {
            let at = slots.next;
            slots.entries[at] = entry;
            slots.next = (at + 1) % CACHED_SERIES;
        }
    }

    /// Forgets every entry: series may have been removed from their family.
    pub(crate) fn clear(&self) {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.entries.clear();
        slots.next = 0;
    }
}

/// What a request is labelled with besides its direction and status.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestLabels {
    /// The destination service, empty when unknown (pass-through, inbound).
    pub(crate) service: Arc<str>,
    pub(crate) route: Arc<str>,
    pub(crate) backend: Arc<str>,
    /// Inbound: the identity the client proved over mesh mTLS; empty for
    /// plaintext, and always empty outbound.
    pub(crate) client_id: Arc<str>,
}

/// Every metric the proxy exports.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    tcp_opened: IntCounterVec,
    tcp_closed: IntCounterVec,
    tcp_active: IntGaugeVec,
    tcp_received_bytes: IntCounterVec,
    tcp_sent_bytes: IntCounterVec,
    tcp_errors: IntCounterVec,
    connections_refused: IntCounterVec,
    detect_timeouts: IntCounterVec,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    /// `requests` and `request_duration`'s series by a request's labels.
    request_series: Arc<SeriesCache<4, (IntCounter, prometheus::Histogram)>>,
    http_errors: IntCounterVec,
    retries: IntCounterVec,
    ejections: IntCounterVec,
    config_updates: IntCounterVec,
    config_apply_seconds: prometheus::Gauge,
    tls_handshakes: IntCounterVec,
    inbound_connections: IntCounterVec,
    authz_denied: IntCounterVec,
}

/// How a mesh TLS handshake ended; the `result` label of
/// `remora_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeResult {
    Ok,
    /// The peer's certificate does not carry the identity expected of it
    /// (outbound), or carries no usable SPIFFE identity (inbound).
    IdentityMismatch,
    /// This proxy had no valid certificate to present.
    NoCertificate,
    /// TLS failed: an untrusted chain, a protocol error, a reset.
    Failed,
    Timeout,
}

impl HandshakeResult {
    const ALL: [HandshakeResult; 5] = [
        HandshakeResult::Ok,
        HandshakeResult::IdentityMismatch,
        HandshakeResult::NoCertificate,
        HandshakeResult::Failed,
        HandshakeResult::Timeout,
    ];

    fn as_str(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::IdentityMismatch => "identity_mismatch",
            HandshakeResult::NoCertificate => "no_certificate",
            HandshakeResult::Failed => "failed",
            HandshakeResult::Timeout => "timeout",
        }
    }
}

/// Why an accepted connection was closed at once; the `reason` label of
/// `remora_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusedReason {
    /// The listener already holds `--max-connections` connections.
    Limit,
}

impl RefusedReason {
    fn as_str(self) -> &'static str {
        match self {
            RefusedReason::Limit => "limit",
        }
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let dp = &["direction", "protocol"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("metric definitions are static and valid");
            registry
                .register(Box::new(vec.clone()))
                .expect("each metric is registered once");
            vec
        };
        let tcp_opened = counter(
            "remora_tcp_connections_opened_total",
            "TCP connections accepted on a capture listener, by detected protocol",
            dp,
        );
        let tcp_closed = counter(
            "remora_tcp_connections_closed_total",
            "TCP connections that ended, by detected protocol",
            dp,
        );
        let tcp_received_bytes = counter(
            "remora_tcp_received_bytes_total",
            "Bytes read from downstream clients",
            dp,
        );
        let tcp_sent_bytes = counter(
            "remora_tcp_sent_bytes_total",
            "Bytes written to downstream clients",
            dp,
        );
        let tcp_errors = counter(
            "remora_tcp_errors_total",
            "Proxied TCP connections that ended in an error, by reason",
            &["direction", "reason"],
        );
        let connections_refused = counter(
            "remora_connections_refused_total",
            "Connections reset as soon as they were accepted, by reason (limit: the listener was at --max-connections)",
            &["direction", "reason"],
        );
        // Present from the start, so a dashboard sees 0 rather than nothing.
        for direction in [Direction::Outbound, Direction::Inbound] {
            connections_refused
                .with_label_values(&[direction.as_str(), RefusedReason::Limit.as_str()]);
        }
        let detect_timeouts = counter(
            "remora_detect_timeouts_total",
            "Connections whose client sent too little to detect a protocol in time (proxied as opaque TCP)",
            &["direction"],
        );
        let requests = counter(
            "remora_requests_total",
            "HTTP requests answered, by route, backend and status code",
            &[
                "direction",
                "service",
                "route",
                "backend",
                "status",
                "class",
                "client_id",
            ],
        );
        let http_errors = counter(
            "remora_http_errors_total",
            "HTTP requests the proxy answered itself because forwarding failed, by reason",
            &["direction", "reason"],
        );
        let retries = counter(
            "remora_retries_total",
            "HTTP request attempts that were retries, by backend",
            &["service", "route", "backend"],
        );
        let ejections = counter(
            "remora_outlier_ejections_total",
            "Endpoints ejected by outlier detection, by backend",
            &["backend"],
        );
        let config_updates = counter(
            "remora_config_updates_total",
            "Mesh config updates, by result (applied or rejected)",
            &["result"],
        );
        let tls_handshakes = counter(
            "remora_tls_handshakes_total",
            "Mesh mTLS handshakes, by direction and result",
            &["direction", "result"],
        );
        for direction in [Direction::Outbound, Direction::Inbound] {
            for result in HandshakeResult::ALL {
                tls_handshakes.with_label_values(&[direction.as_str(), result.as_str()]);
            }
        }
        let inbound_connections = counter(
            "remora_inbound_connections_total",
            "Inbound connections by security (mtls or plaintext), app port (declared ports; others are \"other\") and result (accepted, or refused by STRICT mode or by authorization)",
            &["security", "port", "result"],
        );
        let authz_denied = counter(
            "remora_authz_denied_total",
            "Inbound requests (HTTP) and connections (TCP) denied by authorization, by policy and rule (\"default\" when no policy matched)",
            &["policy", "rule"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "remora_request_duration_seconds",
                "Time from a request's arrival to its response head",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["direction", "service", "route", "backend"],
        )
        .expect("metric definitions are static and valid");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("each metric is registered once");
        let config_apply_seconds = prometheus::Gauge::new(
            "remora_config_apply_seconds",
            "How long the last accepted config took to compile and swap in (off the data path)",
        )
        .expect("metric definitions are static and valid");
        registry
            .register(Box::new(config_apply_seconds.clone()))
            .expect("each metric is registered once");
        let tcp_active = IntGaugeVec::new(
            Opts::new(
                "remora_tcp_connections_active",
                "TCP connections open now, by detected protocol",
            ),
            dp,
        )
        .expect("metric definitions are static and valid");
        registry
            .register(Box::new(tcp_active.clone()))
            .expect("each metric is registered once");
        Metrics {
            registry,
            tcp_opened,
            tcp_closed,
            tcp_active,
            tcp_received_bytes,
            tcp_sent_bytes,
            tcp_errors,
            connections_refused,
            detect_timeouts,
            requests,
            request_duration,
            request_series: Arc::default(),
            http_errors,
            retries,
            ejections,
            config_updates,
            config_apply_seconds,
            tls_handshakes,
            inbound_connections,
            authz_denied,
        }
    }

    pub(crate) fn tls_handshake(&self, direction: Direction, result: HandshakeResult) {
        self.tls_handshakes
            .with_label_values(&[direction.as_str(), result.as_str()])
            .inc();
    }

    /// Counts an inbound connection by how it was secured and what became
    /// of it (`port` is the app port's label value).
    pub(crate) fn inbound_connection(&self, mtls: bool, port: &str, result: &str) {
        let security = if mtls { "mtls" } else { "plaintext" };
        self.inbound_connections
            .with_label_values(&[security, port, result])
            .inc();
    }

    pub(crate) fn authz_denied(&self, policy: &str, rule: &str) {
        self.authz_denied.with_label_values(&[policy, rule]).inc();
    }

    /// Counts an answered request and observes its latency.
    pub(crate) fn request(
        &self,
        direction: Direction,
        labels: &RequestLabels,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let (service, route, backend) = (&*labels.service, &*labels.route, &*labels.backend);
        let number =
            u32::from(status.as_u16()) | (u32::from(direction == Direction::Inbound) << 16);
        self.request_series.with(
            [
                &labels.service,
                &labels.route,
                &labels.backend,
                &labels.client_id,
            ],
            number,
            || {
                let count = self.requests.with_label_values(&[
                    direction.as_str(),
                    service,
                    route,
                    backend,
                    status.as_str(),
                    status_class(status),
                    &labels.client_id,
                ]);
                let duration = self.request_duration.with_label_values(&[
                    direction.as_str(),
                    service,
                    route,
                    backend,
                ]);
                (count, duration)
            },
            |(count, duration)| {
                count.inc();
                duration.observe(elapsed.as_secs_f64());
            },
        );
    }

    pub(crate) fn http_error(&self, direction: Direction, kind: ErrorKind) {
        self.http_errors
            .with_label_values(&[direction.as_str(), kind.as_str()])
            .inc();
    }

    pub(crate) fn retry(&self, labels: &RequestLabels) {
        self.retries
            .with_label_values(&[&*labels.service, &*labels.route, &*labels.backend])
            .inc();
    }

    /// The counter a backend's balancer bumps on each ejection.
    pub(crate) fn ejections(&self, backend: &str) -> IntCounter {
        self.ejections.with_label_values(&[backend])
    }

    pub(crate) fn config_applied_in(&self, took: Duration) {
        self.config_apply_seconds.set(took.as_secs_f64());
    }

    pub(crate) fn config_update(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.config_updates.with_label_values(&[result]).inc();
    }

    /// Opens the per-connection metrics: counts the connection as opened and
    /// active now, and as closed when the returned value drops.
    pub(crate) fn connection(&self, direction: Direction, protocol: Protocol) -> ConnectionMetrics {
        let labels = [direction.as_str(), protocol.as_str()];
        self.tcp_opened.with_label_values(&labels).inc();
        let active = self.tcp_active.with_label_values(&labels);
        active.inc();
        ConnectionMetrics {
            received: self.tcp_received_bytes.with_label_values(&labels),
            sent: self.tcp_sent_bytes.with_label_values(&labels),
            closed: self.tcp_closed.with_label_values(&labels),
            active,
        }
    }

    /// Counts a connection that ended in an error, by its kind.
    pub(crate) fn tcp_error(&self, direction: Direction, reason: ErrorKind) {
        self.tcp_errors
            .with_label_values(&[direction.as_str(), reason.as_str()])
            .inc();
    }

    pub(crate) fn connection_refused(&self, direction: Direction, reason: RefusedReason) {
        self.connections_refused
            .with_label_values(&[direction.as_str(), reason.as_str()])
            .inc();
    }

    pub(crate) fn detect_timeout(&self, direction: Direction) {
        self.detect_timeouts
            .with_label_values(&[direction.as_str()])
            .inc();
    }

    /// Drops the series of the request metrics whose `service`, `route` or
    /// `backend` label names something `keep` says is gone, so that removed
    /// resources do not linger in `/metrics`. Walks every series: call it
    /// off the data path, when a config removed something.
    pub(crate) fn retain_series(&self, keep: &dyn Fn(&str, &str, &str) -> bool) {
        self.request_series.clear();
        retain_in(&self.requests, keep);
        retain_in(&self.request_duration, keep);
        retain_in(&self.retries, keep);
        retain_in(&self.ejections, keep);
    }

    /// The registry, for metrics defined elsewhere (`identity`, and
    /// APISIX's, by the prometheus plugin).
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

/// The response class label: `2xx`, `4xx`, `5xx`, …
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Label handles for one connection.
#[derive(Debug)]
pub(crate) struct ConnectionMetrics {
    pub(crate) received: IntCounter,
    pub(crate) sent: IntCounter,
    closed: IntCounter,
    active: IntGauge,
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        self.active.dec();
        self.closed.inc();
    }
}

/// Drops the series of `vec` whose `service`, `route` and `backend`
/// labels (empty when it has none) `keep` refuses.
pub(crate) fn retain_in<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    keep: &dyn Fn(&str, &str, &str) -> bool,
) {
    use prometheus::core::Collector;
    let label = |metric: &prometheus::proto::Metric, name: &str| {
        metric
            .get_label()
            .iter()
            .find(|l| l.name() == name)
            .map(|l| l.value().to_owned())
            .unwrap_or_default()
    };
    let mut doomed: Vec<Vec<(String, String)>> = Vec::new();
    for family in vec.collect() {
        for metric in family.get_metric() {
            let (service, route, backend) = (
                label(metric, "service"),
                label(metric, "route"),
                label(metric, "backend"),
            );
            if !keep(&service, &route, &backend) {
                doomed.push(
                    metric
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_owned(), l.value().to_owned()))
                        .collect(),
                );
            }
        }
    }
    for labels in doomed {
        let labels: std::collections::HashMap<&str, &str> = labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let _ = vec.remove(&labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_made_once_per_label_set_and_again_after_clear() {
        let cache: SeriesCache<2, u32> = SeriesCache::default();
        let (a, b) = (Arc::<str>::from("a"), Arc::<str>::from("b"));
        let made = std::cell::Cell::new(0);
        let seen = std::cell::Cell::new(0);
        let touch = |labels: [&Arc<str>; 2], number: u32| {
            cache.with(
                labels,
                number,
                || {
                    made.set(made.get() + 1);
                    made.get()
                },
                |v| seen.set(*v),
            );
        };
        touch([&a, &b], 200);
        touch([&a, &b], 200);
        assert_eq!((made.get(), seen.get()), (1, 1));
        // Another number, other labels, or equal text in another Arc: new.
        touch([&a, &b], 503);
        touch([&b, &a], 200);
        touch([&Arc::from("a"), &b], 200);
        assert_eq!(made.get(), 4);
        touch([&a, &b], 503);
        assert_eq!((made.get(), seen.get()), (4, 2));
        cache.clear();
        touch([&a, &b], 200);
        assert_eq!((made.get(), seen.get()), (5, 5));
    }

    #[test]
    fn the_series_cache_is_bounded() {
        let cache: SeriesCache<1, usize> = SeriesCache::default();
        let labels: Vec<Arc<str>> = (0..CACHED_SERIES * 3)
            .map(|i| Arc::from(i.to_string()))
            .collect();
        for (i, label) in labels.iter().enumerate() {
            cache.with([label], 0, || i, |v| assert_eq!(*v, i));
        }
        let slots = cache.slots.lock().unwrap();
        assert_eq!(slots.entries.len(), CACHED_SERIES);
        // The newest are kept.
        assert!(slots
            .entries
            .iter()
            .all(|(_, _, v)| *v >= CACHED_SERIES * 2));
    }

    #[test]
    fn a_cached_series_still_counts_after_a_retain() {
        let metrics = Metrics::new();
        let labels = RequestLabels {
            service: Arc::from("web"),
            route: Arc::from("gone"),
            backend: Arc::from("web-v1"),
            client_id: Arc::default(),
        };
        let ok = StatusCode::OK;
        metrics.request(Direction::Outbound, &labels, ok, Duration::from_millis(1));
        metrics.retain_series(&|_, route, _| route != "gone");
        metrics.request(Direction::Outbound, &labels, ok, Duration::from_millis(1));
        let text = metrics.render();
        assert!(
            text.contains(r#"remora_requests_total{backend="web-v1",class="2xx",client_id="",direction="outbound",route="gone",service="web",status="200"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn requests_carry_their_status_and_class() {
        let metrics = Metrics::new();
        let labels = RequestLabels::default();
        metrics.request(
            Direction::Inbound,
            &labels,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(3),
        );
        let text = metrics.render();
        assert!(text.contains("status=\"503\""), "{text}");
        assert!(text.contains("class=\"5xx\""), "{text}");
    }

    #[test]
    fn a_connection_is_counted_open_then_closed() {
        let metrics = Metrics::new();
        let conn = metrics.connection(Direction::Outbound, Protocol::Http1);
        conn.received.inc_by(7);
        let text = metrics.render();
        assert!(text.contains(
            "remora_tcp_connections_active{direction=\"outbound\",protocol=\"http1\"} 1"
        ));
        assert!(text.contains(
            "remora_tcp_received_bytes_total{direction=\"outbound\",protocol=\"http1\"} 7"
        ));
        drop(conn);
        let text = metrics.render();
        assert!(text.contains(
            "remora_tcp_connections_active{direction=\"outbound\",protocol=\"http1\"} 0"
        ));
        assert!(text.contains(
            "remora_tcp_connections_closed_total{direction=\"outbound\",protocol=\"http1\"} 1"
        ));
    }
}
