//! The control plane's Prometheus metrics, in one registry served on /metrics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Leaves signed.
    pub issued: IntCounter,
    /// Requests refused, by reason (see docs/identity.md).
    pub refused: IntCounterVec,
    /// Token file reloads, by result (ok, error).
    pub token_reloads: IntCounterVec,
    /// Roots in the trust bundle.
    pub trust_roots: IntGauge,
    /// The signing intermediate's notAfter, Unix seconds.
    pub intermediate_expiry: IntGauge,
    /// Open discovery streams.
    pub discovery_streams: IntGauge,
    /// Pushes rejected by proxies, by resource kind (globals, inbound, destination).
    pub discovery_nacks: IntCounterVec,
    /// Pushes sent.
    pub discovery_pushes: IntCounter,
    /// Source objects skipped as invalid, by kind.
    pub objects_invalid: IntCounterVec,
    /// Admin API requests, by method and status code.
    pub admin_api_requests: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let issued = IntCounter::new(
            "remora_cp_certificates_issued_total",
            "Workload certificates signed.",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "remora_cp_certificates_refused_total",
                "Certificate requests refused, by reason.",
            ),
            &["reason"],
        )?;
        let token_reloads = IntCounterVec::new(
            Opts::new(
                "remora_cp_token_file_reloads_total",
                "Token file reloads after a change, by result.",
            ),
            &["result"],
        )?;
        let trust_roots = IntGauge::new(
            "remora_cp_trust_bundle_roots",
            "Roots in the served trust bundle.",
        )?;
        let intermediate_expiry = IntGauge::new(
            "remora_cp_intermediate_expiry_seconds",
            "notAfter of the signing intermediate, as Unix seconds.",
        )?;
        let discovery_streams = IntGauge::new(
            "remora_cp_discovery_streams",
            "Open discovery streams (one per connected proxy).",
        )?;
        let discovery_nacks = IntCounterVec::new(
            Opts::new(
                "remora_cp_discovery_nacks_total",
                "Discovery pushes a proxy rejected, by resource kind.",
            ),
            &["resource"],
        )?;
        let discovery_pushes = IntCounter::new(
            "remora_cp_discovery_pushes_total",
            "Discovery pushes sent (one subscription's state each).",
        )?;
        registry.register(Box::new(discovery_streams.clone()))?;
        registry.register(Box::new(discovery_nacks.clone()))?;
        registry.register(Box::new(discovery_pushes.clone()))?;
        let objects_invalid = IntCounterVec::new(
            Opts::new(
                "remora_cp_objects_invalid_total",
                "Source objects skipped as invalid, by kind.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(objects_invalid.clone()))?;
        let admin_api_requests = IntCounterVec::new(
            Opts::new(
                "remora_cp_admin_api_requests_total",
                "Admin API requests, by method (GET, PUT, DELETE, other) and status code.",
            ),
            &["method", "code"],
        )?;
        registry.register(Box::new(admin_api_requests.clone()))?;
        registry.register(Box::new(issued.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(token_reloads.clone()))?;
        registry.register(Box::new(trust_roots.clone()))?;
        registry.register(Box::new(intermediate_expiry.clone()))?;
        Ok(Self {
            registry,
            issued,
            refused,
            token_reloads,
            trust_roots,
            intermediate_expiry,
            discovery_streams,
            discovery_nacks,
            discovery_pushes,
            objects_invalid,
            admin_api_requests,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }
}
