//! Discovery mode's assembly: the fragments remora-cp pushes (globals, this
//! pod's inbound config, one per subscribed destination) become one
//! `MeshConfig`, parsed and validated by the model's own `MeshConfig::parse`
//! within the proxy's limits. A push that would make an invalid config is
//! refused with the reason (the client NACKs it) and the fragments stay as
//! they were, so the last good config stays in force.
//!
//! The assembly is pure: no stream, no I/O. `client` is the gRPC client
//! that feeds it pushes and hands the result to `State::apply`
//! (`--discovery-addr`); `on_demand` is how the data path asks for a
//! destination the config does not know. [`Discovery`] is what the two
//! share with the rest of the proxy (`State` holds it): the on-demand
//! destinations and the stream's status for `/ready` and `/config_dump`.

mod client;
mod on_demand;

/// The generated client of the discovery service.
#[allow(
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    rust_2018_idioms
)]
mod proto {
    tonic::include_proto!("remora.discovery.v1");
}

pub(crate) use client::spawn;
pub(crate) use on_demand::{host_dest, Dest};

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use remora_api::{MeshConfig, ParseLimits};
use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error)]
pub(crate) enum AssemblyError {
    #[error("{what}: the push is not JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: the push lacks {field:?}")]
    Missing { what: String, field: &'static str },
    #[error("backend {0:?} is named by two destinations with different contents")]
    BackendClash(String),
    #[error("the assembled config is invalid: {0}")]
    Invalid(#[from] remora_api::ConfigError),
}

/// The discovery client's state shared with the data path and the admin
/// server.
#[derive(Debug)]
pub(crate) struct Discovery {
    pub(crate) on_demand: on_demand::OnDemand,
    status: Mutex<Status>,
}

/// How discovery is going, for `/ready` and `/config_dump`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Status {
    /// The remora-cp address of the open stream, if one is open.
    pub(crate) control_plane: Option<String>,
    /// The view version of the last push applied, by subscription.
    pub(crate) versions: BTreeMap<String, u64>,
    /// Why the last stream ended or could not be opened.
    pub(crate) last_error: Option<String>,
    #[serde(skip)]
    globals: bool,
    #[serde(skip)]
    inbound: bool,
}

impl Discovery {
    fn new(wait: Duration, max: usize) -> (Self, tokio::sync::mpsc::Receiver<Dest>) {
        let (on_demand, requests) = on_demand::OnDemand::new(wait, max);
        let discovery = Discovery {
            on_demand,
            status: Mutex::default(),
        };
        (discovery, requests)
    }

    fn status(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// A copy of the status.
    pub(crate) fn snapshot(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `Some(detail)` until the first globals and inbound config arrived.
    pub(crate) fn waiting(&self) -> Option<String> {
        let status = self.snapshot();
        if status.globals && status.inbound {
            return None;
        }
        Some(match status.last_error {
            Some(e) => format!("discovery: no config from remora-cp yet: {e}"),
            None => "discovery: waiting for the first config from remora-cp".to_owned(),
        })
    }
}

/// What a subscription names, as the proxy keeps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    Globals,
    Inbound,
    /// A destination subscription (`address 10.96.0.10:9080`, `host a:80`).
    Destination(String),
}

/// The fragments in force.
#[derive(Debug, Default, Clone)]
pub(crate) struct Assembly {
    globals: Option<Value>,
    inbound: Option<Value>,
    /// By subscription; `None` is "not found".
    destinations: BTreeMap<String, Option<Value>>,
}

fn field(v: &Value, what: &str, field: &'static str) -> Result<Value, AssemblyError> {
    v.get(field).cloned().ok_or_else(|| AssemblyError::Missing {
        what: what.to_owned(),
        field,
    })
}

impl Assembly {
    /// The config with `part` set to `json` (`None`: not found), at
    /// `version`. On success the fragment is kept; on error nothing changes.
    pub(crate) fn apply(
        &mut self,
        part: Part,
        json: Option<&str>,
        version: u64,
        limits: &ParseLimits,
    ) -> Result<MeshConfig, AssemblyError> {
        let what = format!("{part:?}");
        let value = json
            .map(serde_json::from_str::<Value>)
            .transpose()
            .map_err(|source| AssemblyError::Json {
                what: what.clone(),
                source,
            })?;
        let mut next = self.clone();
        match part {
            Part::Globals => next.globals = value,
            Part::Inbound => next.inbound = value,
            Part::Destination(key) => {
                next.destinations.insert(key, value);
            }
        }
        let config = next.assemble(version, limits)?;
        *self = next;
        Ok(config)
    }

    /// Forgets destinations (unsubscribed): the config without them, at
    /// `version`, or `None` when none was held. On error nothing changes.
    pub(crate) fn remove(
        &mut self,
        keys: &[String],
        version: u64,
        limits: &ParseLimits,
    ) -> Result<Option<MeshConfig>, AssemblyError> {
        let mut next = self.clone();
        let held = keys
            .iter()
            .filter(|k| next.destinations.remove(k.as_str()).is_some())
            .count();
        if held == 0 {
            return Ok(None);
        }
        let config = next.assemble(version, limits)?;
        *self = next;
        Ok(Some(config))
    }

    fn assemble(&self, version: u64, limits: &ParseLimits) -> Result<MeshConfig, AssemblyError> {
        let mut doc = Map::new();
        doc.insert("version".into(), json!(version.to_string()));
        if let Some(g) = &self.globals {
            for name in ["http", "globalRules", "consumers"] {
                if let Some(v) = g.get(name) {
                    doc.insert(name.into(), v.clone());
                }
            }
        }
        if let Some(i) = &self.inbound {
            doc.insert("inbound".into(), field(i, "inbound", "inbound")?);
        }
        // Two subscriptions (an address and a host) may name one service.
        let mut services: BTreeMap<String, Value> = BTreeMap::new();
        let mut backends: Map<String, Value> = Map::new();
        for (sub, d) in &self.destinations {
            let Some(d) = d else { continue };
            let key = field(d, sub, "key")?;
            services.insert(
                key.as_str().unwrap_or_default().to_owned(),
                field(d, sub, "service")?,
            );
            if let Some(Value::Object(bs)) = d.get("backends") {
                for (name, b) in bs {
                    match backends.get(name) {
                        Some(old) if old != b => {
                            return Err(AssemblyError::BackendClash(name.clone()))
                        }
                        _ => {
                            backends.insert(name.clone(), b.clone());
                        }
                    }
                }
            }
        }
        doc.insert(
            "outbound".into(),
            json!({"services": services.into_values().collect::<Vec<_>>()}),
        );
        doc.insert("backends".into(), Value::Object(backends));
        let bytes =
            serde_json::to_vec(&Value::Object(doc)).map_err(|source| AssemblyError::Json {
                what: "the assembled config".into(),
                source,
            })?;
        Ok(MeshConfig::parse(&bytes, limits)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_waits_for_the_globals_and_the_inbound_config() {
        let (d, _requests) = Discovery::new(Duration::from_secs(1), 1);
        assert_eq!(
            d.waiting().as_deref(),
            Some("discovery: waiting for the first config from remora-cp")
        );
        d.status(|s| s.last_error = Some("connecting to cp:15012: refused".into()));
        assert_eq!(
            d.waiting().as_deref(),
            Some("discovery: no config from remora-cp yet: connecting to cp:15012: refused")
        );
        d.status(|s| s.globals = true);
        assert!(d.waiting().is_some(), "the inbound config is still missing");
        d.status(|s| s.inbound = true);
        assert_eq!(d.waiting(), None);
    }

    fn dest(key: &str, vip: &str, backend: &str, endpoint: &str) -> String {
        let (_, name) = key.split_once('/').unwrap();
        json!({
            "key": key,
            "service": {"name": name, "addresses": [vip], "ports": [{"port": 80, "backendRefs": [{"name": backend}]}]},
            "backends": {backend: {"endpoints": [{"address": endpoint}]}},
        })
        .to_string()
    }

    fn by_addr() -> Part {
        Part::Destination("address 10.96.0.10:80".into())
    }

    #[test]
    fn fragments_assemble_into_one_config() {
        let limits = ParseLimits::default();
        let mut a = Assembly::default();
        let globals = r#"{"http":{"maxHeaders":50},"globalRules":[],"consumers":[]}"#;
        a.apply(Part::Globals, Some(globals), 1, &limits).unwrap();
        let inbound =
            r#"{"identity":"spiffe://cluster.local/ns/shop/sa/web","inbound":{"mode":"strict"}}"#;
        a.apply(Part::Inbound, Some(inbound), 1, &limits).unwrap();
        let reviews = dest("shop/reviews", "10.96.0.10", "reviews", "10.1.0.5:80");
        let c = a.apply(by_addr(), Some(&reviews), 2, &limits).unwrap();
        assert_eq!(c.version, "2");
        assert_eq!(c.http.max_headers, 50);
        assert_eq!(c.inbound.mode, remora_api::InboundMode::Strict);
        assert_eq!(c.outbound.services.len(), 1);
        assert_eq!(
            c.backends["reviews"].endpoints[0].address,
            "10.1.0.5:80".parse().unwrap()
        );
        // The same service by host name is one service, not two.
        let host = || Part::Destination("host reviews:80".into());
        let c = a.apply(host(), Some(&reviews), 3, &limits).unwrap();
        assert_eq!(c.outbound.services.len(), 1);
        // Not found by host, then the address unsubscribed: nothing left.
        let c = a.apply(host(), None, 4, &limits).unwrap();
        assert_eq!(c.outbound.services.len(), 1);
        let gone = ["address 10.96.0.10:80".to_owned()];
        let c = a.remove(&gone, 5, &limits).unwrap().unwrap();
        assert_eq!(c.version, "5");
        assert_eq!(c.outbound.services.len(), 0);
        assert_eq!(c.backends.len(), 0);
        // Gone already: nothing to apply.
        assert!(a.remove(&gone, 6, &limits).unwrap().is_none());
    }

    #[test]
    fn a_push_that_breaks_the_config_is_refused_and_the_last_good_stays() {
        let limits = ParseLimits::default();
        let mut a = Assembly::default();
        let good = dest("shop/reviews", "10.96.0.10", "reviews", "10.1.0.5:80");
        a.apply(by_addr(), Some(&good), 1, &limits).unwrap();
        // A route to a backend the push does not carry.
        let bad = good.replace(r#""backends":{"reviews""#, r#""backends":{"other""#);
        assert_ne!(bad, good);
        let e = a.apply(by_addr(), Some(&bad), 2, &limits).unwrap_err();
        assert!(matches!(e, AssemblyError::Invalid(_)), "{e}");
        let e = a
            .apply(by_addr(), Some("{not json"), 3, &limits)
            .unwrap_err();
        assert!(matches!(e, AssemblyError::Json { .. }), "{e}");
        let e = a.apply(by_addr(), Some("{}"), 3, &limits).unwrap_err();
        assert_eq!(
            e.to_string(),
            "address 10.96.0.10:80: the push lacks \"key\""
        );
        // Another destination reusing a backend name with other contents.
        let ratings = dest("shop/ratings", "10.96.0.11", "reviews", "10.1.0.9:80");
        let other = Part::Destination("address 10.96.0.11:80".into());
        let e = a.apply(other, Some(&ratings), 4, &limits).unwrap_err();
        assert_eq!(
            e.to_string(),
            "backend \"reviews\" is named by two destinations with different contents"
        );
        // Still the first config.
        let none = Part::Destination("host none:80".into());
        let c = a.apply(none, None, 5, &limits).unwrap();
        assert_eq!(c.outbound.services.len(), 1);
        assert_eq!(
            c.backends["reviews"].endpoints[0].address,
            "10.1.0.5:80".parse().unwrap()
        );
    }
}
