//! `cors`: answers CORS preflights in the proxy and adds the CORS headers
//! to responses, as APISIX's plugin of that name.
//!
//! Every `OPTIONS` request is answered 200 by the proxy (the app never sees
//! preflights). A request whose `Origin` is allowed (`allow_origins`, a
//! comma-separated list, `*` for any, `**` to echo any origin even with
//! credentials; or one of `allow_origins_by_regex`) gets
//! `Access-Control-Allow-Origin` (its own origin, with `Vary: Origin`,
//! unless `*`), `-Allow-Methods`, `-Allow-Headers` (`**` echoes the
//! request's `Access-Control-Request-Headers`), `-Max-Age`, `-Expose-Headers`
//! and, with `allow_credential`, `-Allow-Credentials: true`. `*` cannot be
//! combined with `allow_credential`, as in APISIX. The headers are computed
//! in `rewrite` and set on whatever response the client gets.

use std::sync::Arc;

use http::{header, request, HeaderValue, Method, Response, StatusCode};
use regex::RegexSet;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{in_range, parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};
use crate::body::empty;

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("cors", 4000, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default = "star")]
    allow_origins: String,
    #[serde(default = "star")]
    allow_methods: String,
    #[serde(default = "star")]
    allow_headers: String,
    #[serde(default)]
    expose_headers: Option<String>,
    /// Seconds a preflight may be cached; -1 to 86400.
    #[serde(default = "default_max_age")]
    #[schemars(range(min = -1, max = 86400))]
    max_age: i64,
    #[serde(default)]
    allow_credential: bool,
    #[serde(default)]
    allow_origins_by_regex: Vec<String>,
}

fn star() -> String {
    "*".to_owned()
}

fn default_max_age() -> i64 {
    5
}

const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

#[derive(Debug)]
enum Origins {
    /// `*`: any, answered `*`.
    Any,
    /// `**`: any, its own origin echoed.
    Echo,
    List(Vec<String>),
}

#[derive(Debug)]
struct Cors {
    origins: Origins,
    by_regex: Option<RegexSet>,
    methods: HeaderValue,
    /// `None`: echo the request's `Access-Control-Request-Headers`.
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
    credentials: bool,
}

fn value(field: &str, text: &str) -> Result<HeaderValue, Fault> {
    HeaderValue::from_str(text)
        .map_err(|_| Fault::new(field, format!("{text:?} is not a header value")))
}

fn compile(value_: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    let c: Config = parse(value_)?;
    in_range("max_age", c.max_age, -1..=86400)?;
    if c.allow_credential {
        for (field, v) in [
            ("allow_origins", &c.allow_origins),
            ("allow_methods", &c.allow_methods),
            ("allow_headers", &c.allow_headers),
        ] {
            if v == "*" {
                return Err(Fault::new(
                    field,
                    "'*' cannot be combined with allow_credential: list the values, or use '**'",
                ));
            }
        }
    }
    let origins = match c.allow_origins.as_str() {
        "*" => Origins::Any,
        "**" => Origins::Echo,
        list => {
            let origins: Vec<String> = list.split(',').map(|o| o.trim().to_owned()).collect();
            for o in &origins {
                let valid =
                    (o.starts_with("http://") || o.starts_with("https://")) && !o.ends_with('/');
                if !valid {
                    return Err(Fault::new(
                        "allow_origins",
                        format!("{o:?} is not an origin (scheme://host[:port]), '*' or '**'"),
                    ));
                }
            }
            Origins::List(origins)
        }
    };
    let by_regex = if c.allow_origins_by_regex.is_empty() {
        None
    } else {
        for (i, r) in c.allow_origins_by_regex.iter().enumerate() {
            regex::Regex::new(r).map_err(|e| {
                Fault::new(
                    &format!("allow_origins_by_regex[{i}]"),
                    format!("does not compile: {e}"),
                )
            })?;
        }
        Some(
            RegexSet::new(&c.allow_origins_by_regex)
                .map_err(|e| Fault::new("allow_origins_by_regex", e.to_string()))?,
        )
    };
    let methods = match c.allow_methods.as_str() {
        "*" | "**" => HeaderValue::from_static(ALL_METHODS),
        list => value("allow_methods", list)?,
    };
    let headers = match c.allow_headers.as_str() {
        "**" => None,
        list => Some(value("allow_headers", list)?),
    };
    let expose = c
        .expose_headers
        .as_deref()
        .map(|e| value("expose_headers", e))
        .transpose()?;
    Ok(Arc::new(Cors {
        origins,
        by_regex,
        methods,
        headers,
        expose,
        max_age: HeaderValue::from(c.max_age),
        credentials: c.allow_credential,
    }))
}

impl Cors {
    /// The `Access-Control-Allow-Origin` for a request from `origin`.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let by_regex = |o: &str| self.by_regex.as_ref().is_some_and(|r| r.is_match(o));
        match (&self.origins, origin) {
            (Origins::Any, _) => Some(HeaderValue::from_static("*")),
            (_, None) => None,
            (Origins::Echo, Some(o)) => Some(o.clone()),
            (Origins::List(list), Some(o)) => {
                let text = o.to_str().ok()?;
                (list.iter().any(|l| l == text) || by_regex(text)).then(|| o.clone())
            }
        }
    }
}

impl Plugin for Cors {
    fn rewrite(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        if let Some(allow) = self.allow_origin(req.headers.get(header::ORIGIN)) {
            if allow != "*" {
                ctx.set_response_header(header::VARY, HeaderValue::from_static("Origin"));
            }
            ctx.set_response_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            ctx.set_response_header(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            let headers = match &self.headers {
                Some(h) => Some(h.clone()),
                None => req
                    .headers
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .cloned(),
            };
            if let Some(h) = headers {
                ctx.set_response_header(header::ACCESS_CONTROL_ALLOW_HEADERS, h);
            }
            ctx.set_response_header(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            if let Some(e) = &self.expose {
                ctx.set_response_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
            }
            if self.credentials {
                ctx.set_response_header(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
        if req.method == Method::OPTIONS {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::OK;
            return Flow::Respond(r);
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, consumers, ctx, env, request};
    use super::*;

    fn run(
        config: serde_json::Value,
        method: Method,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<(String, String)>) {
        let p = compile(&config, &env()).expect("valid");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut req = request("/", headers);
        req.method = method;
        let status = match p.rewrite(&mut ctx, &mut req) {
            Flow::Respond(r) => r.status().as_u16(),
            _ => 0,
        };
        let set = ctx
            .response_headers
            .iter()
            .map(|(n, v, _)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        (status, set)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn preflights_are_answered_with_apisix_defaults() {
        let (status, headers) = run(
            serde_json::json!({}),
            Method::OPTIONS,
            &[("origin", "http://a.example")],
        );
        assert_eq!(status, 200);
        assert_eq!(
            headers,
            pairs(&[
                ("access-control-allow-origin", "*"),
                ("access-control-allow-methods", ALL_METHODS),
                ("access-control-allow-headers", "*"),
                ("access-control-max-age", "5"),
            ])
        );
    }

    #[test]
    fn listed_and_regex_origins_are_echoed_others_get_nothing() {
        let config = serde_json::json!({
            "allow_origins": "https://app.example,http://localhost:3000",
            "allow_origins_by_regex": ["^https://.*\\.trusted\\.example$"],
            "allow_methods": "GET,POST", "allow_headers": "**", "expose_headers": "x-request-id",
            "max_age": 600, "allow_credential": true
        });
        let (status, headers) = run(
            config.clone(),
            Method::GET,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-headers", "x-token"),
            ],
        );
        assert_eq!(status, 0, "not a preflight: goes on");
        assert_eq!(
            headers,
            pairs(&[
                ("vary", "Origin"),
                ("access-control-allow-origin", "https://app.example"),
                ("access-control-allow-methods", "GET,POST"),
                ("access-control-allow-headers", "x-token"),
                ("access-control-max-age", "600"),
                ("access-control-expose-headers", "x-request-id"),
                ("access-control-allow-credentials", "true"),
            ])
        );
        let (_, headers) = run(
            config.clone(),
            Method::GET,
            &[("origin", "https://a.trusted.example")],
        );
        assert_eq!(headers[1].1, "https://a.trusted.example");
        let (_, headers) = run(
            config.clone(),
            Method::GET,
            &[("origin", "https://evil.example")],
        );
        assert!(headers.is_empty());
        let (status, headers) = run(config, Method::OPTIONS, &[]);
        assert_eq!(
            (status, headers.len()),
            (200, 0),
            "no origin: answered, no CORS headers"
        );
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (
                    serde_json::json!({"allow_credential": true}),
                    ".allow_origins",
                    "cannot be combined",
                ),
                (
                    serde_json::json!({"allow_credential": true, "allow_origins": "**"}),
                    ".allow_methods",
                    "cannot be combined",
                ),
                (
                    serde_json::json!({"allow_origins": "app.example"}),
                    ".allow_origins",
                    "not an origin",
                ),
                (
                    serde_json::json!({"allow_origins_by_regex": ["("]}),
                    ".allow_origins_by_regex[0]",
                    "does not compile",
                ),
                (
                    serde_json::json!({"max_age": 86401}),
                    ".max_age",
                    "out of range",
                ),
                (
                    serde_json::json!({"allow_methods": "GET\n"}),
                    ".allow_methods",
                    "not a header value",
                ),
            ],
        );
    }
}
