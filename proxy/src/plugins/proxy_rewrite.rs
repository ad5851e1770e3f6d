//! `proxy-rewrite`: rewrites what the upstream receives (path, method,
//! host, headers), as APISIX's plugin of that name.
//!
//! `uri` replaces the path (variables allowed: `/v2/$arg_id`) and wins over
//! `regex_uri` (`[pattern, replacement]`, `$1` or `${1}` for groups; the first pair
//! that matches applies). The request's query is kept, appended after the
//! new URI's own. `host` replaces `Host` (and an HTTP/2 `:authority`).
//! `headers` is APISIX's `{add, set, remove}`, applied in that order, with
//! variables allowed in values; a flat map is read as `set`. Everything is
//! compiled at config load.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Uri};
use http::{header, request, HeaderName, HeaderValue, Method};
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;

use super::edits::HeaderEdits;
use super::vars::Template;
use super::{header_name, parse, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("proxy-rewrite", 1008, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The new path, starting with `/`; variables allowed.
    #[serde(default)]
    uri: Option<String>,
    /// Pairs of regex and replacement, e.g. `["^/api/(.*)", "/$1"]`.
    #[serde(default)]
    regex_uri: Option<Vec<String>>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: Option<HeaderEdits<BTreeMap<String, String>>>,
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND", "LOCK",
    "UNLOCK", "PATCH", "TRACE",
];

#[derive(Debug)]
struct ProxyRewrite {
    uri: Option<Template>,
    regex_uri: Vec<(Regex, String)>,
    method: Option<Method>,
    host: Option<(HeaderValue, Authority)>,
    add: Vec<(HeaderName, Template)>,
    set: Vec<(HeaderName, Template)>,
    remove: Vec<HeaderName>,
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    Ok(Arc::new(build(parse(value)?)?))
}

fn build(config: Config) -> Result<ProxyRewrite, Fault> {
    let uri = match &config.uri {
        Some(uri) if uri.starts_with('/') && uri.len() <= 4096 => {
            Some(Template::compile("uri", uri)?)
        }
        Some(_) => return Err(Fault::new("uri", "must start with `/`, at most 4096 bytes")),
        None => None,
    };
    let mut regex_uri = Vec::new();
    if let Some(pairs) = &config.regex_uri {
        if pairs.is_empty() || pairs.len() % 2 != 0 {
            return Err(Fault::new(
                "regex_uri",
                "takes pairs of regex and replacement, e.g. [\"^/api/(.*)\", \"/$1\"]",
            ));
        }
        for (i, pair) in pairs.chunks(2).enumerate() {
            let re = regex::RegexBuilder::new(&pair[0])
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    Fault::new(
                        &format!("regex_uri[{}]", 2 * i),
                        format!("does not compile: {e}"),
                    )
                })?;
            if !pair[1].starts_with('/') {
                return Err(Fault::new(
                    &format!("regex_uri[{}]", 2 * i + 1),
                    "a replacement must start with `/`",
                ));
            }
            regex_uri.push((re, pair[1].clone()));
        }
    }
    let method = match &config.method {
        Some(m) if METHODS.contains(&m.as_str()) => Some(
            Method::from_bytes(m.as_bytes()).map_err(|_| Fault::new("method", "not a method"))?,
        ),
        Some(m) => {
            return Err(Fault::new(
                "method",
                format!("{m:?} is not one of {}", METHODS.join(", ")),
            ))
        }
        None => None,
    };
    let host = match &config.host {
        Some(host) => {
            let bad = || Fault::new("host", format!("{host:?} is not a host[:port]"));
            let authority: Authority = host.parse().map_err(|_| bad())?;
            if host.is_empty() || host.contains('@') || authority.host().is_empty() {
                return Err(bad());
            }
            Some((HeaderValue::from_str(host).map_err(|_| bad())?, authority))
        }
        None => None,
    };
    let ops = HeaderEdits::ops(config.headers);
    let pairs = |field: &str, map: &BTreeMap<String, String>| {
        map.iter()
            .map(|(name, value)| {
                let at = format!("headers.{field}.{name}");
                Ok((header_name(&at, name)?, Template::compile(&at, value)?))
            })
            .collect::<Result<Vec<_>, Fault>>()
    };
    let add = pairs("add", &ops.add)?;
    let set = pairs("set", &ops.set)?;
    let remove = ops
        .remove
        .iter()
        .enumerate()
        .map(|(i, name)| header_name(&format!("headers.remove[{i}]"), name))
        .collect::<Result<Vec<_>, Fault>>()?;
    Ok(ProxyRewrite {
        uri,
        regex_uri,
        method,
        host,
        add,
        set,
        remove,
    })
}

impl ProxyRewrite {
    /// The new path (and its own query, if any), before the request's
    /// query is appended.
    fn new_path(&self, ctx: &Ctx<'_>, req: &request::Parts) -> Option<String> {
        if let Some(uri) = &self.uri {
            return Some(uri.render(ctx, req).0);
        }
        let path = req.uri.path();
        self.regex_uri
            .iter()
            .find(|(re, _)| re.is_match(path))
            .map(|(re, replacement)| re.replace(path, replacement.as_str()).into_owned())
    }
}

/// Sets the path and query of `uri`, keeping its scheme and authority.
fn set_path(uri: &mut Uri, path_and_query: &str) -> bool {
    let Ok(pq) = PathAndQuery::try_from(path_and_query) else {
        return false;
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    match Uri::from_parts(parts) {
        Ok(new) => {
            *uri = new;
            true
        }
        Err(_) => false,
    }
}

impl Plugin for ProxyRewrite {
    fn rewrite(&self, ctx: &mut Ctx<'_>, req: &mut request::Parts) -> Flow {
        if let Some(path) = self.new_path(ctx, req) {
            let full = match req.uri.query() {
                Some(query) if path.contains('?') => format!("{path}&{query}"),
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            if !set_path(&mut req.uri, &full) {
                tracing::debug!(uri = %full, "proxy-rewrite made an invalid URI; left unchanged");
            }
        }
        if let Some(method) = &self.method {
            req.method = method.clone();
        }
        if let Some((value, authority)) = &self.host {
            req.headers.insert(header::HOST, value.clone());
            if req.uri.authority().is_some() {
                let mut parts = req.uri.clone().into_parts();
                parts.authority = Some(authority.clone());
                if let Ok(uri) = Uri::from_parts(parts) {
                    req.uri = uri;
                }
            }
        }
        for (ops, append) in [(&self.add, true), (&self.set, false)] {
            for (name, template) in ops {
                let (value, _) = template.render(ctx, req);
                let Ok(value) = HeaderValue::from_str(&value) else {
                    continue;
                };
                if append {
                    req.headers.append(name.clone(), value);
                } else {
                    req.headers.insert(name.clone(), value);
                }
            }
        }
        for name in &self.remove {
            req.headers.remove(name);
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_faults, consumers, ctx, request};
    use super::*;

    fn rewritten(config: serde_json::Value, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let p = build(parse(&config).expect("parses")).expect("builds");
        let compiled = consumers(&[]);
        let mut ctx = ctx(&compiled);
        let mut req = request(uri, headers);
        assert!(matches!(p.rewrite(&mut ctx, &mut req), Flow::Continue));
        req
    }

    #[test]
    fn uris_are_replaced_with_variables_and_the_query_kept() {
        let req = rewritten(
            serde_json::json!({"uri": "/v2/$arg_id"}),
            "/v1/x?id=7&b=2",
            &[],
        );
        assert_eq!(req.uri, "/v2/7?id=7&b=2");
        let req = rewritten(serde_json::json!({"uri": "/new?x=1"}), "/old?y=2", &[]);
        assert_eq!(req.uri, "/new?x=1&y=2");
        let req = rewritten(
            serde_json::json!({"uri": "/new", "regex_uri": ["^/(.*)", "/r/$1"]}),
            "/old",
            &[],
        );
        assert_eq!(req.uri, "/new", "uri wins over regex_uri");
    }

    #[test]
    fn regex_uri_applies_the_first_matching_pair() {
        let config = serde_json::json!({"regex_uri": ["^/api/v1/(.*)$", "/$1", "^/legacy/(\\w+)/(\\w+)", "/$2/$1"]});
        assert_eq!(
            rewritten(config.clone(), "/api/v1/users?a=1", &[]).uri,
            "/users?a=1"
        );
        assert_eq!(rewritten(config.clone(), "/legacy/a/b", &[]).uri, "/b/a");
        assert_eq!(
            rewritten(config, "/other", &[]).uri,
            "/other",
            "no match: unchanged"
        );
    }

    #[test]
    fn method_host_and_headers_are_rewritten_in_apisix_order() {
        let req = rewritten(
            serde_json::json!({
                "method": "POST",
                "host": "api.internal:8080",
                "headers": {"add": {"x-tag": "b"}, "set": {"x-user": "$http_x_id", "x-tag": "set"}, "remove": ["x-secret"]}
            }),
            "/",
            &[
                ("host", "web"),
                ("x-tag", "a"),
                ("x-id", "42"),
                ("x-secret", "s"),
            ],
        );
        assert_eq!(req.method, Method::POST);
        assert_eq!(req.headers["host"], "api.internal:8080");
        assert_eq!(req.headers["x-user"], "42");
        assert_eq!(
            req.headers.get_all("x-tag").iter().collect::<Vec<_>>(),
            ["set"],
            "set after add replaces both"
        );
        assert!(!req.headers.contains_key("x-secret"));
        let req = rewritten(serde_json::json!({"headers": {"x-flat": "1"}}), "/", &[]);
        assert_eq!(req.headers["x-flat"], "1", "a flat map is set");
        let req = rewritten(
            serde_json::json!({"host": "b.internal"}),
            "http://a.internal/x",
            &[],
        );
        assert_eq!(req.uri, "http://b.internal/x", "HTTP/2 authority too");
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (
                    serde_json::json!({"uri": "relative"}),
                    ".uri",
                    "start with `/`",
                ),
                (serde_json::json!({"uri": "/$bogus"}), ".uri", "$bogus"),
                (
                    serde_json::json!({"regex_uri": ["^/a"]}),
                    ".regex_uri",
                    "pairs",
                ),
                (
                    serde_json::json!({"regex_uri": ["(", "/"]}),
                    ".regex_uri[0]",
                    "does not compile",
                ),
                (
                    serde_json::json!({"regex_uri": ["^/a", "b"]}),
                    ".regex_uri[1]",
                    "start with `/`",
                ),
                (
                    serde_json::json!({"method": "get"}),
                    ".method",
                    "is not one of",
                ),
                (serde_json::json!({"host": "a b"}), ".host", "not a host"),
                (serde_json::json!({"host": "u@h"}), ".host", "not a host"),
                (
                    serde_json::json!({"headers": {"set": {"bad name": "v"}}}),
                    ".headers.set.bad name",
                    "not a header name",
                ),
                (
                    serde_json::json!({"headers": {"remove": ["ok", "no pe"]}}),
                    ".headers.remove[1]",
                    "not a header name",
                ),
                (serde_json::json!({"uri": 5}), ".uri", "invalid type"),
            ],
        );
    }
}
