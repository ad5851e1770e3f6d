//! `log_format` of `http-logger` and `file-logger`: an entry of exactly the
//! fields the operator names, as APISIX's loggers make it.
//!
//! Each field is a `$variable` (`$remote_addr`, `$status`,
//! `$http_user_agent`...) or a literal (any other JSON value, a string
//! not starting with `$` included). The format is compiled once, when the
//! config loads, into a list of (name, variable or literal). At `log` each
//! variable is read from the request as the proxy received it, the response
//! head and the context. As in APISIX, a variable without a value (a header
//! the request lacks, or a variable this proxy does not know) leaves its
//! field out of the entry: APISIX reads nginx's variables, which are nil
//! when unset or unknown. Values are strings, cut at [`MAX_VALUE`] bytes.
//!
//! This module does not own the default entry ([`super::access_log`]) nor
//! delivery (the loggers' batchers).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::HeaderName;
use serde_json::Value;

use super::access_log::{Custom, Record, SizeVar, Unsent};
use super::batch::Batcher;
use super::vars::{self, Var};
use super::{Ctx, Fault, LogEntry};

/// A variable's value in an entry is cut at this many bytes (a header can
/// be far longer).
pub(crate) const MAX_VALUE: usize = 4096;
/// Fields a format may name.
const MAX_FIELDS: usize = 256;

/// What `log_format` is in a logger's config: field name → `$variable` or
/// a literal.
pub(crate) type Config = BTreeMap<String, Value>;

/// `log_format`, compiled.
#[derive(Debug, Clone)]
pub(crate) struct LogFormat {
    fields: Vec<(String, Field)>,
}

#[derive(Debug, Clone)]
enum Field {
    /// A request variable, read at `log` time from the request as it
    /// arrived.
    Var(Var),
    /// A response-side variable, read at `log` time.
    Response(ResponseVar),
    /// `$bytes_sent` or `$body_bytes_sent`: known once the body is over.
    Size(SizeVar),
    /// A variable no part of this proxy knows: always absent, as APISIX's
    /// nil.
    Unknown,
    Literal(Value),
}

/// Variables known only once the response head is ready.
#[derive(Debug, Clone)]
enum ResponseVar {
    /// `sent_http_<header>`: a response header.
    Header(HeaderName),
    Status,
    UpstreamAddr,
    RequestTime,
    Msec,
    /// `time_iso8601` or `time_local`.
    Time,
}

impl ResponseVar {
    fn parse(name: &str) -> Option<Self> {
        if let Some(header) = name.strip_prefix("sent_http_") {
            return vars::header_name(header).map(ResponseVar::Header);
        }
        Some(match name {
            "status" => ResponseVar::Status,
            "upstream_addr" => ResponseVar::UpstreamAddr,
            "request_time" => ResponseVar::RequestTime,
            "msec" => ResponseVar::Msec,
            "time_iso8601" | "time_local" => ResponseVar::Time,
            _ => return None,
        })
    }
}

impl LogFormat {
    /// Compiles the config's `log_format`, found at `field`.
    pub(crate) fn compile(field: &str, config: &Config) -> Result<Self, Fault> {
        if config.is_empty() || config.len() > MAX_FIELDS {
            return Err(Fault::new(
                field,
                format!("{} fields: a format names 1 to {MAX_FIELDS}", config.len()),
            ));
        }
        let mut unknown = Vec::new();
        let fields = config
            .iter()
            .map(|(name, value)| {
                let compiled = match value.as_str().and_then(|s| s.strip_prefix('$')) {
                    Some(var) => SizeVar::of(var)
                        .map(Field::Size)
                        .or_else(|| ResponseVar::parse(var).map(Field::Response))
                        .or_else(|| Var::parse(var).map(Field::Var))
                        .unwrap_or_else(|| {
                            unknown.push(format!("{field}.{name}: ${var}"));
                            Field::Unknown
                        }),
                    None => Field::Literal(value.clone()),
                };
                (name.clone(), compiled)
            })
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(
                fields = unknown.join(", "),
                "log_format names variables this proxy does not know; those fields are left out of every entry, as APISIX leaves out nil"
            );
        }
        Ok(LogFormat { fields })
    }

    /// The entry for a finished exchange: exactly the format's fields that
    /// have a value.
    pub(crate) fn record(&self, ctx: &Ctx<'_>, entry: &LogEntry<'_>) -> Record {
        let mut out = serde_json::Map::with_capacity(self.fields.len());
        let mut sizes = Vec::new();
        for (name, field) in &self.fields {
            let value = match field {
                Field::Size(size) => {
                    sizes.push((name.clone(), *size));
                    continue;
                }
                Field::Literal(v) => Some(v.clone()),
                Field::Unknown => None,
                Field::Var(var) => {
                    // Absent when the request was refused before the
                    // plugins ran.
                    let req = ctx.request.as_deref();
                    req.and_then(|r| var.value(ctx, r.parts()))
                        .map(|v| Value::String(bounded(v)))
                }
                Field::Response(var) => var.value(entry).map(|v| Value::String(bounded(v))),
            };
            if let Some(value) = value {
                out.insert(name.clone(), value);
            }
        }
        Record::Custom(Custom { fields: out, sizes })
    }
}

/// A logger's `log_format` field, compiled when set.
pub(crate) fn compile(config: Option<&Config>) -> Result<Option<LogFormat>, Fault> {
    config
        .map(|c| LogFormat::compile("log_format", c))
        .transpose()
}

/// The entry `log` hands to a logger: the format's, or APISIX's default.
pub(crate) fn record(format: Option<&LogFormat>, ctx: &Ctx<'_>, entry: &LogEntry<'_>) -> Record {
    match format {
        Some(f) => f.record(ctx, entry),
        None => Record::of(ctx, entry),
    }
}

/// `log` of a logger: the entry goes to `queue` now, or once the response
/// body is over when it names the response's size.
pub(crate) fn log(
    format: Option<&LogFormat>,
    queue: &Batcher<Record>,
    ctx: &Ctx<'_>,
    entry: &LogEntry<'_>,
) {
    let record = record(format, ctx, entry);
    if record.needs_size() {
        ctx.after_body(Unsent::new(record, queue.clone()));
    } else {
        queue.push(record);
    }
}

/// `v`, cut at [`MAX_VALUE`] bytes on a character boundary.
fn bounded(v: Cow<'_, str>) -> String {
    if v.len() <= MAX_VALUE {
        return v.into_owned();
    }
    let mut end = MAX_VALUE;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_owned()
}

impl ResponseVar {
    fn value<'a>(&self, entry: &'a LogEntry<'_>) -> Option<Cow<'a, str>> {
        let owned = |s: String| Some(Cow::Owned(s));
        match self {
            ResponseVar::Header(name) => vars::header_value(entry.headers, name).map(Cow::Borrowed),
            ResponseVar::Status => owned(entry.status.as_u16().to_string()),
            ResponseVar::UpstreamAddr => entry.upstream.map(|a| Cow::Owned(a.to_string())),
            // nginx: seconds with millisecond resolution.
            ResponseVar::RequestTime => owned(format!("{:.3}", entry.latency.as_secs_f64())),
            ResponseVar::Msec => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                owned(format!("{}.{:03}", now.as_secs(), now.subsec_millis()))
            }
            ResponseVar::Time => owned(iso8601(SystemTime::now())),
        }
    }
}

/// `2026-12-02T15:04:05+00:00` (UTC; nginx writes local time).
fn iso8601(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::access_log::Request;
    use super::super::testing::{consumer, consumers, ctx, request};
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn format(value: Value) -> Result<LogFormat, Fault> {
        let config: Config = serde_json::from_value(value).expect("a map");
        LogFormat::compile("log_format", &config)
    }

    #[test]
    fn a_format_is_exactly_its_fields_with_values() {
        let f = format(json!({
            "client": "$remote_addr",
            "method": "$request_method",
            "path": "$uri",
            "full": "$request_uri",
            "status": "$status",
            "ua": "$http_user_agent",
            "missing": "$http_x_none",
            "typo": "$remote_adr",
            "upstream": "$upstream_addr",
            "took": "$request_time",
            "who": "$consumer_name",
            "route": "$route_id",
            "ctype": "$sent_http_content_type",
            "proto": "$server_protocol",
            "env": "prod",
            "shard": 3,
            "dollar": "$"
        }))
        .expect("compiles");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        ctx.route = Arc::from("orders");
        ctx.consumer = Some(consumer("jack"));
        let req = request(
            "/orders?id=7",
            &[("user-agent", "curl/8"), ("host", "shop")],
        );
        ctx.request = Some(Box::new(Request::of(&req)));
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "text/plain".parse().expect("value"));
        let entry = LogEntry {
            status: http::StatusCode::CREATED,
            latency: std::time::Duration::from_micros(2500),
            headers: &headers,
            upstream: Some("10.0.0.9:8080".parse().expect("addr")),
        };
        let json = serde_json::to_value(f.record(&ctx, &entry)).expect("serializes");
        assert_eq!(
            json,
            json!({
                "client": "10.0.0.7",
                "method": "GET",
                "path": "/orders",
                "full": "/orders?id=7",
                "status": "201",
                "ua": "curl/8",
                "upstream": "10.0.0.9:8080",
                "took": "0.003",
                "who": "jack",
                "route": "orders",
                "ctype": "text/plain",
                "proto": "HTTP/1.1",
                "env": "prod",
                "shard": 3
            })
        );
    }

    #[test]
    fn long_values_are_cut_and_a_refused_request_has_response_fields_only() {
        let f = format(json!({"ua": "$http_user_agent", "s": "$status"})).expect("compiles");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let long = "v".repeat(6000);
        let req = request("/", &[("user-agent", &long)]);
        ctx.request = Some(Box::new(Request::of(&req)));
        let headers = http::HeaderMap::new();
        let entry = LogEntry {
            status: http::StatusCode::OK,
            latency: std::time::Duration::ZERO,
            headers: &headers,
            upstream: None,
        };
        let json = serde_json::to_value(f.record(&ctx, &entry)).expect("serializes");
        assert_eq!(json["ua"].as_str().expect("text").len(), 4096);
        let multibyte = format!("a{}", "é".repeat(3000));
        assert_eq!(bounded(Cow::from(multibyte)).len(), 4095, "on a boundary");
        ctx.request = None;
        let json = serde_json::to_value(f.record(&ctx, &entry)).expect("serializes");
        assert_eq!(json, json!({"s": "200"}));
    }

    #[test]
    fn an_empty_or_huge_format_is_refused() {
        let e = format(json!({})).expect_err("empty");
        assert_eq!(e.field, ".log_format");
        assert_eq!(e.message, "0 fields: a format names 1 to 256");
        let many: serde_json::Map<String, Value> =
            (0..257).map(|i| (format!("f{i}"), json!("$uri"))).collect();
        let e = format(Value::Object(many)).expect_err("too many");
        assert_eq!(e.message, "257 fields: a format names 1 to 256");
    }

    #[test]
    fn iso8601_is_utc() {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_796_223_845);
        assert_eq!(iso8601(at), "2026-12-02T15:04:05+00:00");
    }

    #[test]
    fn size_variables_are_filled_once_the_body_is_over() {
        let f = format(json!({"body": "$body_bytes_sent", "all": "$bytes_sent", "s": "$status"}))
            .expect("compiles");
        let compiled = consumers(&[]);
        let ctx = ctx(&compiled);
        let headers = http::HeaderMap::new();
        let entry = LogEntry {
            status: http::StatusCode::OK,
            latency: std::time::Duration::ZERO,
            headers: &headers,
            upstream: None,
        };
        let mut record = f.record(&ctx, &entry);
        assert!(record.needs_size());
        record.complete(super::super::access_log::Sent {
            body: 1234,
            head: 80,
        });
        let json = serde_json::to_value(record).expect("serializes");
        assert_eq!(json, json!({"body": "1234", "all": "1314", "s": "200"}));
        let plain = format(json!({"s": "$status"})).expect("compiles");
        assert!(!plain.record(&ctx, &entry).needs_size(), "queued at once");
    }
}
