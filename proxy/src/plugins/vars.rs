//! Request variables as APISIX names them (`remote_addr`, `uri`,
//! `http_<header>`, `arg_<name>`, `consumer_name`...), read on demand from
//! the request and the plugin context: nothing is collected per request
//! unless a plugin asks.

use std::borrow::Cow;

use http::request;
use http::uri::{PathAndQuery, Uri};
use percent_encoding::percent_decode_str;

use super::Ctx;

/// The value of APISIX variable `name` for this request, if it has one.
pub(crate) fn var<'r>(ctx: &Ctx<'_>, req: &'r request::Parts, name: &str) -> Option<Cow<'r, str>> {
    if let Some(header) = name.strip_prefix("http_") {
        return header_var(&req.headers, header);
    }
    if let Some(arg) = name.strip_prefix("arg_") {
        return query_arg(&req.uri, arg);
    }
    let owned = |s: String| Some(Cow::Owned(s));
    match name {
        "remote_addr" => owned(ctx.remote_addr.ip().to_string()),
        "remote_port" => owned(ctx.remote_addr.port().to_string()),
        "consumer_name" => ctx.consumer_name().map(|c| Cow::Owned(c.to_owned())),
        "route_name" | "route_id" => Some(&*ctx.route)
            .filter(|r| !r.is_empty())
            .map(|r| Cow::Owned(r.to_owned())),
        "service_name" | "service_id" => Some(&*ctx.service)
            .filter(|s| !s.is_empty())
            .map(|s| Cow::Owned(s.to_owned())),
        "uri" => Some(Cow::Borrowed(req.uri.path())),
        "request_uri" => Some(Cow::Borrowed(
            req.uri.path_and_query().map_or("/", PathAndQuery::as_str),
        )),
        "args" | "query_string" => req.uri.query().map(Cow::Borrowed),
        "request_method" => Some(Cow::Borrowed(req.method.as_str())),
        "scheme" => Some(Cow::Borrowed(req.uri.scheme_str().unwrap_or("http"))),
        "server_protocol" => Some(Cow::Borrowed(match req.version {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        })),
        "host" => req.uri.host().map(Cow::Borrowed).or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(|h| Cow::Borrowed(h.rsplit_once(':').map_or(h, |(host, _)| host)))
        }),
        _ => None,
    }
}

/// Header `name` as nginx spells it in a variable (`x_user_id` for
/// `X-User-Id`), when it is text.
pub(crate) fn header_var<'m>(headers: &'m http::HeaderMap, name: &str) -> Option<Cow<'m, str>> {
    let header = name.replace('_', "-");
    headers
        .get(header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(Cow::Borrowed)
}

/// Text with APISIX variables in it (`/users/$arg_id`, `${remote_addr}`),
/// split once at config load.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Var(String),
}

impl Template {
    /// Splits `text`; a `$name` that is not a known variable is an error
    /// naming `field`. `$` not followed by a name stays literal.
    pub(crate) fn compile(field: &str, text: &str) -> Result<Self, super::Fault> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, next) = match after.strip_prefix('{') {
                Some(braced) => match braced.find('}') {
                    Some(end) => (&braced[..end], &braced[end + 1..]),
                    None => {
                        return Err(super::Fault::new(
                            field,
                            format!("unclosed `${{` in {text:?}"),
                        ))
                    }
                },
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            if name.is_empty() {
                literal.push('$');
                rest = after;
                continue;
            }
            if !is_known(name) {
                return Err(super::Fault::new(
                    field,
                    format!("${name} is not a variable this proxy knows (remote_addr, uri, consumer_name, http_<header>, arg_<name>, ...)"),
                ));
            }
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = next;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// How many variables the text names.
    pub(crate) fn vars(&self) -> usize {
        self.parts
            .iter()
            .filter(|p| matches!(p, Part::Var(_)))
            .count()
    }

    /// The text with each variable's value (empty when unset), and how many
    /// variables had one.
    pub(crate) fn render(&self, ctx: &Ctx<'_>, req: &request::Parts) -> (String, usize) {
        let mut out = String::new();
        let mut resolved = 0;
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(name) => {
                    if let Some(v) = var(ctx, req, name) {
                        resolved += 1;
                        out.push_str(&v);
                    }
                }
            }
        }
        (out, resolved)
    }
}

/// Whether `name` is a variable [`var`] knows, for config checks.
pub(crate) fn is_known(name: &str) -> bool {
    name.starts_with("http_")
        || name.starts_with("arg_")
        || matches!(
            name,
            "remote_addr"
                | "remote_port"
                | "consumer_name"
                | "route_name"
                | "route_id"
                | "service_name"
                | "service_id"
                | "uri"
                | "request_uri"
                | "args"
                | "query_string"
                | "request_method"
                | "scheme"
                | "server_protocol"
                | "host"
        )
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'r>(req: &'r request::Parts, name: &str) -> Option<&'r str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The first value of query parameter `name`, percent-decoded (`+` is a
/// space, as in forms).
pub(crate) fn query_arg<'u>(uri: &'u Uri, name: &str) -> Option<Cow<'u, str>> {
    let query = uri.query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

fn decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let spaced = text.replace('+', " ");
    Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

/// Removes every `name` parameter from the query; leaves the URI alone if it
/// has none.
pub(crate) fn remove_query_arg(uri: &mut Uri, name: &str) {
    let Some(query) = uri.query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| decode(pair.split_once('=').map_or(*pair, |(k, _)| k)) != name)
        .collect();
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = PathAndQuery::try_from(rebuilt) {
        parts.path_and_query = Some(pq);
        if let Ok(new) = Uri::from_parts(parts) {
            *uri = new;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_at_config_load_and_render_per_request() {
        let compiled = super::super::testing::consumers(&[]);
        let ctx = super::super::testing::ctx(&compiled);
        let req = super::super::testing::request("/p?id=7", &[("x-a", "b")]);
        let render = |t: &str| Template::compile("f", t).expect(t).render(&ctx, &req);
        assert_eq!(render("/u/$arg_id/x"), ("/u/7/x".into(), 1));
        assert_eq!(render("${http_x_a}-$remote_addr"), ("b-10.0.0.7".into(), 2));
        assert_eq!(render("$arg_none!"), ("!".into(), 0));
        assert_eq!(render("cost: 5$ or $"), ("cost: 5$ or $".into(), 0));
        let e = Template::compile("uri", "/$nope").expect_err("unknown");
        assert_eq!(e.field, ".uri");
        assert!(e.message.contains("$nope"), "{}", e.message);
        assert!(Template::compile("uri", "/${uri").is_err());
    }

    #[test]
    fn query_args_decode_and_remove() {
        let uri: Uri = "/p?a=1&b=x%20y&c=+z&b=2&e".parse().unwrap();
        assert_eq!(query_arg(&uri, "a").as_deref(), Some("1"));
        assert_eq!(query_arg(&uri, "b").as_deref(), Some("x y"), "first one");
        assert_eq!(query_arg(&uri, "c").as_deref(), Some(" z"));
        assert_eq!(query_arg(&uri, "e").as_deref(), Some(""));
        assert_eq!(query_arg(&uri, "zz"), None);
        let mut uri = uri;
        remove_query_arg(&mut uri, "b");
        assert_eq!(uri, "/p?a=1&c=+z&e");
        let mut only: Uri = "/p?k=1".parse().unwrap();
        remove_query_arg(&mut only, "k");
        assert_eq!(only, "/p");
        let mut bad: Uri = "/p?%zz=1".parse().unwrap();
        remove_query_arg(&mut bad, "k");
        assert_eq!(bad, "/p?%zz=1");
    }
}
