//! The access-log entry that `http-logger` and `file-logger` write, in
//! APISIX's shape: `request` (method, uri, url, querystring, headers),
//! `response` (status, headers, size), `upstream`, `latency`, `client_ip`,
//! `start_time`, `route_id`, `service_id`, `consumer`, and `trace_id` when
//! the request is traced.
//!
//! The runtime keeps the request as it arrived ([`Request`]) only when a
//! logger is on its path; the entry is built in `log` from that, the
//! response head and the context, and serialized off the request path.
//! Headers that carry credentials are left out of the log.
//!
//! An entry that names the response's size ([`Unsent`]) is built at the
//! response head and queued once the body is over: ended, failed, or
//! dropped because the client went away ([`crate::body::counted`]).
//! `response.size` is the body bytes handed to the connection plus an
//! estimate of the head (status line and the headers the proxy sends,
//! without those hyper adds: `date`, framing); `request.size` is the
//! request head's length, estimated the same way.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{request, HeaderMap};
use serde::Serialize;

use super::batch::Batcher;
use super::{Ctx, LogEntry};

/// The request as the proxy received it, before any plugin changed it.
#[derive(Debug)]
pub(crate) struct Request {
    /// Method, URI, version and headers (no extensions).
    parts: request::Parts,
    started: SystemTime,
}

impl Request {
    pub(crate) fn of(req: &request::Parts) -> Self {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = req.method.clone();
        parts.uri = req.uri.clone();
        parts.version = req.version;
        parts.headers = req.headers.clone();
        Request {
            parts,
            started: SystemTime::now(),
        }
    }

    /// The request's head, for variables (`log_format`).
    pub(crate) fn parts(&self) -> &request::Parts {
        &self.parts
    }

    /// The head's length as received, estimated: request line, headers,
    /// blank line.
    pub(crate) fn head_len(&self) -> u64 {
        let p = &self.parts;
        let target = p.uri.path_and_query().map_or(1, |pq| pq.as_str().len());
        // "GET /x HTTP/1.1\r\n" ... "\r\n"
        let line = p.method.as_str().len() + 1 + target + 1 + 8 + 2;
        (line + headers_len(&p.headers) + 2) as u64
    }
}

/// `name: value\r\n` for every header.
fn headers_len(map: &HeaderMap) -> usize {
    map.iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum()
}

/// The response head's length, estimated: status line (`HTTP/1.1 200
/// OK`), headers, blank line.
pub(crate) fn response_head_len(head: &http::response::Parts) -> u64 {
    let reason = head.status.canonical_reason().map_or(0, str::len);
    let line = 8 + 1 + 3 + 1 + reason + 2;
    (line + headers_len(&head.headers) + 2) as u64
}

/// What a response sent, once its body is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Data bytes of the body.
    pub(crate) body: u64,
    /// The head's estimated length ([`response_head_len`]).
    pub(crate) head: u64,
}

/// A size variable of `log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SizeVar {
    /// `$bytes_sent`: head and body.
    Bytes,
    /// `$body_bytes_sent`.
    Body,
}

impl SizeVar {
    pub(crate) fn of(name: &str) -> Option<Self> {
        match name {
            "bytes_sent" => Some(SizeVar::Bytes),
            "body_bytes_sent" => Some(SizeVar::Body),
            _ => None,
        }
    }

    fn value(self, sent: Sent) -> u64 {
        match self {
            SizeVar::Bytes => sent.head + sent.body,
            SizeVar::Body => sent.body,
        }
    }
}

/// An entry waiting for its response's size, and the queue it goes to.
/// Sent exactly once ([`Unsent::send`] takes it).
#[derive(Debug)]
pub(crate) struct Unsent {
    record: Record,
    queue: Batcher<Record>,
}

impl Unsent {
    pub(crate) fn new(record: Record, queue: Batcher<Record>) -> Self {
        Unsent { record, queue }
    }

    /// Completes the entry with `sent` and queues it (never waits).
    pub(crate) fn send(mut self, sent: Sent) {
        self.record.complete(sent);
        self.queue.push(self.record);
    }
}

/// Headers never written to a log: they carry credentials.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "apikey",
];

/// One access-log entry: APISIX's default, or the fields of a
/// `log_format` ([`super::log_format`]).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Record {
    Apisix(Box<Apisix>),
    Custom(Custom),
}

/// A `log_format` entry: its fields, and those still waiting for the
/// response's size.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct Custom {
    pub(crate) fields: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    pub(crate) sizes: Vec<(String, SizeVar)>,
}

impl Record {
    /// Whether the entry waits for the response's size.
    pub(crate) fn needs_size(&self) -> bool {
        match self {
            Record::Apisix(_) => true,
            Record::Custom(c) => !c.sizes.is_empty(),
        }
    }

    /// Fills in the response's size.
    pub(crate) fn complete(&mut self, sent: Sent) {
        match self {
            Record::Apisix(a) => a.response.size = Some(sent.head + sent.body),
            Record::Custom(c) => {
                for (name, var) in c.sizes.drain(..) {
                    c.fields
                        .insert(name, serde_json::Value::String(var.value(sent).to_string()));
                }
            }
        }
    }
}

/// APISIX's default entry, serialized as its logger plugins do.
#[derive(Debug, Serialize)]
pub(crate) struct Apisix {
    request: RequestPart,
    response: ResponsePart,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    /// Milliseconds from the request's arrival to its response head.
    latency: f64,
    client_ip: String,
    /// Milliseconds since the Unix epoch.
    start_time: u64,
    route_id: String,
    service_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<ConsumerPart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct RequestPart {
    method: String,
    /// The head's estimated length.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    uri: String,
    url: String,
    querystring: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct ResponsePart {
    status: u16,
    headers: BTreeMap<String, String>,
    /// Bytes sent: head (estimated) and body; set once the body is over.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ConsumerPart {
    username: String,
}

impl Record {
    /// The entry for a finished exchange.
    pub(crate) fn of(ctx: &Ctx<'_>, entry: &LogEntry<'_>) -> Self {
        let (request, start_time) = match ctx.request.as_deref() {
            Some(r) => (request_part(r), millis(r.started)),
            // Refused before the plugins ran (a malformed head): what is known.
            None => (
                RequestPart {
                    method: String::new(),
                    size: None,
                    uri: String::new(),
                    url: String::new(),
                    querystring: BTreeMap::new(),
                    headers: BTreeMap::new(),
                },
                millis(SystemTime::now()).saturating_sub(entry.latency.as_millis() as u64),
            ),
        };
        Record::Apisix(Box::new(Apisix {
            request,
            response: ResponsePart {
                status: entry.status.as_u16(),
                headers: headers(entry.headers),
                size: None,
            },
            upstream: entry.upstream.map(|a| a.to_string()),
            latency: entry.latency.as_secs_f64() * 1000.0,
            client_ip: ctx.remote_addr.ip().to_string(),
            start_time,
            route_id: ctx.route.to_string(),
            service_id: ctx.service.to_string(),
            consumer: ctx.consumer_name().map(|name| ConsumerPart {
                username: name.to_owned(),
            }),
            trace_id: ctx.trace.as_ref().map(|t| t.trace_id_hex()),
        }))
    }
}

fn request_part(r: &Request) -> RequestPart {
    let size = Some(r.head_len());
    let r = &r.parts;
    let uri = r
        .uri
        .path_and_query()
        .map_or_else(|| r.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let host = r
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            r.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let scheme = r.uri.scheme_str().unwrap_or("http");
    let querystring = r
        .uri
        .query()
        .map(|q| {
            form_pairs(q)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    RequestPart {
        method: r.method.as_str().to_owned(),
        size,
        url: format!("{scheme}://{host}{uri}"),
        uri,
        querystring,
        headers: headers(&r.headers),
    }
}

/// `a=1&b=x%20y` as decoded pairs; a key without `=` has an empty value.
fn form_pairs(
    query: &str,
) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s| percent_encoding::percent_decode_str(s).decode_utf8_lossy();
        (decode(k), decode(v))
    })
}

/// Headers by lower-case name, repeated ones joined with `, `, without the
/// ones that carry credentials or are not text.
fn headers(map: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in map {
        if SECRET_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    out
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{consumer, consumers, ctx, request};
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_entry_has_apisix_fields_without_credentials() {
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        ctx.route = Arc::from("orders");
        ctx.service = Arc::from("shop");
        ctx.consumer = Some(consumer("jack"));
        let req = request(
            "/orders?id=7&q=a%20b",
            &[
                ("host", "shop.local"),
                ("x-user", "u1"),
                ("authorization", "Bearer secret"),
                ("apikey", "k"),
            ],
        );
        ctx.request = Some(Box::new(Request::of(&req)));
        let mut response = HeaderMap::new();
        response.insert("content-type", "text/plain".parse().expect("value"));
        response.insert("set-cookie", "s=1".parse().expect("value"));
        let entry = LogEntry {
            status: http::StatusCode::CREATED,
            latency: std::time::Duration::from_micros(2500),
            headers: &response,
            upstream: Some("10.0.0.9:8080".parse().expect("addr")),
        };
        let mut record = Record::of(&ctx, &entry);
        assert!(record.needs_size());
        record.complete(Sent {
            body: 1234,
            head: 66,
        });
        let mut json = serde_json::to_value(record).expect("serializes");
        assert!(json["start_time"].as_u64().expect("a number") > 1_600_000_000_000);
        json["start_time"] = 0.into();
        assert_eq!(
            json,
            serde_json::json!({
                "request": {
                    "method": "GET",
                    // "GET /orders?id=7&q=a%20b HTTP/1.1\r\n" (35), 4
                    // headers (71), "\r\n".
                    "size": 108,
                    "uri": "/orders?id=7&q=a%20b",
                    "url": "http://shop.local/orders?id=7&q=a%20b",
                    "querystring": {"id": "7", "q": "a b"},
                    "headers": {"host": "shop.local", "x-user": "u1"}
                },
                "response": {
                    "status": 201,
                    "headers": {"content-type": "text/plain"},
                    "size": 1300
                },
                "upstream": "10.0.0.9:8080",
                "latency": 2.5,
                "client_ip": "10.0.0.7",
                "start_time": 0,
                "route_id": "orders",
                "service_id": "shop",
                "consumer": {"username": "jack"}
            })
        );
    }

    #[test]
    fn a_response_head_is_estimated_as_http1_writes_it() {
        let mut head = http::Response::new(()).into_parts().0;
        head.status = http::StatusCode::NOT_FOUND;
        head.headers
            .insert("content-length", "1234".parse().expect("value"));
        // "HTTP/1.1 404 Not Found\r\n" (24), "content-length: 1234\r\n"
        // (22), "\r\n".
        assert_eq!(response_head_len(&head), 48);
    }
}
