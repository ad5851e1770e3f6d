//! The control plane's Prometheus metrics, in one registry served on /metrics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

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
    /// Destination subscriptions dropped by proxies.
    pub discovery_unsubscribes: IntCounter,
    /// Source objects skipped as invalid, by kind.
    pub objects_invalid: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Status writes, by kind and result (ok, conflict, not_found, error).
    pub status_writes: IntCounterVec,
    /// Trust roots ConfigMap writes, by result (created, patched, conflict,
    /// not_found, error).
    pub roots_config_map_writes: IntCounterVec,
    /// Objects each source layer holds, by source and kind.
    pub source_objects: IntGaugeVec,
    /// Translation problems in the current translation, by kind and reason.
    pub translation_problems: IntGaugeVec,
    /// Kubernetes watch and list errors, by kind.
    pub watch_errors: IntCounterVec,
    /// Kubernetes (re)lists started, by kind: 1 at start, then one per relist.
    pub watch_relists: IntCounterVec,
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
        let discovery_unsubscribes = IntCounter::new(
            "remora_cp_discovery_unsubscribes_total",
            "Destination subscriptions a proxy dropped (Unsubscribe), e.g. after its idle time.",
        )?;
        registry.register(Box::new(discovery_pushes.clone()))?;
        registry.register(Box::new(discovery_unsubscribes.clone()))?;
        let objects_invalid = IntCounterVec::new(
            Opts::new(
                "remora_cp_objects_invalid_total",
                "Source objects skipped as invalid, by kind.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(objects_invalid.clone()))?;
        let leader = IntGauge::new(
            "remora_cp_leader",
            "1 while this replica holds the leader Lease (status write-back runs), else 0.",
        )?;
        registry.register(Box::new(leader.clone()))?;
        let status_writes = IntCounterVec::new(
            Opts::new(
                "remora_cp_status_writes_total",
                "Status writes to the Kubernetes API, by kind and result.",
            ),
            &["kind", "result"],
        )?;
        registry.register(Box::new(status_writes.clone()))?;
        let roots_config_map_writes = IntCounterVec::new(
            Opts::new(
                "remora_cp_roots_config_map_writes_total",
                "Writes of the trust roots ConfigMap to the Kubernetes API, by result.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(roots_config_map_writes.clone()))?;
        let source_objects = IntGaugeVec::new(
            Opts::new(
                "remora_cp_source_objects",
                "Objects a source layer holds, by source and kind.",
            ),
            &["source", "kind"],
        )?;
        let translation_problems = IntGaugeVec::new(
            Opts::new(
                "remora_cp_translation_problems",
                "Problems (status conditions) of the current translation, by kind and reason.",
            ),
            &["kind", "reason"],
        )?;
        let watch_errors = IntCounterVec::new(
            Opts::new(
                "remora_cp_kubernetes_watch_errors_total",
                "Kubernetes list and watch errors, by kind; each is retried with back-off.",
            ),
            &["kind"],
        )?;
        let watch_relists = IntCounterVec::new(
            Opts::new(
                "remora_cp_kubernetes_relists_total",
                "Kubernetes lists started, by kind: the initial one, then one per relist.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(source_objects.clone()))?;
        registry.register(Box::new(translation_problems.clone()))?;
        registry.register(Box::new(watch_errors.clone()))?;
        registry.register(Box::new(watch_relists.clone()))?;
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
            discovery_unsubscribes,
            objects_invalid,
            leader,
            status_writes,
            roots_config_map_writes,
            source_objects,
            translation_problems,
            watch_errors,
            watch_relists,
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
