//! `http-logger`: batches of JSON access-log entries POSTed to `uri`, as
//! APISIX's plugin of that name.
//!
//! The entry is APISIX's ([`super::access_log`]). A batch is a JSON array
//! (`concat_method: json`, the default) or one entry per line
//! (`new_line`). Batching, retries and the bounded buffer are APISIX's
//! batch processor ([`super::batch`]): when the endpoint is down or slow,
//! entries beyond `max_pending_entries` are dropped and counted in
//! `remora_plugin_dropped_total{plugin="http-logger"}`; a request never
//! waits for the endpoint.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;

use super::access_log::Record;
use super::batch::{self, BatchFields, Batcher, HttpPost, Sink};
use super::log_format::{self, LogFormat};
use super::{in_range, parse, Ctx, Descriptor, Env, Fault, LogEntry, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("http-logger", 410, super::schema_of::<Config>, compile).recording();

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// `http://host[:port]/path` of the log endpoint.
    uri: String,
    /// The `Authorization` header sent with each batch.
    #[serde(default)]
    auth_header: Option<String>,
    /// Seconds a POST may take, 1 to 60.
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default)]
    concat_method: ConcatMethod,
    /// APISIX's name of the batch processor; for logs only.
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    /// Entries per batch, 1 to 100000.
    #[serde(default = "batch::default_batch_max_size")]
    batch_max_size: u32,
    /// Seconds without a new entry before a partial batch goes, 1 to 3600.
    #[serde(default = "batch::default_inactive_timeout")]
    inactive_timeout: u64,
    /// The oldest entry's age in seconds at which a batch goes, 1 to 3600.
    #[serde(default = "batch::default_buffer_duration")]
    buffer_duration: u64,
    /// Further tries of a batch the endpoint refused, 0 to 100.
    #[serde(default)]
    max_retry_count: u32,
    /// Seconds between tries, 0 to 3600.
    #[serde(default = "batch::default_retry_delay")]
    retry_delay: u64,
    /// Entries waiting while a batch is in flight; more are dropped and
    /// counted. 1 to 1000000.
    #[serde(default = "batch::default_max_pending_entries")]
    max_pending_entries: u32,
    /// The entry's fields: name → `$variable` or a literal; unset, the
    /// entry is APISIX's default.
    #[serde(default)]
    log_format: Option<log_format::Config>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum ConcatMethod {
    /// A JSON array of entries.
    #[default]
    Json,
    /// One JSON entry per line.
    NewLine,
}

fn default_timeout() -> u64 {
    3
}

#[derive(Debug)]
struct HttpLogger {
    entries: Batcher<Record>,
    format: Option<LogFormat>,
}

#[derive(Debug)]
struct Endpoint {
    post: HttpPost,
    concat: ConcatMethod,
}

impl Sink for Endpoint {
    type Item = Record;

    fn encode(&self, batch: Vec<Record>) -> Bytes {
        let text = match self.concat {
            ConcatMethod::Json => serde_json::to_string(&batch).unwrap_or_default(),
            ConcatMethod::NewLine => batch
                .iter()
                .filter_map(|r| serde_json::to_string(r).ok())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        Bytes::from(text)
    }

    async fn deliver(&mut self, payload: &Bytes) -> Result<(), String> {
        self.post.post(payload).await
    }
}

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    in_range("timeout", config.timeout, 1..=60)?;
    let format = log_format::compile(config.log_format.as_ref())?;
    let settings = BatchFields {
        batch_max_size: config.batch_max_size,
        inactive_timeout: config.inactive_timeout,
        buffer_duration: config.buffer_duration,
        max_retry_count: config.max_retry_count,
        retry_delay: config.retry_delay,
        max_pending_entries: config.max_pending_entries,
    }
    .settings()?;
    let mut headers = HeaderMap::new();
    let content_type = match config.concat_method {
        ConcatMethod::Json => "application/json",
        ConcatMethod::NewLine => "text/plain",
    };
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Some(auth) = &config.auth_header {
        let value = HeaderValue::from_str(auth)
            .map_err(|_| Fault::new("auth_header", "not a header value"))?;
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let post = HttpPost::new(
        "uri",
        &config.uri,
        headers,
        Duration::from_secs(config.timeout),
    )?;
    let endpoint = Endpoint {
        post,
        concat: config.concat_method,
    };
    let entries = Batcher::start(DESCRIPTOR.name, settings, endpoint, env)?;
    Ok(Arc::new(HttpLogger { entries, format }))
}

impl Plugin for HttpLogger {
    fn log(&self, ctx: &Ctx<'_>, entry: &LogEntry<'_>) {
        log_format::log(self.format.as_ref(), &self.entries, ctx, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::assert_faults;
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (json!({}), "", "missing field `uri`"),
                (json!({"uri": 5}), ".uri", "invalid type"),
                (json!({"uri": "https://sink/logs"}), ".uri", "not supported"),
                (
                    json!({"uri": "http://sink/", "timeout": 0}),
                    ".timeout",
                    "out of range",
                ),
                (
                    json!({"uri": "http://sink/", "batch_max_size": 0}),
                    ".batch_max_size",
                    "out of range",
                ),
                (
                    json!({"uri": "http://sink/", "max_pending_entries": 2_000_000}),
                    ".max_pending_entries",
                    "out of range",
                ),
                (
                    json!({"uri": "http://sink/", "inactive_timeout": 0}),
                    ".inactive_timeout",
                    "out of range",
                ),
                (
                    json!({"uri": "http://sink/", "concat_method": "csv"}),
                    ".concat_method",
                    "unknown variant",
                ),
                (
                    json!({"uri": "http://sink/", "auth_header": "a\nb"}),
                    ".auth_header",
                    "not a header value",
                ),
                (
                    json!({"uri": "http://sink/", "log_format": "$remote_addr"}),
                    ".log_format",
                    "invalid type",
                ),
                (
                    json!({"uri": "http://sink/", "log_format": {}}),
                    ".log_format",
                    "0 fields: a format names 1 to 256",
                ),
            ],
        );
    }

    #[test]
    fn batches_are_a_json_array_or_lines() {
        let compiled = super::super::testing::consumers(&[]);
        let ctx = super::super::testing::ctx(&compiled);
        let headers = HeaderMap::new();
        let entry = LogEntry {
            status: http::StatusCode::OK,
            latency: Duration::ZERO,
            headers: &headers,
            upstream: None,
        };
        let endpoint = |concat| Endpoint {
            post: HttpPost::new(
                "uri",
                "http://sink/",
                HeaderMap::new(),
                Duration::from_secs(1),
            )
            .expect("valid"),
            concat,
        };
        let json = endpoint(ConcatMethod::Json)
            .encode(vec![Record::of(&ctx, &entry), Record::of(&ctx, &entry)]);
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&json).expect("an array");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0]["response"]["status"], 200);
        let lines = endpoint(ConcatMethod::NewLine)
            .encode(vec![Record::of(&ctx, &entry), Record::of(&ctx, &entry)]);
        let text = std::str::from_utf8(&lines).expect("text");
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("one entry");
            assert_eq!(v["client_ip"], "10.0.0.7");
        }
    }
}
