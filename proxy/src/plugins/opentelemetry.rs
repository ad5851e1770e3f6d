//! `opentelemetry`: W3C Trace Context through the proxy hop, and one span
//! per hop exported with OTLP over HTTP (protobuf, `/v1/traces`), as
//! APISIX's plugin of that name.
//!
//! At `rewrite` a valid `traceparent` (version 00, or a later version read
//! as 00; lower-case hex; trace and parent ids not all zero) is continued,
//! with its `tracestate`; an absent or malformed one starts a new trace and
//! any `tracestate` is dropped. The sampler (`always_on`, `always_off`,
//! `trace_id_ratio` with `options.fraction`, `parent_base` with
//! `options.root`) decides; the request goes on carrying this hop's span
//! as its parent, sampled or not. At `log` a sampled hop becomes a span:
//! SERVER on the inbound side, CLIENT on the outbound side, with the OTel
//! HTTP attributes (`http.request.method`, `url.path`,
//! `http.response.status_code`, `server.address`) and `remora.route`,
//! `remora.service`, `remora.direction`.
//!
//! Spans go through the shared batch processor ([`super::batch`]) to the
//! collector: a bounded queue that drops and counts, never a wait on the
//! request path. The wire types are `opentelemetry-proto`'s prost
//! messages; the SDK's pipeline (its own batch processor, runtime and
//! exporters) is not used.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{request, HeaderMap, HeaderName, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use rand::Rng;
use schemars::JsonSchema;
use serde::Deserialize;

use super::batch::{Batcher, HttpPost, Settings, Sink};
use super::vars::Var;
use super::{in_range, parse, Ctx, Descriptor, Env, Fault, Flow, LogEntry, Plugin};
use crate::direction::Direction;

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("opentelemetry", 12009, super::schema_of::<Config>, compile);

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// W3C: a `tracestate` longer than this may be dropped.
const MAX_TRACESTATE: usize = 512;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    sampler: SamplerConfig,
    /// Where spans go (APISIX sets this in `plugin_attr`; here it is the
    /// plugin's own).
    collector: Collector,
    /// Resource attributes; `service.name` defaults to `remora`.
    #[serde(default)]
    resource: BTreeMap<String, String>,
    #[serde(default)]
    batch_span_processor: BatchSpanProcessor,
    /// Variables added to the span as attributes of their name
    /// (`http_x_tenant`, `$remote_addr`), up to 32.
    #[serde(default)]
    additional_attributes: Vec<String>,
    /// Request headers added to the span as attributes of their name: a
    /// name, or a prefix ending in `*` (`x-my-*`), up to 32.
    #[serde(default)]
    additional_header_prefix_attributes: Vec<String>,
}

/// Additional attributes a span may carry, and their values' length.
const MAX_ADDITIONAL: usize = 32;
const MAX_ATTRIBUTE_VALUE: usize = 1024;

/// `additional_attributes` and `additional_header_prefix_attributes`,
/// compiled.
#[derive(Debug, Default)]
struct Additional {
    /// Variables, each with its name (without `$`), the attribute's key.
    vars: Vec<(String, Var)>,
    /// Lower-case header names (`exact`) or prefixes.
    headers: Vec<(String, bool)>,
}

impl Additional {
    fn compile(vars: &[String], headers: &[String]) -> Result<Self, Fault> {
        for (field, list) in [
            ("additional_attributes", vars),
            ("additional_header_prefix_attributes", headers),
        ] {
            if list.len() > MAX_ADDITIONAL {
                return Err(Fault::new(
                    field,
                    format!("{} entries: at most {MAX_ADDITIONAL}", list.len()),
                ));
            }
        }
        let mut out = Additional::default();
        for (i, name) in vars.iter().enumerate() {
            let var = name.strip_prefix('$').unwrap_or(name);
            if var.is_empty() {
                return Err(Fault::new(
                    &format!("additional_attributes[{i}]"),
                    "an empty variable name",
                ));
            }
            // An unknown variable is nil in APISIX: the attribute is never
            // set.
            if let Some(compiled) = Var::parse(var) {
                out.vars.push((var.to_owned(), compiled));
            }
        }
        for (i, name) in headers.iter().enumerate() {
            let field = format!("additional_header_prefix_attributes[{i}]");
            let (text, exact) = match name.strip_suffix('*') {
                Some(prefix) => (prefix, false),
                None => (name.as_str(), true),
            };
            let header = super::header_name(&field, text)?;
            out.headers.push((header.as_str().to_owned(), exact));
        }
        Ok(out)
    }

    fn is_empty(&self) -> bool {
        self.vars.is_empty() && self.headers.is_empty()
    }

    /// The attributes for this request, at most [`MAX_ADDITIONAL`].
    /// `consumer_name` is left for `log`: authentication runs after this.
    fn of(&self, ctx: &Ctx<'_>, req: &request::Parts) -> Vec<KeyValue> {
        let mut out = Vec::new();
        for (name, var) in &self.vars {
            if *var == Var::ConsumerName {
                continue;
            }
            if let Some(value) = var.value(ctx, req) {
                out.push(string_value(name, bounded(&value)));
            }
        }
        for (name, value) in &req.headers {
            let wanted = self.headers.iter().any(|(h, exact)| {
                if *exact {
                    name.as_str() == h
                } else {
                    name.as_str().starts_with(h.as_str())
                }
            });
            if let (true, Ok(value)) = (wanted, value.to_str()) {
                match out.iter_mut().find(|kv| kv.key == name.as_str()) {
                    // A repeated header: one attribute, values joined.
                    Some(kv) => {
                        if let Some(AnyValue {
                            value: Some(any_value::Value::StringValue(v)),
                        }) = kv.value.as_mut()
                        {
                            let joined = format!("{v}, {value}");
                            *v = bounded(&joined);
                        }
                    }
                    None => out.push(string_value(name.as_str(), bounded(value))),
                }
            }
        }
        out.truncate(MAX_ADDITIONAL);
        out
    }
}

/// `v` cut at [`MAX_ATTRIBUTE_VALUE`] bytes on a character boundary.
fn bounded(v: &str) -> String {
    let mut end = v.len().min(MAX_ATTRIBUTE_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_owned()
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SamplerConfig {
    #[serde(default)]
    name: SamplerName,
    #[serde(default)]
    options: SamplerOptions,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum SamplerName {
    AlwaysOn,
    #[default]
    AlwaysOff,
    TraceIdRatio,
    ParentBase,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SamplerOptions {
    /// `trace_id_ratio`: the share of traces sampled, 0 to 1.
    #[serde(default)]
    fraction: f64,
    /// `parent_base`: the sampler for requests without a parent.
    #[serde(default)]
    root: RootSampler,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RootSampler {
    #[serde(default)]
    name: RootName,
    #[serde(default)]
    options: RootOptions,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum RootName {
    AlwaysOn,
    #[default]
    AlwaysOff,
    TraceIdRatio,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RootOptions {
    #[serde(default)]
    fraction: f64,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Collector {
    /// `host:port` of an OTLP/HTTP collector (`/v1/traces` is added), or an
    /// `http://` URL with its path.
    address: String,
    /// Seconds an export may take, 1 to 60.
    #[serde(default = "default_request_timeout")]
    request_timeout: u64,
    /// Headers on every export (an API key).
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
}

fn default_request_timeout() -> u64 {
    3
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BatchSpanProcessor {
    /// Spans waiting for export; more are dropped. 1 to 1000000.
    #[serde(default = "default_max_queue_size")]
    max_queue_size: u32,
    /// Spans per export, 1 to 10000.
    #[serde(default = "default_max_export_batch_size")]
    max_export_batch_size: u32,
    /// Seconds without a span before a partial batch goes, 0.01 to 3600.
    #[serde(default = "default_inactive_timeout")]
    inactive_timeout: f64,
    /// Seconds a span may wait in a batch, 0.01 to 3600.
    #[serde(default = "default_batch_timeout")]
    batch_timeout: f64,
}

impl Default for BatchSpanProcessor {
    fn default() -> Self {
        BatchSpanProcessor {
            max_queue_size: default_max_queue_size(),
            max_export_batch_size: default_max_export_batch_size(),
            inactive_timeout: default_inactive_timeout(),
            batch_timeout: default_batch_timeout(),
        }
    }
}

fn default_max_queue_size() -> u32 {
    1024
}
fn default_max_export_batch_size() -> u32 {
    16
}
fn default_inactive_timeout() -> f64 {
    1.0
}
fn default_batch_timeout() -> f64 {
    2.0
}

/// A sampler, compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Sampled when the trace id's low 63 bits are below this.
    Ratio(u64),
    /// The parent's decision; `root` for a request without a parent.
    ParentBased(RootDecision),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum RootDecision {
    AlwaysOn,
    AlwaysOff,
    Ratio(u64),
}

/// The bound OTel's TraceIdRatioBased compares a trace id with.
fn ratio_bound(fraction: f64) -> u64 {
    if fraction >= 1.0 {
        u64::MAX
    } else {
        (fraction * (1u64 << 63) as f64) as u64
    }
}

fn ratio_sampled(trace_id: &[u8; 16], bound: u64) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

impl Sampler {
    fn sample(self, trace_id: &[u8; 16], parent_sampled: Option<bool>) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(bound) => ratio_sampled(trace_id, bound),
            Sampler::ParentBased(root) => match (parent_sampled, root) {
                (Some(sampled), _) => sampled,
                (None, RootDecision::AlwaysOn) => true,
                (None, RootDecision::AlwaysOff) => false,
                (None, RootDecision::Ratio(bound)) => ratio_sampled(trace_id, bound),
            },
        }
    }
}

/// A `traceparent` that may be continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
}

/// Reads the request's `traceparent` per W3C Trace Context: one header,
/// version 00 (55 characters) or a later one (longer only after a `-`),
/// never `ff`; lower-case hex; neither id all zeros.
fn parent_of(headers: &HeaderMap) -> Option<Parent> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?.trim_matches([' ', '\t']);
    let b = text.as_bytes();
    let version = hex_bytes::<1>(b.get(0..2)?)?[0];
    let well_formed = match version {
        0x00 => b.len() == 55,
        0xff => false,
        _ => b.len() == 55 || (b.len() > 55 && b[55] == b'-'),
    };
    if !well_formed || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = hex_bytes::<16>(&b[3..35])?;
    let span_id = hex_bytes::<8>(&b[36..52])?;
    let flags = hex_bytes::<1>(&b[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// `2 * N` lower-case hex digits as bytes.
fn hex_bytes<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// This hop's trace context, from `rewrite` to `log`.
#[derive(Debug, Clone)]
pub(crate) struct Hop {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
    trace_state: String,
    started: SystemTime,
    /// What the span says about the request (sampled hops only).
    method: String,
    path: String,
    host: String,
    /// `additional_*attributes` read from the request at `rewrite`.
    additional: Vec<KeyValue>,
}

impl Hop {
    pub(crate) fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }
}

#[derive(Debug)]
struct OpenTelemetry {
    sampler: Sampler,
    spans: Batcher<Span>,
    additional: Additional,
}

/// Exports batches of spans to the collector.
#[derive(Debug)]
struct Exporter {
    post: HttpPost,
    resource: Resource,
}

impl Sink for Exporter {
    type Item = Span;

    fn encode(&self, spans: Vec<Span>) -> Bytes {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "remora".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        Bytes::from(request.encode_to_vec())
    }

    async fn deliver(&mut self, payload: &Bytes) -> Result<(), String> {
        self.post.post(payload).await
    }
}

fn sampler_of(config: &SamplerConfig) -> Result<Sampler, Fault> {
    let options = &config.options;
    Ok(match config.name {
        SamplerName::AlwaysOn => Sampler::AlwaysOn,
        SamplerName::AlwaysOff => Sampler::AlwaysOff,
        SamplerName::TraceIdRatio => {
            in_range("sampler.options.fraction", options.fraction, 0.0..=1.0)?;
            Sampler::Ratio(ratio_bound(options.fraction))
        }
        SamplerName::ParentBase => {
            let fraction = options.root.options.fraction;
            in_range("sampler.options.root.options.fraction", fraction, 0.0..=1.0)?;
            Sampler::ParentBased(match options.root.name {
                RootName::AlwaysOn => RootDecision::AlwaysOn,
                RootName::AlwaysOff => RootDecision::AlwaysOff,
                RootName::TraceIdRatio => RootDecision::Ratio(ratio_bound(fraction)),
            })
        }
    })
}

fn string_value(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
    }
}

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    let sampler = sampler_of(&config.sampler)?;
    let additional = Additional::compile(
        &config.additional_attributes,
        &config.additional_header_prefix_attributes,
    )?;
    let c = &config.collector;
    in_range("collector.request_timeout", c.request_timeout, 1..=60)?;
    let mut headers = HeaderMap::new();
    for (name, value) in &c.request_headers {
        let field = format!("collector.request_headers.{name}");
        let header = super::header_name(&field, name)?;
        let value =
            HeaderValue::from_str(value).map_err(|_| Fault::new(&field, "not a header value"))?;
        headers.insert(header, value);
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    let uri = if c.address.starts_with("http://") || c.address.contains("://") {
        c.address.clone()
    } else {
        format!("http://{}/v1/traces", c.address)
    };
    let post = HttpPost::new(
        "collector.address",
        &uri,
        headers,
        Duration::from_secs(c.request_timeout),
    )?;
    let b = &config.batch_span_processor;
    in_range(
        "batch_span_processor.max_queue_size",
        b.max_queue_size,
        1..=1_000_000,
    )?;
    in_range(
        "batch_span_processor.max_export_batch_size",
        b.max_export_batch_size,
        1..=10_000,
    )?;
    in_range(
        "batch_span_processor.inactive_timeout",
        b.inactive_timeout,
        0.01..=3600.0,
    )?;
    in_range(
        "batch_span_processor.batch_timeout",
        b.batch_timeout,
        0.01..=3600.0,
    )?;
    let settings = Settings {
        batch_max_size: b.max_export_batch_size as usize,
        inactive_timeout: Duration::from_secs_f64(b.inactive_timeout),
        buffer_duration: Duration::from_secs_f64(b.batch_timeout),
        max_retry_count: 0,
        retry_delay: Duration::ZERO,
        capacity: b.max_queue_size as usize,
    };
    let mut resource = config.resource.clone();
    resource
        .entry("service.name".to_owned())
        .or_insert_with(|| "remora".to_owned());
    let resource = Resource {
        attributes: resource
            .into_iter()
            .map(|(k, v)| string_value(&k, v))
            .collect(),
        ..Default::default()
    };
    let spans = Batcher::start("opentelemetry", settings, Exporter { post, resource }, env)?;
    Ok(Arc::new(OpenTelemetry {
        sampler,
        spans,
        additional,
    }))
}

/// `Host`'s name without its port (`server.address`).
fn host_name(authority: &str) -> &str {
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    }
}

fn random_id<const N: usize>() -> [u8; N] {
    let mut rng = rand::rng();
    loop {
        let id: [u8; N] = rng.random();
        if id != [0; N] {
            return id;
        }
    }
}

impl Plugin for OpenTelemetry {
    fn rewrite(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        if ctx.trace.is_some() {
            // A global rule's opentelemetry already traced this hop.
            return Flow::Continue;
        }
        let parent = parent_of(&req.headers);
        let trace_id = parent.map_or_else(random_id::<16>, |p| p.trace_id);
        let sampled = self.sampler.sample(&trace_id, parent.map(|p| p.sampled));
        let trace_state = match parent {
            Some(_) => {
                let joined = req
                    .headers
                    .get_all(&TRACESTATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(",");
                if joined.len() > MAX_TRACESTATE {
                    String::new()
                } else {
                    joined
                }
            }
            None => String::new(),
        };
        let additional = if sampled && !self.additional.is_empty() {
            self.additional.of(ctx, req)
        } else {
            Vec::new()
        };
        let (method, path, host) = if sampled {
            let host = match req.uri.host() {
                Some(host) => host,
                None => req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map_or("", host_name),
            };
            (
                req.method.to_string(),
                req.uri.path().to_owned(),
                host.to_owned(),
            )
        } else {
            Default::default()
        };
        let hop = Hop {
            trace_id,
            span_id: random_id::<8>(),
            parent: parent.map(|p| p.span_id),
            sampled,
            trace_state,
            started: SystemTime::now(),
            method,
            path,
            host,
            additional,
        };
        // Hex ids: always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&hop.traceparent()) {
            req.headers.insert(TRACEPARENT, super::unindexed(value));
        }
        match HeaderValue::from_str(&hop.trace_state) {
            Ok(value) if !hop.trace_state.is_empty() => {
                req.headers.insert(TRACESTATE, value);
            }
            _ => {
                req.headers.remove(TRACESTATE);
            }
        }
        ctx.trace = Some(hop);
        Flow::Continue
    }

    fn log(&self, ctx: &Ctx<'_>, entry: &LogEntry<'_>) {
        let Some(hop) = ctx.trace.as_ref().filter(|h| h.sampled) else {
            return;
        };
        let (kind, error_from) = match ctx.direction {
            Direction::Inbound => (span::SpanKind::Server, 500),
            Direction::Outbound => (span::SpanKind::Client, 400),
        };
        let code = entry.status.as_u16();
        let name = if ctx.route.is_empty() {
            hop.method.clone()
        } else {
            format!("{} {}", hop.method, ctx.route)
        };
        let mut attributes = vec![
            string_value("http.request.method", hop.method.clone()),
            string_value("url.path", hop.path.clone()),
            KeyValue {
                key: "http.response.status_code".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(i64::from(code))),
                }),
            },
            string_value("remora.direction", ctx.direction.as_str().to_owned()),
        ];
        for (key, value) in [
            ("server.address", &*hop.host),
            ("remora.route", &*ctx.route),
            ("remora.service", &*ctx.service),
        ] {
            if !value.is_empty() {
                attributes.push(string_value(key, value.to_owned()));
            }
        }
        attributes.extend(hop.additional.iter().cloned());
        if let Some(name) = ctx.consumer_name() {
            if self
                .additional
                .vars
                .iter()
                .any(|(_, v)| *v == Var::ConsumerName)
                && hop.additional.len() < MAX_ADDITIONAL
            {
                attributes.push(string_value("consumer_name", bounded(name)));
            }
        }
        let nanos = |at: SystemTime| {
            at.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        };
        let span = Span {
            trace_id: hop.trace_id.to_vec(),
            span_id: hop.span_id.to_vec(),
            trace_state: hop.trace_state.clone(),
            parent_span_id: hop.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: 1,
            name,
            kind: kind as i32,
            start_time_unix_nano: nanos(hop.started),
            end_time_unix_nano: nanos(SystemTime::now()),
            attributes,
            status: (code >= error_from).then(|| Status {
                message: String::new(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        };
        self.spans.push(span);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, consumers, ctx, env, request};
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        request("/", list).headers
    }

    #[test]
    fn traceparents_follow_w3c_trace_context() {
        let p = parent_of(&headers(&[("traceparent", VALID)])).expect("valid");
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert!(p.sampled);
        let unsampled = VALID.replace("-01", "-00");
        assert!(
            !parent_of(&headers(&[("traceparent", &unsampled)]))
                .expect("valid")
                .sampled
        );
        // A later version: read as 00, more fields allowed after a dash.
        let future = VALID.replacen("00-", "cc-", 1) + "-what-comes-next";
        assert!(parent_of(&headers(&[("traceparent", &future)])).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            &(VALID.to_owned() + "-extra"),
            &VALID.replacen("00-", "ff-", 1),
            &VALID.to_uppercase(),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            &(VALID.replacen("00-", "cc-", 1) + "x"),
        ] {
            assert_eq!(
                parent_of(&headers(&[("traceparent", bad)])),
                None,
                "{bad:?}"
            );
        }
        let two = headers(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert_eq!(parent_of(&two), None, "two traceparent headers");
    }

    #[test]
    fn samplers_decide_as_apisix_and_otel() {
        let id = |low: u64| {
            let mut id = [1u8; 16];
            id[8..].copy_from_slice(&low.to_be_bytes());
            id
        };
        assert!(Sampler::AlwaysOn.sample(&id(0), Some(false)));
        assert!(!Sampler::AlwaysOff.sample(&id(0), Some(true)));
        let half = Sampler::Ratio(ratio_bound(0.5));
        assert!(half.sample(&id(u64::MAX / 2 - 2), None));
        assert!(!half.sample(&id(u64::MAX / 2 + 2), None));
        let none = Sampler::Ratio(ratio_bound(0.0));
        let all = Sampler::Ratio(ratio_bound(1.0));
        for low in [0, 1, u64::MAX / 2, u64::MAX] {
            assert!(!none.sample(&id(low), None));
            assert!(all.sample(&id(low), None));
        }
        let parent = Sampler::ParentBased(RootDecision::AlwaysOff);
        assert!(parent.sample(&id(0), Some(true)));
        assert!(!parent.sample(&id(0), Some(false)));
        assert!(!parent.sample(&id(0), None));
        assert!(Sampler::ParentBased(RootDecision::AlwaysOn).sample(&id(0), None));
    }

    fn plugin(config: serde_json::Value) -> Arc<dyn Plugin> {
        compile(&config, &env()).expect("valid")
    }

    #[tokio::test]
    async fn a_valid_parent_is_continued_and_a_bad_one_replaced() {
        let p = plugin(serde_json::json!({
            "sampler": {"name": "always_on"},
            "collector": {"address": "127.0.0.1:9"}
        }));
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut req = request(
            "/a?b=1",
            &[
                ("traceparent", VALID),
                ("tracestate", "k=v"),
                ("host", "web:8080"),
            ],
        );
        p.rewrite(&mut ctx, &mut req);
        let hop = ctx.trace.clone().expect("traced");
        assert_eq!(hop.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            hop.parent.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(
            req.headers["traceparent"],
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                hex(&hop.span_id)
            )
            .as_str()
        );
        assert_eq!(req.headers["tracestate"], "k=v");
        assert_eq!((&*hop.method, &*hop.path, &*hop.host), ("GET", "/a", "web"));

        let mut ctx = super::super::testing::ctx(&compiled);
        let mut req = request("/", &[("traceparent", "00-zz"), ("tracestate", "k=v")]);
        p.rewrite(&mut ctx, &mut req);
        let hop = ctx.trace.clone().expect("traced");
        assert_ne!(hop.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hop.parent, None);
        assert!(
            req.headers["traceparent"].is_sensitive(),
            "a new trace context stays out of HPACK tables"
        );
        let sent = req.headers["traceparent"]
            .to_str()
            .expect("text")
            .to_owned();
        assert_eq!(
            parent_of(&req.headers).map(|p| p.trace_id),
            Some(hop.trace_id),
            "{sent}"
        );
        assert!(
            req.headers.get("tracestate").is_none(),
            "dropped with a bad parent"
        );

        let off = plugin(serde_json::json!({"collector": {"address": "127.0.0.1:9"}}));
        let mut ctx = super::super::testing::ctx(&compiled);
        let mut req = request("/", &[("traceparent", VALID)]);
        off.rewrite(&mut ctx, &mut req);
        let sent = req.headers["traceparent"].to_str().expect("text");
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-00"),
            "{sent}"
        );
    }

    fn strings(kvs: &[KeyValue]) -> Vec<(String, String)> {
        kvs.iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            })
            .collect()
    }

    #[tokio::test]
    async fn additional_attributes_come_from_variables_and_headers() {
        let p = plugin(serde_json::json!({
            "sampler": {"name": "always_on"},
            "collector": {"address": "127.0.0.1:9"},
            "additional_attributes": ["http_x_tenant", "$remote_addr", "arg_none", "no_such_var", "consumer_name"],
            "additional_header_prefix_attributes": ["x-my-*", "x-exact"]
        }));
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let long = "v".repeat(3000);
        let mut req = request(
            "/a",
            &[
                ("x-tenant", "acme"),
                ("x-my-a", "1"),
                ("x-my-b", &long),
                ("x-my-a", "2"),
                ("x-exact", "e"),
                ("x-exactly", "not this"),
            ],
        );
        p.rewrite(&mut ctx, &mut req);
        let hop = ctx.trace.clone().expect("traced");
        assert_eq!(
            strings(&hop.additional),
            [
                ("http_x_tenant".to_owned(), "acme".to_owned()),
                ("remote_addr".to_owned(), "10.0.0.7".to_owned()),
                ("x-my-a".to_owned(), "1, 2".to_owned()),
                ("x-my-b".to_owned(), "v".repeat(1024)),
                ("x-exact".to_owned(), "e".to_owned()),
            ]
        );

        // Unsampled: nothing is read.
        let off = plugin(serde_json::json!({
            "collector": {"address": "127.0.0.1:9"},
            "additional_attributes": ["http_x_tenant"]
        }));
        let mut ctx = super::super::testing::ctx(&compiled);
        let mut req = request("/", &[("x-tenant", "acme")]);
        off.rewrite(&mut ctx, &mut req);
        assert!(ctx.trace.expect("traced").additional.is_empty());

        // At most 32, whatever the request sends.
        let many = plugin(serde_json::json!({
            "sampler": {"name": "always_on"},
            "collector": {"address": "127.0.0.1:9"},
            "additional_header_prefix_attributes": ["x-*"]
        }));
        let names: Vec<String> = (0..100).map(|i| format!("x-h{i}")).collect();
        let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let mut ctx = super::super::testing::ctx(&compiled);
        let mut req = request("/", &headers);
        many.rewrite(&mut ctx, &mut req);
        assert_eq!(ctx.trace.expect("traced").additional.len(), 32);
    }

    #[tokio::test]
    async fn bad_configs_name_their_field() {
        let base = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"collector": {"address": "127.0.0.1:4318"}});
            if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(extra.clone());
            }
            v
        };
        assert_faults(
            compile,
            &[
                (serde_json::json!({}), "", "missing field `collector`"),
                (
                    base(serde_json::json!({"sampler": {"name": "sometimes"}})),
                    ".sampler.name",
                    "unknown variant",
                ),
                (
                    base(
                        serde_json::json!({"sampler": {"name": "trace_id_ratio", "options": {"fraction": 1.5}}}),
                    ),
                    ".sampler.options.fraction",
                    "out of range",
                ),
                (
                    base(
                        serde_json::json!({"sampler": {"name": "parent_base", "options": {"root": {"name": "trace_id_ratio", "options": {"fraction": -1}}}}}),
                    ),
                    ".sampler.options.root.options.fraction",
                    "out of range",
                ),
                (
                    serde_json::json!({"collector": {"address": "https://c:4318"}}),
                    ".collector.address",
                    "not supported",
                ),
                (
                    serde_json::json!({"collector": {"address": "c:4318", "request_timeout": 0}}),
                    ".collector.request_timeout",
                    "out of range",
                ),
                (
                    base(serde_json::json!({"batch_span_processor": {"max_queue_size": 0}})),
                    ".batch_span_processor.max_queue_size",
                    "out of range",
                ),
                (
                    base(serde_json::json!({"additional_attributes": "http_x_a"})),
                    ".additional_attributes",
                    "invalid type",
                ),
                (
                    base(serde_json::json!({"additional_attributes": ["uri", "$"]})),
                    ".additional_attributes[1]",
                    "an empty variable name",
                ),
                (
                    base(serde_json::json!({"additional_attributes": vec!["uri"; 33]})),
                    ".additional_attributes",
                    "33 entries: at most 32",
                ),
                (
                    base(serde_json::json!({"additional_header_prefix_attributes": ["*"]})),
                    ".additional_header_prefix_attributes[0]",
                    "is not a header name",
                ),
                (
                    base(serde_json::json!({"additional_header_prefix_attributes": ["x a*"]})),
                    ".additional_header_prefix_attributes[0]",
                    "is not a header name",
                ),
                (
                    base(
                        serde_json::json!({"batch_span_processor": {"drop_on_queue_full": false}}),
                    ),
                    ".batch_span_processor.drop_on_queue_full",
                    "unknown field",
                ),
            ],
        );
    }
}
