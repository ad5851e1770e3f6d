//! The certificate client's metrics, registered in the proxy's registry
//! only when `--ca-addr` is set.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// `remora_identity_*`.
#[derive(Debug, Clone)]
pub(super) struct IdentityMetrics {
    /// notAfter of the certificate held, Unix seconds; 0 when none.
    pub(super) expiry: IntGauge,
    pub(super) renewals_ok: IntCounter,
    pub(super) renewals_error: IntCounter,
    /// 1 when the last request reached the CA (even if it refused), else 0.
    pub(super) ca_reachable: IntGauge,
}

impl IdentityMetrics {
    pub(super) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let expiry = IntGauge::new(
            "remora_identity_cert_expiry_seconds",
            "notAfter of the workload certificate held, Unix seconds (0: none)",
        )?;
        let renewals = IntCounterVec::new(
            Opts::new(
                "remora_identity_renewals_total",
                "Certificate requests to the CA (the first included), by result",
            ),
            &["result"],
        )?;
        let ca_reachable = IntGauge::new(
            "remora_identity_ca_reachable",
            "1 when the last request reached the CA, 0 when it could not",
        )?;
        registry.register(Box::new(expiry.clone()))?;
        registry.register(Box::new(renewals.clone()))?;
        registry.register(Box::new(ca_reachable.clone()))?;
        Ok(IdentityMetrics {
            expiry,
            renewals_ok: renewals.with_label_values(&["ok"]),
            renewals_error: renewals.with_label_values(&["error"]),
            ca_reachable,
        })
    }
}
