//! Request variables as APISIX names them (`remote_addr`, `uri`,
//! `http_<header>`, `arg_<name>`, `consumer_name`...). A name is parsed
//! once, when the config loads, into a [`Var`]; per request a `Var` only
//! reads the request and the plugin context: nothing is parsed, and nothing
//! is collected unless a plugin asks.

use std::borrow::Cow;

use http::header::HeaderName;
use http::request;
use http::uri::{PathAndQuery, Uri};
use percent_encoding::percent_decode_str;

use super::Ctx;

/// An APISIX request variable, parsed from its name at config load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Var {
    /// `http_<header>`: `http_x_user_id` reads `X-User-Id`.
    Header(HeaderName),
    /// `arg_<name>`: the first query parameter `name`, decoded.
    Arg(Box<str>),
    RemoteAddr,
    RemotePort,
    ConsumerName,
    /// `route_name` or `route_id`.
    RouteName,
    /// `service_name` or `service_id`.
    ServiceName,
    Uri,
    RequestUri,
    /// `args` or `query_string`.
    Args,
    RequestMethod,
    Scheme,
    ServerProtocol,
    Host,
}

impl Var {
    /// The variable `name` stands for; `None` for a name this proxy does not
    /// know, an `http_<header>` whose header name is not valid included.
    pub(crate) fn parse(name: &str) -> Option<Var> {
        if let Some(header) = name.strip_prefix("http_") {
            return header_name(header).map(Var::Header);
        }
        if let Some(arg) = name.strip_prefix("arg_") {
            return Some(Var::Arg(arg.into()));
        }
        Some(match name {
            "remote_addr" => Var::RemoteAddr,
            "remote_port" => Var::RemotePort,
            "consumer_name" => Var::ConsumerName,
            "route_name" | "route_id" => Var::RouteName,
            "service_name" | "service_id" => Var::ServiceName,
            "uri" => Var::Uri,
            "request_uri" => Var::RequestUri,
            "args" | "query_string" => Var::Args,
            "request_method" => Var::RequestMethod,
            "scheme" => Var::Scheme,
            "server_protocol" => Var::ServerProtocol,
            "host" => Var::Host,
            _ => return None,
        })
    }

    /// This variable's value for this request, if it has one.
    pub(crate) fn value<'r>(
        &self,
        ctx: &'r Ctx<'_>,
        req: &'r request::Parts,
    ) -> Option<Cow<'r, str>> {
        let borrowed = |s: &'r str| Some(Cow::Borrowed(s));
        match self {
            Var::Header(name) => header_value(&req.headers, name).map(Cow::Borrowed),
            Var::Arg(arg) => query_arg(&req.uri, arg),
            Var::RemoteAddr => Some(Cow::Owned(ctx.remote_addr.ip().to_string())),
            Var::RemotePort => Some(Cow::Owned(ctx.remote_addr.port().to_string())),
            Var::ConsumerName => ctx.consumer_name().and_then(borrowed),
            Var::RouteName => Some(&*ctx.route)
                .filter(|r| !r.is_empty())
                .and_then(borrowed),
            Var::ServiceName => Some(&*ctx.service)
                .filter(|s| !s.is_empty())
                .and_then(borrowed),
            Var::Uri => Some(Cow::Borrowed(req.uri.path())),
            Var::RequestUri => Some(Cow::Borrowed(
                req.uri.path_and_query().map_or("/", PathAndQuery::as_str),
            )),
            Var::Args => req.uri.query().map(Cow::Borrowed),
            Var::RequestMethod => Some(Cow::Borrowed(req.method.as_str())),
            Var::Scheme => Some(Cow::Borrowed(req.uri.scheme_str().unwrap_or("http"))),
            Var::ServerProtocol => Some(Cow::Borrowed(match req.version {
                http::Version::HTTP_09 => "HTTP/0.9",
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP/1.1",
            })),
            Var::Host => req.uri.host().map(Cow::Borrowed).or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(|h| Cow::Borrowed(h.rsplit_once(':').map_or(h, |(host, _)| host)))
            }),
        }
    }
}

/// The header a variable's `<header>` part names, as nginx spells it
/// (`x_user_id` for `X-User-Id`); `None` when it is not a header name.
pub(crate) fn header_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.replace('_', "-").as_bytes()).ok()
}

/// Header `name`'s value, when it is text.
pub(crate) fn header_value<'m>(headers: &'m http::HeaderMap, name: &HeaderName) -> Option<&'m str> {
    headers.get(name).and_then(|v| v.to_str().ok())
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
    Var(Var),
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
            let Some(var) = Var::parse(name) else {
                return Err(super::Fault::new(
                    field,
                    format!("${name} is not a variable this proxy knows (remote_addr, uri, consumer_name, http_<header>, arg_<name>, ...)"),
                ));
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(var));
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
                Part::Var(var) => {
                    if let Some(v) = var.value(ctx, req) {
                        resolved += 1;
                        out.push_str(&v);
                    }
                }
            }
        }
        (out, resolved)
    }
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
    // Bytes, not chars: a char-set pattern decodes UTF-8 as it goes.
    if !text.bytes().any(|b| matches!(b, b'%' | b'+')) {
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
    fn every_known_name_parses_and_others_do_not() {
        for (name, want) in [
            ("remote_addr", Var::RemoteAddr),
            ("remote_port", Var::RemotePort),
            ("consumer_name", Var::ConsumerName),
            ("route_name", Var::RouteName),
            ("route_id", Var::RouteName),
            ("service_name", Var::ServiceName),
            ("service_id", Var::ServiceName),
            ("uri", Var::Uri),
            ("request_uri", Var::RequestUri),
            ("args", Var::Args),
            ("query_string", Var::Args),
            ("request_method", Var::RequestMethod),
            ("scheme", Var::Scheme),
            ("server_protocol", Var::ServerProtocol),
            ("host", Var::Host),
            ("arg_id", Var::Arg("id".into())),
            ("arg_", Var::Arg("".into())),
            (
                "http_x_user_id",
                Var::Header(HeaderName::from_static("x-user-id")),
            ),
        ] {
            assert_eq!(Var::parse(name), Some(want), "{name}");
        }
        for name in [
            "",
            "nope",
            "status",
            "sent_http_x",
            "http_",
            "http_a b",
            "Remote_addr",
        ] {
            assert_eq!(Var::parse(name), None, "{name:?}");
        }
    }

    #[test]
    fn compiled_vars_read_the_request() {
        let compiled = super::super::testing::consumers(&[]);
        let ctx = super::super::testing::ctx(&compiled);
        let req = super::super::testing::request(
            "/p/q?id=7&name=a%20b",
            &[("X-User-Id", "u1"), ("host", "svc.local:8080")],
        );
        let value = |name: &str| {
            Var::parse(name)
                .expect(name)
                .value(&ctx, &req)
                .map(Cow::into_owned)
        };
        assert_eq!(value("http_x_user_id").as_deref(), Some("u1"));
        assert_eq!(value("http_X_User_Id").as_deref(), Some("u1"));
        assert_eq!(value("http_x_none"), None);
        assert_eq!(value("arg_name").as_deref(), Some("a b"));
        assert_eq!(value("uri").as_deref(), Some("/p/q"));
        assert_eq!(
            value("request_uri").as_deref(),
            Some("/p/q?id=7&name=a%20b")
        );
        assert_eq!(value("args").as_deref(), Some("id=7&name=a%20b"));
        assert_eq!(value("remote_addr").as_deref(), Some("10.0.0.7"));
        assert_eq!(value("request_method").as_deref(), Some("GET"));
        assert_eq!(value("host").as_deref(), Some("svc.local"));
        assert_eq!(value("consumer_name"), None);
    }

    #[test]
    fn an_invalid_header_name_is_refused_at_load_naming_the_field() {
        let e = Template::compile("uri", "/u/${http_a b}").expect_err("bad header");
        assert_eq!(e.field, ".uri");
        assert!(
            e.message.contains("$http_a b is not a variable"),
            "{}",
            e.message
        );
        let e = super::super::limits::Key::compile(super::super::limits::KeyType::Var, "http_a:b")
            .expect_err("bad header");
        assert_eq!(e.field, ".key");
        assert!(
            e.message.contains("\"http_a:b\" is not a variable"),
            "{}",
            e.message
        );
        let conds = serde_json::json!([["http_a b", "==", "x"]]);
        let e = super::super::expr::Expr::compile("match[0].vars", &conds, Var::parse)
            .expect_err("bad header");
        assert_eq!(e.field, ".match[0].vars[0]");
        assert!(
            e.message.contains("\"http_a b\" is not a variable"),
            "{}",
            e.message
        );
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
