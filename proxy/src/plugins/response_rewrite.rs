//! `response-rewrite`: changes the response the client gets (status,
//! headers, body), as APISIX's plugin of that name.
//!
//! `status_code` (200 to 598) replaces the status; `body` (or base64 with
//! `body_base64`) replaces the body, with `Content-Length` set to match;
//! `headers` is APISIX's `{add: ["name: value"], set: {name: value},
//! remove: [name]}` (a flat map is read as `set`). With `vars` (conditions
//! on `status`, the response's status code), only responses that match are
//! rewritten. It applies to every response of its routes, the app's, the
//! proxy's own errors and other plugins' rejections alike. Body `filters`
//! (regex substitution) are not supported yet: a config that has them is
//! rejected.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{header, response, HeaderName, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;

use super::edits::HeaderEdits;
use super::expr::Expr;
use super::{header_name, in_range, parse, Ctx, Descriptor, Env, Fault, Plugin};
use crate::body::{full, Body};

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
    /// APISIX's regex body filters; not supported here.
    #[serde(default)]
    filters: Option<serde_json::Value>,
}

#[derive(Debug)]
struct ResponseRewrite {
    status: Option<StatusCode>,
    body: Option<Bytes>,
    add: Vec<(HeaderName, HeaderValue)>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    vars: Option<Expr>,
}

const MATCHED: &str = "response-rewrite";

fn header_value(field: &str, value: &str) -> Result<HeaderValue, Fault> {
    HeaderValue::from_str(value)
        .map_err(|_| Fault::new(field, format!("{value:?} is not a header value")))
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let config: Config = parse(value)?;
    if config.filters.is_some() {
        return Err(Fault::new(
            "filters",
            "body filters are not supported by this proxy yet; use body",
        ));
    }
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
        .map(|v| Expr::compile("vars", v, |name| name == "status"))
        .transpose()?;
    Ok(Arc::new(ResponseRewrite {
        status,
        body,
        add,
        set,
        remove,
        vars,
    }))
}

impl Plugin for ResponseRewrite {
    fn header_filter(&self, ctx: &mut Ctx<'_>, res: &mut response::Parts) {
        if let Some(vars) = &self.vars {
            let status = res.status;
            let matched = vars.eval(&|name| (name == "status").then(|| status.as_str().into()));
            if !matched {
                return;
            }
        }
        ctx.mark(MATCHED);
        if let Some(status) = self.status {
            res.status = status;
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
                    serde_json::json!({"filters": [{"regex": "a", "replace": "b"}]}),
                    ".filters",
                    "not supported",
                ),
            ],
        );
    }
}
