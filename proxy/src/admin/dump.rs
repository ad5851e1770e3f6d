//! `/config_dump`: what the proxy has in force, in answers whose size does
//! not grow with the mesh unless asked to.
//!
//! This module owns the query (`?backend=NAME`, `?service=NAME`, `?full=1`),
//! the summary, the by-name answers, and the full dump, which is serialised
//! one piece (a service, a backend) at a time as the client reads it, never
//! built whole. It does not decide who may ask: `admin` checks the peer.

use std::collections::Bound;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use remora_api::{MeshConfig, OutboundConfig};
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;

use crate::balance::{Balancer, EndpointState};
use crate::identity::{CaStatus, IdentityState};
use crate::state::{BackendState, Snapshot};

/// The summary lists at most this many backends with endpoints out of
/// rotation; the counts cover all of them.
pub(crate) const MAX_LISTED_BACKENDS: usize = 20;
/// The full dump is sent in chunks of about this size (a piece bigger than
/// this, e.g. one backend with very many endpoints, is one chunk).
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// What a `/config_dump` request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DumpQuery {
    /// No query: counts and a bounded list.
    Summary,
    /// `?backend=NAME`: one backend's config and its endpoints now.
    Backend(String),
    /// `?service=NAME`: one service's config.
    Service(String),
    /// `?full=1`: everything, streamed.
    Full,
}

/// Why a `/config_dump` query was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QueryError {
    #[error("unknown parameter {0:?}; use backend=NAME, service=NAME or full=1")]
    Unknown(String),
    #[error("{0}= needs a name, e.g. {0}=reviews")]
    MissingName(&'static str),
    #[error("full={0:?} is not understood; use full=1")]
    FullValue(String),
    #[error("ask for one thing at a time: backend=NAME, service=NAME or full=1")]
    Several,
    #[error("the query is not valid percent-encoded UTF-8")]
    Encoding,
}

/// Parses the query of a `/config_dump` request.
pub(crate) fn parse_query(query: Option<&str>) -> Result<DumpQuery, QueryError> {
    let mut asked = None;
    for pair in query.unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| QueryError::Encoding)?;
        let this = match key {
            "backend" if value.is_empty() => return Err(QueryError::MissingName("backend")),
            "service" if value.is_empty() => return Err(QueryError::MissingName("service")),
            "backend" => DumpQuery::Backend(value.into_owned()),
            "service" => DumpQuery::Service(value.into_owned()),
            "full" if matches!(&*value, "" | "1" | "true") => DumpQuery::Full,
            "full" => return Err(QueryError::FullValue(value.into_owned())),
            other => {
                let decoded = percent_encoding::percent_decode_str(other).decode_utf8_lossy();
                return Err(QueryError::Unknown(decoded.into_owned()));
            }
        };
        if asked.replace(this).is_some() {
            return Err(QueryError::Several);
        }
    }
    Ok(asked.unwrap_or(DumpQuery::Summary))
}

/// Sizes of the config in force and of what is out of rotation.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Counts {
    pub(crate) services: usize,
    /// Service ports, over all services.
    pub(crate) ports: usize,
    /// Routes as configured (a port with only `backendRefs` has none).
    pub(crate) routes: usize,
    pub(crate) backends: usize,
    /// Endpoints as the balancers hold them, over all backends.
    pub(crate) endpoints: usize,
    /// Endpoints that outlier detection has out right now.
    pub(crate) ejected_endpoints: usize,
    /// Endpoints that fail their active health checks.
    pub(crate) unhealthy_endpoints: usize,
}

/// A backend with endpoints out of rotation, in the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BackendProblem {
    pub(crate) name: String,
    pub(crate) endpoints: usize,
    pub(crate) ejected: usize,
    pub(crate) unhealthy: usize,
}

/// The default `/config_dump` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Summary {
    pub(crate) version: String,
    pub(crate) last_error: Option<String>,
    pub(crate) counts: Counts,
    /// Backends with an endpoint ejected or unhealthy, by name, at most
    /// [`MAX_LISTED_BACKENDS`].
    pub(crate) backends_out_of_rotation: Vec<BackendProblem>,
    /// Whether more backends than listed have endpoints out of rotation.
    pub(crate) backends_out_of_rotation_truncated: bool,
    /// How to ask for more.
    pub(crate) more: &'static str,
    /// The workload certificate and trust bundle, with `--ca-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) identity: Option<IdentitySummary>,
    /// The discovery stream: remora-cp in use, versions by subscription,
    /// with `--discovery-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) discovery: Option<crate::source::discovery::Status>,
}

/// What `/config_dump` says about the workload certificate: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdentitySummary {
    /// The SPIFFE ID, `None` while no valid certificate is held.
    pub(crate) identity: Option<String>,
    pub(crate) serial: Option<String>,
    /// notAfter, RFC 3339.
    pub(crate) expires: Option<String>,
    pub(crate) trust_domain: String,
    /// SHA-256 (hex) of each root of the trust bundle.
    pub(crate) trust_bundle: Vec<String>,
    /// The last error talking to the CA, if the last request failed.
    pub(crate) ca_error: Option<String>,
}

/// The identity part of the summary.
pub(crate) fn identity(state: &IdentityState) -> IdentitySummary {
    let creds = state.credentials.as_deref();
    IdentitySummary {
        identity: creds.map(|c| c.identity.to_string()),
        serial: creds.map(|c| c.serial_hex.clone()),
        expires: creds.map(|c| humantime::format_rfc3339_seconds(c.not_after).to_string()),
        trust_domain: state.trust_domain.to_string(),
        trust_bundle: state.root_fingerprints.to_vec(),
        ca_error: match &state.ca {
            CaStatus::Failing { error, .. } => Some(error.to_string()),
            CaStatus::Starting | CaStatus::Ok => None,
        },
    }
}

/// Counts everything in `snapshot`: O(size of the config) in time, O(1)
/// beyond the bounded list in memory.
pub(crate) fn summary(snapshot: &Snapshot, last_error: Option<String>) -> Summary {
    let mut counts = Counts::default();
    let mut problems = Vec::new();
    let mut truncated = false;
    if let Some(config) = &snapshot.config {
        counts.services = config.outbound.services.len();
        for service in &config.outbound.services {
            counts.ports += service.ports.len();
            counts.routes += service.ports.iter().map(|p| p.routes.len()).sum::<usize>();
        }
        counts.backends = config.backends.len();
        // In name order, so the bounded list is stable.
        for name in config.backends.keys() {
            let Some(backend) = snapshot.backends.get(name) else {
                continue;
            };
            let endpoints = backend.balancer.endpoints();
            let ejected = endpoints.iter().filter(|e| e.is_ejected()).count();
            let unhealthy = endpoints.iter().filter(|e| !e.is_healthy()).count();
            counts.endpoints += endpoints.len();
            counts.ejected_endpoints += ejected;
            counts.unhealthy_endpoints += unhealthy;
            if ejected + unhealthy > 0 {
                if problems.len() < MAX_LISTED_BACKENDS {
                    problems.push(BackendProblem {
                        name: name.clone(),
                        endpoints: endpoints.len(),
                        ejected,
                        unhealthy,
                    });
                } else {
                    truncated = true;
                }
            }
        }
    }
    Summary {
        version: snapshot.version().to_owned(),
        last_error,
        counts,
        backends_out_of_rotation: problems,
        backends_out_of_rotation_truncated: truncated,
        more: "GET /config_dump?backend=NAME or ?service=NAME for one resource, ?full=1 for everything (streamed)",
        identity: None,
        discovery: None,
    }
}

/// One endpoint as its balancer sees it now.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointView<'a> {
    address: String,
    weight: u32,
    identity: Option<&'a str>,
    zone: Option<&'a str>,
    healthy: bool,
    ejected: bool,
    times_ejected: u32,
    in_flight: u32,
}

impl<'a> EndpointView<'a> {
    fn of(e: &'a EndpointState) -> Self {
        EndpointView {
            address: e.address().to_string(),
            weight: e.weight(),
            identity: e.identity(),
            zone: e.zone(),
            healthy: e.is_healthy(),
            ejected: e.is_ejected(),
            times_ejected: e.times_ejected(),
            in_flight: e.in_flight(),
        }
    }
}

/// A backend's runtime state: its endpoints now, and its ejections.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BalancerView<'a> {
    endpoints: Vec<EndpointView<'a>>,
    ejected_now: usize,
    ejections_total: u64,
}

fn balancer_view<'a>(balancer: &Balancer, endpoints: &'a [Arc<EndpointState>]) -> BalancerView<'a> {
    BalancerView {
        endpoints: endpoints.iter().map(|e| EndpointView::of(e)).collect(),
        ejected_now: balancer.ejected_now(),
        ejections_total: balancer.ejections_total(),
    }
}

/// The `?backend=NAME` answer's `backend`: its config and its balancer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BackendView<'a> {
    name: &'a str,
    config: &'a remora_api::Backend,
    #[serde(flatten)]
    balancer: BalancerView<'a>,
}

/// `{"version", "backend": {...}}` for the backend called `name`, or
/// `None` if the config in force has none by that name.
pub(crate) fn backend(snapshot: &Snapshot, name: &str) -> Option<serde_json::Result<Vec<u8>>> {
    let backend: &BackendState = snapshot.backends.get(name)?;
    let endpoints = backend.balancer.endpoints();
    let view = BackendView {
        name,
        config: &backend.config,
        balancer: balancer_view(&backend.balancer, &endpoints),
    };
    Some(serde_json::to_vec_pretty(&serde_json::json!({
        "version": snapshot.version(),
        "backend": view,
    })))
}

/// `{"version", "service": {...}}` for the service called `name` as
/// configured, or `None` if the config in force has none by that name.
pub(crate) fn service(snapshot: &Snapshot, name: &str) -> Option<serde_json::Result<Vec<u8>>> {
    let config = snapshot.config.as_ref()?;
    let service = config.outbound.services.iter().find(|s| s.name == name)?;
    Some(serde_json::to_vec_pretty(&serde_json::json!({
        "version": snapshot.version(),
        "service": service,
    })))
}

/// Where the full dump has got to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    Head,
    /// The next service to write, by index.
    Services(usize),
    /// The config's backends, after the one named (first if `None`).
    ConfigBackends(Option<String>),
    /// The balancers' view, after the backend named.
    Balancers(Option<String>),
    Tail,
    Done,
}

/// The full dump as a response body: `{"version", "lastError", "config",
/// "backends"}` where `config` is the `MeshConfig` in force and `backends`
/// each balancer's view. Each poll serialises the next pieces of the
/// snapshot into a chunk of about [`CHUNK_BYTES`]; nothing is buffered
/// beyond that, so a slow reader costs one chunk and the snapshot it pins.
#[derive(Debug)]
pub(crate) struct FullDump {
    snapshot: Arc<Snapshot>,
    last_error: Option<String>,
    stage: Stage,
    buf: Vec<u8>,
    /// Held while the dump is being served; bounds concurrent full dumps.
    _permit: OwnedSemaphorePermit,
}

/// Why a full dump stopped midway; the connection is then cut, so the
/// client sees a truncated body rather than a short, well-formed one.
#[derive(Debug, thiserror::Error)]
#[error("config dump serialisation failed: {0}")]
pub(crate) struct DumpError(#[from] serde_json::Error);

impl FullDump {
    pub(crate) fn new(
        snapshot: Arc<Snapshot>,
        last_error: Option<String>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        FullDump {
            snapshot,
            last_error,
            stage: Stage::Head,
            buf: Vec::new(),
            _permit: permit,
        }
    }

    /// The next chunk, or `None` once everything is written.
    fn next_chunk(&mut self) -> Result<Option<Bytes>, DumpError> {
        while self.buf.len() < CHUNK_BYTES && self.stage != Stage::Done {
            self.step()?;
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(Bytes::from(std::mem::take(&mut self.buf))))
    }

    /// Writes one piece and moves on.
    fn step(&mut self) -> Result<(), DumpError> {
        let FullDump {
            snapshot,
            last_error,
            stage,
            buf,
            ..
        } = self;
        *stage = match std::mem::replace(stage, Stage::Done) {
            Stage::Head => {
                buf.extend_from_slice(b"{\"version\":");
                serde_json::to_writer(&mut *buf, snapshot.version())?;
                buf.extend_from_slice(b",\"lastError\":");
                serde_json::to_writer(&mut *buf, last_error)?;
                match snapshot.config.as_deref() {
                    Some(config) => {
                        // Every field, so that a new one fails to compile
                        // here rather than going missing from the dump.
                        let MeshConfig {
                            version,
                            outbound: OutboundConfig { services: _ },
                            inbound,
                            backends: _,
                            http,
                            global_rules,
                            consumers,
                        } = config;
                        buf.extend_from_slice(b",\"config\":{\"version\":");
                        serde_json::to_writer(&mut *buf, version)?;
                        buf.extend_from_slice(b",\"inbound\":");
                        serde_json::to_writer(&mut *buf, inbound)?;
                        buf.extend_from_slice(b",\"http\":");
                        serde_json::to_writer(&mut *buf, http)?;
                        if !global_rules.is_empty() {
                            buf.extend_from_slice(b",\"globalRules\":");
                            serde_json::to_writer(&mut *buf, global_rules)?;
                        }
                        // Credentials stay in the proxy: a consumer shows
                        // its name and which plugins it has.
                        if !consumers.is_empty() {
                            buf.extend_from_slice(b",\"consumers\":");
                            let consumers: Vec<_> = consumers
                                .iter()
                                .map(|c| {
                                    serde_json::json!({
                                        "username": c.username,
                                        "plugins": c.plugins.keys().collect::<Vec<_>>(),
                                    })
                                })
                                .collect();
                            serde_json::to_writer(&mut *buf, &consumers)?;
                        }
                        buf.extend_from_slice(b",\"outbound\":{\"services\":[");
                        Stage::Services(0)
                    }
                    None => {
                        buf.extend_from_slice(b",\"config\":null,\"backends\":{");
                        Stage::Tail
                    }
                }
            }
            Stage::Services(i) => {
                let services = snapshot
                    .config
                    .as_deref()
                    .map_or(&[][..], |c| &c.outbound.services);
                match services.get(i) {
                    Some(service) => {
                        if i > 0 {
                            buf.push(b',');
                        }
                        serde_json::to_writer(&mut *buf, service)?;
                        Stage::Services(i + 1)
                    }
                    None => {
                        buf.extend_from_slice(b"]},\"backends\":{");
                        Stage::ConfigBackends(None)
                    }
                }
            }
            Stage::ConfigBackends(after) => match next_backend(snapshot, after.as_deref()) {
                Some((name, backend)) => {
                    write_key(buf, name, after.is_none())?;
                    serde_json::to_writer(&mut *buf, backend)?;
                    Stage::ConfigBackends(Some(name.to_owned()))
                }
                None => {
                    buf.extend_from_slice(b"}},\"backends\":{");
                    Stage::Balancers(None)
                }
            },
            Stage::Balancers(after) => match next_backend(snapshot, after.as_deref()) {
                Some((name, _)) => {
                    write_key(buf, name, after.is_none())?;
                    // Every configured backend is compiled; `null` would
                    // say one was not.
                    match snapshot.backends.get(name) {
                        Some(state) => {
                            let endpoints = state.balancer.endpoints();
                            serde_json::to_writer(
                                &mut *buf,
                                &balancer_view(&state.balancer, &endpoints),
                            )?;
                        }
                        None => buf.extend_from_slice(b"null"),
                    }
                    Stage::Balancers(Some(name.to_owned()))
                }
                None => Stage::Tail,
            },
            Stage::Tail => {
                buf.extend_from_slice(b"}}");
                Stage::Done
            }
            Stage::Done => Stage::Done,
        };
        Ok(())
    }
}

/// The config's backend after `after` in name order (the first if `None`).
fn next_backend<'a>(
    snapshot: &'a Snapshot,
    after: Option<&str>,
) -> Option<(&'a String, &'a remora_api::Backend)> {
    let backends = &snapshot.config.as_deref()?.backends;
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    backends.range::<str, _>((lower, Bound::Unbounded)).next()
}

fn write_key(buf: &mut Vec<u8>, name: &str, first: bool) -> serde_json::Result<()> {
    if !first {
        buf.push(b',');
    }
    serde_json::to_writer(&mut *buf, name)?;
    buf.push(b':');
    Ok(())
}

impl Body for FullDump {
    type Data = Bytes;
    type Error = DumpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DumpError>>> {
        Poll::Ready(
            self.get_mut()
                .next_chunk()
                .transpose()
                .map(|r| r.map(Frame::data)),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.stage == Stage::Done && self.buf.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
