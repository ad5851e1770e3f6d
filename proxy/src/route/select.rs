//! Route matching and precedence.
//!
//! This module owns compiling each `RouteMatch` into a [`MatchEntry`] with
//! its precedence [`Rank`], and testing a request head against it. It does
//! not own filters or backends.
//!
//! Precedence follows the Gateway API HTTPRoute spec, across every match of
//! every route of one service port:
//!
//! 1. an `Exact` path beats every other path;
//! 2. a longer `PathPrefix` beats a shorter one (`/` is the shortest);
//! 3. a `method` beats none;
//! 4. more `headers` beat fewer;
//! 5. more `queryParams` beat fewer;
//! 6. then the earlier route, then the earlier match within it.
//!
//! `RegularExpression` paths are implementation-specific in the spec; here
//! they rank below every `Exact` and `PathPrefix` path, including `/`, and
//! among themselves by the rules from 3 on. A `grpcMethod` with an exact
//! service and method ranks as an `Exact` path, an exact service alone as
//! the prefix `/<service>/`, and an exact method alone as the prefix `/`
//! with the method's length breaking the tie (so it beats a catch-all);
//! regex gRPC matches rank with regex paths. That orders gRPC matches as
//! GRPCRoute does: service and method, then service, then method.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::cmp::Reverse;

use http::header::{HeaderMap, HeaderName};
use regex::Regex;
use remora_api::{GrpcMethodMatch, MatchType, PathMatchType, RouteMatch};

use super::{CompiledRoute, FieldError};

/// The route chosen for a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Selected<'a> {
    pub(crate) route: &'a CompiledRoute,
    /// The route's index in the port's `routes`, for metrics and logs.
    pub(crate) route_index: usize,
    /// The `PathPrefix` value that matched, without a trailing `/` (`/` for
    /// the root), for `ReplacePrefixMatch`. `None` for other path kinds.
    pub(crate) matched_prefix: Option<&'a str>,
}

/// One (route, match) pair, compiled.
#[derive(Debug)]
pub(super) struct MatchEntry {
    rank: Rank,
    path: PathMatcher,
    method: Option<http::Method>,
    headers: Vec<HeaderMatcher>,
    query_params: Vec<QueryParamMatcher>,
}

/// Sort key: smaller sorts first and wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rank {
    path_class: PathClass,
    longer_prefix: Reverse<usize>,
    longer_grpc_method: Reverse<usize>,
    without_method: bool,
    more_headers: Reverse<usize>,
    more_query_params: Reverse<usize>,
    route: usize,
    match_index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathClass {
    Exact,
    Prefix,
    Regex,
    /// The catch-all prefix `/` (or no path at all): below regexes, so that
    /// a regex route is not shadowed by a catch-all route.
    Root,
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// Without its trailing `/`; empty for the root, which matches all.
    Prefix(String),
    Regex(Regex),
    Grpc(GrpcMatcher),
}

/// An unset part matches any service or method.
#[derive(Debug)]
struct GrpcMatcher {
    service: Option<ValueMatcher>,
    method: Option<ValueMatcher>,
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    /// Anchored: must match the whole value.
    Regex(Regex),
}

#[derive(Debug)]
struct HeaderMatcher {
    name: HeaderName,
    value: ValueMatcher,
}

#[derive(Debug)]
struct QueryParamMatcher {
    name: String,
    value: ValueMatcher,
}

/// What matching needs from a request, parsed at most once per request.
#[derive(Debug)]
pub(super) struct RequestView<'a> {
    parts: &'a http::request::Parts,
    query_params: OnceCell<Vec<(String, String)>>,
}

impl<'a> RequestView<'a> {
    pub(super) fn new(parts: &'a http::request::Parts) -> Self {
        Self {
            parts,
            query_params: OnceCell::new(),
        }
    }

    fn path(&self) -> &str {
        self.parts.uri.path()
    }

    /// The first value of query parameter `name`, percent-decoded.
    fn query_param(&self, name: &str) -> Option<&str> {
        self.query_params
            .get_or_init(|| parse_query(self.parts.uri.query().unwrap_or("")))
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl MatchEntry {
    pub(super) fn rank(&self) -> Rank {
        self.rank
    }

    pub(super) fn route_index(&self) -> usize {
        self.rank.route
    }

    pub(super) fn matched_prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatcher::Prefix(prefix) if prefix.is_empty() => Some("/"),
            PathMatcher::Prefix(prefix) => Some(prefix),
            _ => None,
        }
    }

    /// Whether every condition of the match holds for the request.
    pub(super) fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path.matches(req.path())
            && self.method.as_ref().is_none_or(|m| *m == req.parts.method)
            && self.headers.iter().all(|h| {
                header_value(&req.parts.headers, &h.name).is_some_and(|v| h.value.matches_bytes(&v))
            })
            && self
                .query_params
                .iter()
                .all(|q| req.query_param(&q.name).is_some_and(|v| q.value.matches(v)))
    }
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(value) => path == value,
            Self::Prefix(prefix) => prefix_matches(prefix, path),
            Self::Regex(regex) => regex.is_match(path),
            Self::Grpc(grpc) => grpc.matches(path),
        }
    }
}

/// Element-wise prefix: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not
/// `/foobar`. `prefix` has no trailing `/`; the empty prefix matches all.
pub(super) fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl GrpcMatcher {
    fn matches(&self, path: &str) -> bool {
        let Some((service, method)) = grpc_path(path) else {
            return false;
        };
        self.service.as_ref().is_none_or(|s| s.matches(service))
            && self.method.as_ref().is_none_or(|m| m.matches(method))
    }
}

/// Splits a gRPC request path, `/<service>/<method>`.
fn grpc_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

impl ValueMatcher {
    fn compile(kind: MatchType, value: &str, field: String) -> Result<Self, FieldError> {
        Ok(match kind {
            MatchType::Exact => Self::Exact(value.to_owned()),
            MatchType::RegularExpression => Self::Regex(anchored(value, field)?),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(expected) => value == expected,
            Self::Regex(regex) => regex.is_match(value),
        }
    }

    /// Header values are bytes; a regex sees them decoded lossily.
    fn matches_bytes(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(expected) => value == expected.as_bytes(),
            Self::Regex(regex) => regex.is_match(&String::from_utf8_lossy(value)),
        }
    }
}

/// Compiles `pattern` so that it must match the whole value, as Gateway API
/// says.
fn anchored(pattern: &str, field: String) -> Result<Regex, FieldError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|source| FieldError::Regex {
        field,
        pattern: pattern.to_owned(),
        source: Box::new(source),
    })
}

/// A request header's value; repeated fields are joined with `,` as RFC 9110
/// allows, so a match sees them as one list.
fn header_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Cow<'h, [u8]>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut joined = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        joined.push(b',');
        joined.extend_from_slice(value.as_bytes());
    }
    Some(Cow::Owned(joined))
}

/// Parses `application/x-www-form-urlencoded` pairs: `+` is a space, `%XX` a
/// byte, and a malformed escape is kept as written. Bytes that are not UTF-8
/// are replaced, so such a value matches only a regex that allows it.
pub(super) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                if let Some(decoded) = hex {
                    out.push(decoded);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compiles a route's matches; no matches is one match-everything entry.
pub(super) fn compile_matches(
    route: usize,
    matches: &[RouteMatch],
) -> Result<Vec<MatchEntry>, FieldError> {
    if matches.is_empty() {
        return compile_match(route, 0, &RouteMatch::default()).map(|entry| vec![entry]);
    }
    matches
        .iter()
        .enumerate()
        .map(|(index, m)| compile_match(route, index, m))
        .collect()
}

fn compile_match(route: usize, index: usize, m: &RouteMatch) -> Result<MatchEntry, FieldError> {
    let field = |rest: &str| format!("matches[{index}].{rest}");
    let path = match (&m.grpc_method, &m.path) {
        (Some(grpc), _) => compile_grpc(grpc, &field("grpcMethod"))?,
        (None, None) => PathMatcher::Prefix(String::new()),
        (None, Some(p)) => match p.kind {
            PathMatchType::Exact => PathMatcher::Exact(p.value.clone()),
            PathMatchType::PathPrefix => {
                PathMatcher::Prefix(p.value.trim_end_matches('/').to_owned())
            }
            PathMatchType::RegularExpression => {
                PathMatcher::Regex(anchored(&p.value, field("path.value"))?)
            }
        },
    };
    let method = m
        .method
        .map(|method| {
            http::Method::from_bytes(method.as_str().as_bytes()).map_err(|e| FieldError::Invalid {
                field: field("method"),
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let name =
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| FieldError::Invalid {
                    field: field(&format!("headers[{i}].name")),
                    reason: format!("{:?} is not a valid HTTP header name", h.name),
                })?;
            let value =
                ValueMatcher::compile(h.kind, &h.value, field(&format!("headers[{i}].value")))?;
            Ok(HeaderMatcher { name, value })
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    let query_params = m
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            Ok(QueryParamMatcher {
                name: q.name.clone(),
                value: ValueMatcher::compile(
                    q.kind,
                    &q.value,
                    field(&format!("queryParams[{i}].value")),
                )?,
            })
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    let (path_class, prefix_len, grpc_method_len) = path_rank(&path, m.grpc_method.as_ref());
    Ok(MatchEntry {
        rank: Rank {
            path_class,
            longer_prefix: Reverse(prefix_len),
            longer_grpc_method: Reverse(grpc_method_len),
            without_method: method.is_none(),
            more_headers: Reverse(headers.len()),
            more_query_params: Reverse(query_params.len()),
            route,
            match_index: index,
        },
        path,
        method,
        headers,
        query_params,
    })
}

fn compile_grpc(grpc: &GrpcMethodMatch, field: &str) -> Result<PathMatcher, FieldError> {
    let part = |value: &Option<String>, name: &str| {
        value
            .as_deref()
            .map(|v| ValueMatcher::compile(grpc.kind, v, format!("{field}.{name}")))
            .transpose()
    };
    Ok(PathMatcher::Grpc(GrpcMatcher {
        service: part(&grpc.service, "service")?,
        method: part(&grpc.method, "method")?,
    }))
}

/// (class, prefix length, gRPC method length) for [`Rank`].
fn path_rank(path: &PathMatcher, grpc: Option<&GrpcMethodMatch>) -> (PathClass, usize, usize) {
    match path {
        PathMatcher::Exact(_) => (PathClass::Exact, 0, 0),
        PathMatcher::Prefix(prefix) if prefix.is_empty() => (PathClass::Root, 0, 0),
        PathMatcher::Prefix(prefix) => (PathClass::Prefix, prefix.len(), 0),
        PathMatcher::Regex(_) => (PathClass::Regex, 0, 0),
        PathMatcher::Grpc(_) => match grpc {
            Some(GrpcMethodMatch {
                kind: MatchType::Exact,
                service,
                method,
            }) => match (service, method) {
                (Some(_), Some(_)) => (PathClass::Exact, 0, 0),
                // Ranks as the prefix `/<service>`, without its trailing `/`
                // like any other prefix.
                (Some(service), None) => (PathClass::Prefix, service.len() + 1, 0),
                (None, Some(method)) => (PathClass::Prefix, 0, method.len()),
                (None, None) => (PathClass::Root, 0, 0),
            },
            _ => (PathClass::Regex, 0, 0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::{chosen, request, table};
    use crate::route::RouteTable;

    fn get(uri: &str) -> http::request::Parts {
        request("GET", uri, &[])
    }

    #[test]
    fn exact_path_beats_a_prefix_of_the_same_length_listed_first() {
        let t = table(
            "- {name: prefix, matches: [{path: {type: PathPrefix, value: /api/v1/users}, method: GET, headers: [{name: a, value: b}]}]}\n\
             - {name: exact, matches: [{path: {type: Exact, value: /api/v1/users}}]}",
        );
        let req = request("GET", "/api/v1/users", &[("a", "b")]);
        assert_eq!(chosen(&t, &req), Some("exact"));
        assert_eq!(chosen(&t, &get("/api/v1/users/7")), None);
    }

    #[test]
    fn exact_path_beats_longer_prefixes() {
        let t = table(
            "- {name: prefix, matches: [{path: {value: /a/b/c}}]}\n\
             - {name: exact, matches: [{path: {type: Exact, value: /a/b/c/}}]}",
        );
        assert_eq!(chosen(&t, &get("/a/b/c/")), Some("exact"));
        assert_eq!(chosen(&t, &get("/a/b/c")), Some("prefix"));
    }

    #[test]
    fn exact_path_is_whole_and_ignores_the_query() {
        let t = table("- {name: exact, matches: [{path: {type: Exact, value: /foo}}]}");
        assert_eq!(chosen(&t, &get("/foo?x=1")), Some("exact"));
        assert_eq!(chosen(&t, &get("/foo/")), None);
        assert_eq!(chosen(&t, &get("/foobar")), None);
        assert_eq!(chosen(&t, &get("/Foo")), None);
        assert_eq!(t.select(&get("/foo")).and_then(|s| s.matched_prefix), None);
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let t = table(
            "- {name: short, matches: [{path: {value: /api}}]}\n\
             - {name: long, matches: [{path: {value: /api/v1/}}]}\n\
             - {name: root, matches: [{path: {value: /}}]}",
        );
        assert_eq!(chosen(&t, &get("/api/v1/users")), Some("long"));
        assert_eq!(chosen(&t, &get("/api/v1")), Some("long"));
        assert_eq!(chosen(&t, &get("/api/v2")), Some("short"));
        assert_eq!(chosen(&t, &get("/apiv1")), Some("root"));
        assert_eq!(
            t.select(&get("/api/v1/x")).and_then(|s| s.matched_prefix),
            Some("/api/v1")
        );
        assert_eq!(
            t.select(&get("/other")).and_then(|s| s.matched_prefix),
            Some("/")
        );
    }

    #[test]
    fn longer_prefix_beats_method_headers_and_query_params() {
        let t = table(
            "- {name: rich, matches: [{path: {value: /api}, method: GET, headers: [{name: a, value: b}], queryParams: [{name: q, value: v}]}]}\n\
             - {name: long, matches: [{path: {value: /api/v1}}]}",
        );
        let req = request("GET", "/api/v1/x?q=v", &[("a", "b")]);
        assert_eq!(chosen(&t, &req), Some("long"));
    }

    #[test]
    fn method_beats_none_and_beats_more_headers() {
        let t = table(
            "- {name: any, matches: [{path: {value: /api}, headers: [{name: a, value: b}, {name: c, value: d}]}]}\n\
             - {name: get, matches: [{path: {value: /api}, method: GET}]}",
        );
        let headers = [("a", "b"), ("c", "d")];
        assert_eq!(chosen(&t, &request("GET", "/api", &headers)), Some("get"));
        assert_eq!(chosen(&t, &request("POST", "/api", &headers)), Some("any"));
        assert_eq!(chosen(&t, &request("POST", "/api", &[])), None);
    }

    #[test]
    fn more_headers_win_and_beat_more_query_params() {
        let t = table(
            "- {name: query, matches: [{queryParams: [{name: a, value: '1'}, {name: b, value: '2'}]}]}\n\
             - {name: one, matches: [{headers: [{name: x, value: '1'}]}]}\n\
             - {name: two, matches: [{headers: [{name: x, value: '1'}, {name: y, value: '2'}]}]}",
        );
        let both = [("x", "1"), ("y", "2")];
        assert_eq!(chosen(&t, &request("GET", "/?a=1&b=2", &both)), Some("two"));
        assert_eq!(
            chosen(&t, &request("GET", "/?a=1&b=2", &[("x", "1")])),
            Some("one")
        );
        assert_eq!(chosen(&t, &request("GET", "/?a=1&b=2", &[])), Some("query"));
    }

    #[test]
    fn more_query_params_win() {
        let t = table(
            "- {name: one, matches: [{queryParams: [{name: a, value: '1'}]}]}\n\
             - {name: two, matches: [{queryParams: [{name: a, value: '1'}, {name: b, value: '2'}]}]}",
        );
        assert_eq!(chosen(&t, &get("/?b=2&a=1")), Some("two"));
        assert_eq!(chosen(&t, &get("/?a=1")), Some("one"));
    }

    #[test]
    fn rule_order_breaks_ties() {
        let t = table(
            "- {name: first, matches: [{path: {value: /x}, headers: [{name: a, value: '1'}]}]}\n\
             - {name: second, matches: [{path: {value: /x/}, headers: [{name: b, value: '1'}]}]}",
        );
        let req = request("GET", "/x/y", &[("a", "1"), ("b", "1")]);
        assert_eq!(chosen(&t, &req), Some("first"));
        assert_eq!(
            chosen(&t, &request("GET", "/x/y", &[("b", "1")])),
            Some("second")
        );
        // The tie-break is by route, not by which match sorts first within it.
        let t = table(
            "- {name: first, matches: [{path: {value: /other}}, {path: {value: /x}}]}\n\
             - {name: second, matches: [{path: {value: /x}}]}",
        );
        assert_eq!(chosen(&t, &get("/x")), Some("first"));
    }

    #[test]
    fn no_matches_and_no_path_mean_prefix_root() {
        let t = table(
            "- {name: regex, matches: [{path: {type: RegularExpression, value: '/r/.*'}}]}\n\
             - {name: all}\n\
             - {name: nopath, matches: [{method: GET}]}",
        );
        assert_eq!(
            chosen(&t, &request("POST", "/anything/at/all", &[])),
            Some("all")
        );
        // A regex outranks the catch-all `/`.
        assert_eq!(chosen(&t, &request("POST", "/r/x", &[])), Some("regex"));
        assert_eq!(chosen(&t, &get("/")), Some("nopath"));
        assert_eq!(
            t.select(&get("/a")).and_then(|s| s.matched_prefix),
            Some("/")
        );
    }

    #[test]
    fn no_route_matching_selects_nothing() {
        let t = table("- {name: a, matches: [{path: {value: /a}}, {method: PUT}]}");
        assert_eq!(chosen(&t, &get("/b")), None);
        assert_eq!(chosen(&t, &request("PUT", "/b", &[])), Some("a"));
        assert!(RouteTable::new(&[]).is_ok_and(|t| t.select(&get("/")).is_none()));
    }

    #[test]
    fn prefix_matches_whole_segments() {
        for prefix in ["/foo", "/foo/"] {
            let t = table(&format!(
                "- {{name: foo, matches: [{{path: {{value: {prefix}}}}}]}}"
            ));
            for path in ["/foo", "/foo/", "/foo/bar", "/foo/bar/baz", "/foo?x=/bar"] {
                assert_eq!(chosen(&t, &get(path)), Some("foo"), "{prefix} vs {path}");
            }
            for path in ["/foobar", "/fo", "/", "/bar/foo", "/Foo"] {
                assert_eq!(chosen(&t, &get(path)), None, "{prefix} vs {path}");
            }
        }
        assert!(prefix_matches("", "/anything"));
        assert!(prefix_matches("/a/b", "/a/b/"));
        assert!(!prefix_matches("/a/b", "/a/bc"));
    }

    #[test]
    fn regexes_must_match_the_whole_value() {
        let t = table(
            "- {name: path, matches: [{path: {type: RegularExpression, value: '/api/[0-9]+'}}]}\n\
             - {name: header, matches: [{path: {type: Exact, value: /h}, headers: [{type: RegularExpression, name: x-tenant, value: 'acme|globex'}]}]}\n\
             - {name: query, matches: [{path: {type: Exact, value: /q}, queryParams: [{type: RegularExpression, name: v, value: 'v[12]'}]}]}",
        );
        assert_eq!(chosen(&t, &get("/api/12")), Some("path"));
        assert_eq!(chosen(&t, &get("/api/12/x")), None);
        assert_eq!(chosen(&t, &get("/x/api/12")), None);
        // Anchoring wraps the whole alternation, not its last branch.
        assert_eq!(
            chosen(&t, &request("GET", "/h", &[("x-tenant", "acme")])),
            Some("header")
        );
        assert_eq!(
            chosen(&t, &request("GET", "/h", &[("x-tenant", "acme-corp")])),
            None
        );
        assert_eq!(
            chosen(&t, &request("GET", "/h", &[("x-tenant", "my-globex")])),
            None
        );
        assert_eq!(chosen(&t, &get("/q?v=v2")), Some("query"));
        assert_eq!(chosen(&t, &get("/q?v=v22")), None);
    }

    #[test]
    fn regex_paths_rank_below_prefixes_and_by_the_other_rules() {
        let t = table(
            "- {name: catch-all}\n\
             - {name: regex, matches: [{path: {type: RegularExpression, value: '/api/.*'}}]}",
        );
        // Above the catch-all `/`, even when it comes first.
        assert_eq!(chosen(&t, &get("/api/v2")), Some("regex"));
        assert_eq!(chosen(&t, &get("/other")), Some("catch-all"));

        let t = table(
            "- {name: regex, matches: [{path: {type: RegularExpression, value: '/api/.*'}}]}\n\
             - {name: regex-get, matches: [{path: {type: RegularExpression, value: '/api/v[0-9]'}, method: GET}]}\n\
             - {name: prefix, matches: [{path: {value: /api/v1}}]}",
        );
        assert_eq!(chosen(&t, &get("/api/v1")), Some("prefix"));
        assert_eq!(chosen(&t, &get("/api/v2")), Some("regex-get"));
        assert_eq!(chosen(&t, &request("POST", "/api/v2", &[])), Some("regex"));
        assert_eq!(
            t.select(&get("/api/v2")).and_then(|s| s.matched_prefix),
            None
        );
    }

    #[test]
    fn header_names_are_case_insensitive_and_values_are_not() {
        let t = table("- {name: h, matches: [{headers: [{name: X-User-Group, value: Testers}]}]}");
        assert_eq!(
            chosen(&t, &request("GET", "/", &[("x-user-group", "Testers")])),
            Some("h")
        );
        assert_eq!(
            chosen(&t, &request("GET", "/", &[("X-USER-GROUP", "Testers")])),
            Some("h")
        );
        assert_eq!(
            chosen(&t, &request("GET", "/", &[("x-user-group", "testers")])),
            None
        );
        assert_eq!(chosen(&t, &get("/")), None);
    }

    #[test]
    fn repeated_headers_are_matched_as_one_list() {
        let t = table(
            "- {name: exact, matches: [{headers: [{name: x, value: 'a,b'}]}]}\n\
             - {name: regex, matches: [{headers: [{type: RegularExpression, name: y, value: '.*\\bb\\b.*'}]}]}",
        );
        assert_eq!(
            chosen(&t, &request("GET", "/", &[("x", "a"), ("x", "b")])),
            Some("exact")
        );
        assert_eq!(chosen(&t, &request("GET", "/", &[("x", "a")])), None);
        assert_eq!(
            chosen(&t, &request("GET", "/", &[("y", "a"), ("y", "b")])),
            Some("regex")
        );
    }

    #[test]
    fn query_params_are_decoded_first_wins_and_names_are_case_sensitive() {
        let t =
            table("- {name: q, matches: [{queryParams: [{name: user name, value: Jörg X&Y}]}]}");
        assert_eq!(chosen(&t, &get("/?user+name=J%C3%B6rg+X%26Y")), Some("q"));
        assert_eq!(
            chosen(&t, &get("/?user%20name=J%c3%b6rg%20X%26Y&x")),
            Some("q")
        );
        assert_eq!(
            chosen(&t, &get("/?user+name=other&user+name=J%C3%B6rg+X%26Y")),
            None
        );
        assert_eq!(chosen(&t, &get("/?User+name=J%C3%B6rg+X%26Y")), None);
        assert_eq!(chosen(&t, &get("/")), None);

        let t = table("- {name: q, matches: [{queryParams: [{name: v, value: ''}]}]}");
        assert_eq!(chosen(&t, &get("/?v")), Some("q"));
        assert_eq!(chosen(&t, &get("/?v=")), Some("q"));
        assert_eq!(chosen(&t, &get("/?w=")), None);
    }

    #[test]
    fn malformed_escapes_are_kept_as_written() {
        assert_eq!(
            parse_query("a=%zz&b=%4&c=100%&&d=%41%42&%ff=x"),
            [
                ("a".to_owned(), "%zz".to_owned()),
                ("b".to_owned(), "%4".to_owned()),
                ("c".to_owned(), "100%".to_owned()),
                ("d".to_owned(), "AB".to_owned()),
                ("\u{fffd}".to_owned(), "x".to_owned()),
            ]
        );
    }

    #[test]
    fn grpc_methods_match_the_service_and_method_path() {
        let t = table(
            "- {name: both, matches: [{grpcMethod: {service: reviews.v1.Reviews, method: Get}}]}\n\
             - {name: service, matches: [{grpcMethod: {service: reviews.v1.Reviews}}]}\n\
             - {name: method, matches: [{grpcMethod: {method: Watch}}]}\n\
             - {name: regex, matches: [{grpcMethod: {type: RegularExpression, service: 'ratings\\.v[0-9]+\\.Ratings', method: 'List.*'}}]}",
        );
        let post = |path: &str| request("POST", path, &[("content-type", "application/grpc")]);
        assert_eq!(chosen(&t, &post("/reviews.v1.Reviews/Get")), Some("both"));
        assert_eq!(
            chosen(&t, &post("/reviews.v1.Reviews/List")),
            Some("service")
        );
        assert_eq!(
            chosen(&t, &post("/reviews.v1.Reviews/Watch")),
            Some("service")
        );
        assert_eq!(chosen(&t, &post("/other.Svc/Watch")), Some("method"));
        assert_eq!(
            chosen(&t, &post("/ratings.v2.Ratings/ListAll")),
            Some("regex")
        );
        assert_eq!(chosen(&t, &post("/ratings.v2.Ratings/Get")), None);
        assert_eq!(chosen(&t, &post("/xratings.v2.Ratings/ListAll")), None);
        // Not a gRPC path: no service, no method, or too many segments.
        for path in [
            "/",
            "/reviews.v1.Reviews",
            "/reviews.v1.Reviews/",
            "/reviews.v1.Reviews/Get/x",
            "//Watch",
        ] {
            assert_eq!(chosen(&t, &post(path)), None, "{path}");
        }
        assert_eq!(
            t.select(&post("/reviews.v1.Reviews/Get"))
                .and_then(|s| s.matched_prefix),
            None
        );
    }

    #[test]
    fn grpc_precedence_is_service_and_method_then_service_then_method() {
        // Listed in the opposite order of precedence, after a catch-all.
        let t = table(
            "- {name: all}\n\
             - {name: regex, matches: [{grpcMethod: {type: RegularExpression, service: '.*', method: '.*'}}]}\n\
             - {name: method, matches: [{grpcMethod: {method: Get}}]}\n\
             - {name: service, matches: [{grpcMethod: {service: a.B}}]}\n\
             - {name: both, matches: [{grpcMethod: {service: a.B, method: Get}}]}\n\
             - {name: other-service, matches: [{grpcMethod: {service: a.BB}, headers: [{name: x, value: '1'}]}]}",
        );
        let post = |path: &str| request("POST", path, &[("x", "1")]);
        assert_eq!(chosen(&t, &post("/a.B/Get")), Some("both"));
        assert_eq!(chosen(&t, &post("/a.B/Put")), Some("service"));
        assert_eq!(chosen(&t, &post("/c.D/Get")), Some("method"));
        // A regex outranks the catch-all.
        assert_eq!(chosen(&t, &post("/c.D/Put")), Some("regex"));
        assert_eq!(chosen(&t, &post("/a.BB/Put")), Some("other-service"));
    }

    #[test]
    fn methods_compare_exactly() {
        let t = table("- {name: patch, matches: [{method: PATCH}]}");
        assert_eq!(chosen(&t, &request("PATCH", "/", &[])), Some("patch"));
        assert_eq!(chosen(&t, &request("PUT", "/", &[])), None);
    }
}
