//! `response-rewrite`: changes the response the client gets (status,
//! headers, body), as APISIX's plugin of that name.
//!
//! `status_code` (200 to 598) replaces the status; `body` (or base64 with
//! `body_base64`) replaces the body, with `Content-Length` set to match;
//! `headers` is APISIX's `{add: ["name: value"], set: {name: value},
//! remove: [name]}` (a flat map is read as `set`). With `vars` (conditions
//! on `status`, the response's status code), only responses that match are
//! rewritten. It applies to every response of its routes, the app's, the
//! proxy's own errors and other plugins' rejections alike.
//!
//! `filters` (instead of `body`) substitute regexes in the body, in order:
//! `{regex, scope: once|global, replace, options}`. The body is gathered up
//! to [`MAX_FILTERED_BODY`]; a longer one, or one with a
//! `Content-Encoding`, passes through unchanged (as APISIX leaves what it
//! cannot filter), counted in
//! `remora_plugin_body_skipped_total{plugin="response-rewrite",reason}`
//! (`too_large`, `encoded`).

use std::sync::Arc;

use std::pin::Pin;

use ::prometheus::{IntCounter, IntCounterVec, Opts};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, Stream, StreamExt};
use http::{header, response, HeaderName, HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use schemars::JsonSchema;
use serde::Deserialize;

use super::edits::HeaderEdits;
use super::expr::Expr;
use super::{header_name, in_range, parse, Ctx, Descriptor, Env, Fault, Plugin};
use crate::body::{full, Body};
use crate::error::BoxError;

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("response-rewrite", 899, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// 200 to 598.
    #[serde(default)]
    #[schemars(range(min = 200, max = 598))]
    status_code: Option<u16>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_base64: bool,
    /// `add` holds `"name: value"` lines, appended.
    #[serde(default)]
    headers: Option<HeaderEdits<Vec<String>>>,
    /// Conditions on `status`; unset, every response is rewritten.
    #[serde(default)]
    vars: Option<serde_json::Value>,
    /// Regex substitutions on the body, in order; not with `body`.
    #[serde(default)]
    filters: Option<Vec<FilterConfig>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FilterConfig {
    regex: String,
    /// `once` (the first match) or `global` (every match).
    #[serde(default)]
    scope: Scope,
    /// The replacement; `$1`, `${name}` refer to groups.
    replace: String,
    /// PCRE-style flags: `i`, `m`, `s`, `x`; `j` and `o` are accepted and
    /// mean nothing here.
    #[serde(default = "default_options")]
    options: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Scope {
    #[default]
    Once,
    Global,
}

fn default_options() -> String {
    "jo".to_owned()
}

/// The largest body `filters` rewrite; a longer one passes unchanged.
pub(crate) const MAX_FILTERED_BODY: usize = 1024 * 1024;

/// The most filters one config may hold.
const MAX_FILTERS: usize = 64;

/// One compiled `filters` entry.
#[derive(Debug)]
struct BodyFilter {
    regex: regex::bytes::Regex,
    global: bool,
    replace: Vec<u8>,
}

#[derive(Debug)]
struct ResponseRewrite {
    status: Option<StatusCode>,
    body: Option<Bytes>,
    add: Vec<(HeaderName, HeaderValue)>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    /// Conditions on the one variable a response has here, `status`.
    vars: Option<Expr<()>>,
    filters: Arc<[BodyFilter]>,
    skipped: IntCounterVec,
}

const MATCHED: &str = "response-rewrite";
/// The body is to go through `filters`.
const FILTER: &str = "response-rewrite:filter";

fn header_value(field: &str, value: &str) -> Result<HeaderValue, Fault> {
    HeaderValue::from_str(value)
        .map_err(|_| Fault::new(field, format!("{value:?} is not a header value")))
}

fn compile(value: &serde_json::Value, env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    if config.filters.is_some() && config.body.is_some() {
        return Err(Fault::new("filters", "is not allowed with body"));
    }
    let filters = compile_filters(config.filters.as_deref().unwrap_or_default())?;
    let status = match config.status_code {
        Some(code) => {
            in_range("status_code", code, 200..=598)?;
            Some(
                StatusCode::from_u16(code)
                    .map_err(|_| Fault::new("status_code", "not a status code"))?,
            )
        }
        None => None,
    };
    let body = match (config.body, config.body_base64) {
        (Some(b), true) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| Fault::new("body", format!("is not base64: {e}")))?,
        )),
        (Some(b), false) => Some(Bytes::from(b)),
        (None, true) => return Err(Fault::new("body_base64", "needs a body")),
        (None, false) => None,
    };
    let ops = HeaderEdits::ops(config.headers);
    let add = ops
        .add
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let at = format!("headers.add[{i}]");
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| Fault::new(&at, format!("{line:?} is not \"name: value\"")))?;
            Ok((
                header_name(&at, name.trim())?,
                header_value(&at, value.trim())?,
            ))
        })
        .collect::<Result<_, Fault>>()?;
    let set = ops
        .set
        .iter()
        .map(|(name, value)| {
            let at = format!("headers.set.{name}");
            Ok((header_name(&at, name)?, header_value(&at, value)?))
        })
        .collect::<Result<_, Fault>>()?;
    let remove = ops
        .remove
        .iter()
        .enumerate()
        .map(|(i, name)| header_name(&format!("headers.remove[{i}]"), name))
        .collect::<Result<_, Fault>>()?;
    let vars = config
        .vars
        .as_ref()
        .map(|v| Expr::compile("vars", v, |name| (name == "status").then_some(())))
        .transpose()?;
    Ok(Arc::new(ResponseRewrite {
        status,
        body,
        add,
        set,
        remove,
        vars,
        filters: filters.into(),
        skipped: env.body_skipped.clone(),
    }))
}

fn compile_filters(list: &[FilterConfig]) -> Result<Vec<BodyFilter>, Fault> {
    if list.len() > MAX_FILTERS {
        return Err(Fault::new(
            "filters",
            format!("must list at most {MAX_FILTERS} filters"),
        ));
    }
    let mut filters = Vec::with_capacity(list.len());
    for (i, f) in list.iter().enumerate() {
        let at = format!("filters[{i}]");
        if f.regex.is_empty() {
            return Err(Fault::new(&format!("{at}.regex"), "must not be empty"));
        }
        let mut builder = regex::bytes::RegexBuilder::new(&f.regex);
        builder.size_limit(1 << 20);
        for flag in f.options.chars() {
            match flag {
                'i' => builder.case_insensitive(true),
                'm' => builder.multi_line(true),
                's' => builder.dot_matches_new_line(true),
                'x' => builder.ignore_whitespace(true),
                'j' | 'o' => &mut builder,
                other => {
                    return Err(Fault::new(
                        &format!("{at}.options"),
                        format!("{other:?} is not one of the flags i, m, s, x, j, o"),
                    ))
                }
            };
        }
        let regex = builder
            .build()
            .map_err(|e| Fault::new(&format!("{at}.regex"), format!("does not compile: {e}")))?;
        filters.push(BodyFilter {
            regex,
            global: f.scope == Scope::Global,
            replace: f.replace.clone().into_bytes(),
        });
    }
    Ok(filters)
}

/// `body` with every filter applied, in order.
fn apply(filters: &[BodyFilter], body: &[u8]) -> Bytes {
    let mut text = body.to_vec();
    for f in filters {
        let out = if f.global {
            f.regex.replace_all(&text, f.replace.as_slice())
        } else {
            f.regex.replace(&text, f.replace.as_slice())
        };
        if let std::borrow::Cow::Owned(out) = out {
            text = out;
        }
    }
    Bytes::from(text)
}

/// `remora_plugin_body_skipped_total{plugin, reason}`, registered once
/// per process.
pub(super) fn body_skipped(metrics: &crate::metrics::Metrics) -> IntCounterVec {
    let opts = Opts::new(
        "remora_plugin_body_skipped_total",
        "Response bodies a plugin passed through unchanged (too large, encoded), by plugin and reason",
    );
    let vec =
        IntCounterVec::new(opts, &["plugin", "reason"]).expect("a static, valid metric definition");
    if let Err(e) = metrics.registry().register(Box::new(vec.clone())) {
        tracing::warn!(error = %e, "plugin metrics not registered");
    }
    vec
}

type Frames = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, BoxError>> + Send>>;

/// `body` gathered (up to the cap) and filtered; past the cap, what was
/// gathered and the rest go on unchanged.
fn filtered(body: Body, filters: Arc<[BodyFilter]>, skipped: IntCounter) -> Body {
    let gather = async move {
        let mut body = body;
        let mut gathered = BytesMut::new();
        loop {
            let frame = match body.frame().await {
                None => {
                    let done = Frame::data(apply(&filters, &gathered));
                    return Box::pin(stream::iter([Ok(done)])) as Frames;
                }
                Some(Err(e)) => return Box::pin(stream::iter([Err(e)])) as Frames,
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    gathered.extend_from_slice(&data);
                    if gathered.len() > MAX_FILTERED_BODY {
                        skipped.inc();
                        let head = stream::iter([Ok(Frame::data(gathered.freeze()))]);
                        return Box::pin(head.chain(BodyStream::new(body))) as Frames;
                    }
                }
                // Trailers end the body: what was gathered goes first.
                Err(trailers) => {
                    let done = Frame::data(apply(&filters, &gathered));
                    return Box::pin(stream::iter([Ok(done), Ok(trailers)])) as Frames;
                }
            }
        }
    };
    StreamBody::new(stream::once(gather).flatten()).boxed_unsync()
}

impl Plugin for ResponseRewrite {
    fn header_filter(&self, ctx: &mut Ctx<'_>, res: &mut response::Parts) {
        if let Some(vars) = &self.vars {
            let status = res.status;
            let matched = vars.eval(&|()| Some(status.as_str().into()));
            if !matched {
                return;
            }
        }
        ctx.mark(MATCHED);
        if let Some(status) = self.status {
            res.status = status;
        }
        if !self.filters.is_empty() {
            if res.headers.contains_key(header::CONTENT_ENCODING) {
                self.skipped
                    .with_label_values(&["response-rewrite", "encoded"])
                    .inc();
            } else {
                ctx.mark(FILTER);
                res.headers.remove(header::CONTENT_LENGTH);
            }
        }
        if let Some(body) = &self.body {
            res.headers.remove(header::TRANSFER_ENCODING);
            res.headers.remove(header::CONTENT_ENCODING);
            res.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        for (name, value) in &self.add {
            res.headers.append(name.clone(), value.clone());
        }
        for (name, value) in &self.set {
            res.headers.insert(name.clone(), value.clone());
        }
        for name in &self.remove {
            res.headers.remove(name);
        }
    }

    fn body_filter(&self, ctx: &mut Ctx<'_>, body: Body) -> Body {
        match &self.body {
            Some(replacement) if ctx.marked(MATCHED) => full(replacement.clone()),
            _ if ctx.marked(FILTER) => filtered(
                body,
                self.filters.clone(),
                self.skipped
                    .with_label_values(&["response-rewrite", "too_large"]),
            ),
            _ => body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, body_text, consumers, ctx, env};
    use super::*;

    fn rewritten(config: serde_json::Value, status: u16) -> http::Response<Body> {
        let p = compile(&config, &env()).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut response = http::Response::new(full("original"));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        let h = response.headers_mut();
        h.insert("content-length", HeaderValue::from(8));
        h.insert("server", HeaderValue::from_static("app"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let (mut head, body) = response.into_parts();
        p.header_filter(&mut ctx, &mut head);
        let body = p.body_filter(&mut ctx, body);
        http::Response::from_parts(head, body)
    }

    #[test]
    fn status_headers_and_body_are_replaced() {
        let r = rewritten(
            serde_json::json!({
                "status_code": 299,
                "body": "{\"ok\":true}",
                "headers": {"add": ["x-a: 1", "x-a: 2"], "set": {"x-keep": "2"}, "remove": ["server"]}
            }),
            200,
        );
        assert_eq!(r.status(), 299);
        assert_eq!(r.headers()["content-length"], "11");
        assert_eq!(
            r.headers().get_all("x-a").iter().collect::<Vec<_>>(),
            ["1", "2"]
        );
        assert_eq!(r.headers()["x-keep"], "2");
        assert!(!r.headers().contains_key("server"));
        assert_eq!(body_text(r), "{\"ok\":true}");
        let r = rewritten(
            serde_json::json!({"body": "aGk=", "body_base64": true, "headers": {"x-flat": "y"}}),
            200,
        );
        assert_eq!(r.headers()["x-flat"], "y");
        assert_eq!(body_text(r), "hi");
    }

    #[test]
    fn vars_pick_the_responses_to_rewrite() {
        let config = serde_json::json!({"status_code": 200, "body": "fallback", "vars": [["status", ">=", 500]]});
        let r = rewritten(config.clone(), 503);
        assert_eq!(
            (r.status().as_u16(), body_text(r)),
            (200, "fallback".into())
        );
        let r = rewritten(config, 404);
        assert_eq!(
            (r.status().as_u16(), body_text(r)),
            (404, "original".into())
        );
    }

    /// The body and `content-length` a response gets through `config`,
    /// and the skipped counts (too_large, encoded).
    fn filter(
        config: serde_json::Value,
        body: Body,
        headers: &[(&str, &str)],
    ) -> (String, Option<String>, (u64, u64)) {
        let env = env();
        let p = compile(&config, &env).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut response = http::Response::new(body);
        for (name, value) in headers {
            response.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let (mut head, body) = response.into_parts();
        p.header_filter(&mut ctx, &mut head);
        let body = p.body_filter(&mut ctx, body);
        let length = head
            .headers
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_owned());
        let skipped = |reason| {
            env.body_skipped
                .with_label_values(&["response-rewrite", reason])
                .get()
        };
        let text = body_text(http::Response::new(body));
        (text, length, (skipped("too_large"), skipped("encoded")))
    }

    #[test]
    fn filters_substitute_once_or_globally_in_order() {
        let config = serde_json::json!({"filters": [
            {"regex": "(\\w+)@example\\.com", "scope": "global", "replace": "$1@hidden"},
            {"regex": "SECRET", "replace": "***", "options": "ijo"}
        ]});
        let (text, length, skipped) = filter(
            config,
            full("a@example.com b@example.com secret SECRET"),
            &[("content-length", "41")],
        );
        assert_eq!(text, "a@hidden b@hidden *** SECRET");
        assert_eq!(length, None, "the length changed");
        assert_eq!(skipped, (0, 0));
        let (text, _, _) = filter(
            serde_json::json!({"filters": [{"regex": "^x$", "replace": "y", "options": "m"}]}),
            full("a\nx\nb"),
            &[],
        );
        assert_eq!(text, "a\ny\nb");
    }

    #[test]
    fn bodies_past_the_cap_or_encoded_pass_unchanged_and_are_counted() {
        let config =
            serde_json::json!({"filters": [{"regex": "a", "scope": "global", "replace": "b"}]});
        let big = "a".repeat(MAX_FILTERED_BODY + 1);
        let (text, _, skipped) = filter(config.clone(), full(big.clone()), &[]);
        assert_eq!((text.len(), text == big), (big.len(), true));
        assert_eq!(skipped, (1, 0));
        let (text, length, skipped) = filter(
            config,
            full("aaa"),
            &[("content-encoding", "gzip"), ("content-length", "3")],
        );
        assert_eq!((text.as_str(), length.as_deref()), ("aaa", Some("3")));
        assert_eq!(skipped, (0, 1));
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (
                    serde_json::json!({"status_code": 199}),
                    ".status_code",
                    "out of range",
                ),
                (
                    serde_json::json!({"status_code": 599}),
                    ".status_code",
                    "out of range",
                ),
                (
                    serde_json::json!({"body": "%%", "body_base64": true}),
                    ".body",
                    "not base64",
                ),
                (
                    serde_json::json!({"body_base64": true}),
                    ".body_base64",
                    "needs a body",
                ),
                (
                    serde_json::json!({"headers": {"add": ["no-colon"]}}),
                    ".headers.add[0]",
                    "not \"name: value\"",
                ),
                (
                    serde_json::json!({"headers": {"set": {"x": "a\nb"}}}),
                    ".headers.set.x",
                    "not a header value",
                ),
                (
                    serde_json::json!({"vars": [["uri", "==", "/"]]}),
                    ".vars[0]",
                    "not a variable",
                ),
                (
                    serde_json::json!({"body": "x", "filters": [{"regex": "a", "replace": "b"}]}),
                    ".filters",
                    "not allowed with body",
                ),
                (
                    serde_json::json!({"filters": [{"regex": "(", "replace": "b"}]}),
                    ".filters[0].regex",
                    "does not compile",
                ),
                (
                    serde_json::json!({"filters": [{"regex": "a", "replace": "b", "options": "jz"}]}),
                    ".filters[0].options",
                    "'z' is not one of the flags",
                ),
                (
                    serde_json::json!({"filters": [{"regex": "a", "replace": "b", "scope": "all"}]}),
                    ".filters[0].scope",
                    "unknown variant",
                ),
                (
                    serde_json::json!({"filters": [{"regex": "a"}]}),
                    ".filters[0]",
                    "missing field `replace`",
                ),
            ],
        );
    }
}
