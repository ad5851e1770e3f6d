//! Route filters (Gateway API `HTTPRouteFilter`), compiled once and applied
//! as pure functions to request and response heads.
//!
//! This module owns header modification, URL rewrites, building redirect
//! responses, and exposing mirror targets. It does not send anything: the
//! HTTP layer sends the redirect it gets back, and sends mirrored copies.
//!
//! Request filters run in config order. A `RequestRedirect` ends the request
//! with a redirect; filters after it do not run.

use std::str::FromStr;

use http::header::{HeaderMap, HeaderName, HeaderValue, HOST, LOCATION};
use http::uri::{Authority, PathAndQuery, Uri};
use http::StatusCode;
use remora_api::{HeaderModifier, HttpHeader, PathModifier, RouteFilter, Scheme};

use super::select::prefix_matches;
use super::FieldError;

/// A list of filters (a route's or a backend's), compiled.
#[derive(Debug, Default)]
pub(crate) struct Filters {
    /// Request-side filters in config order.
    request: Vec<RequestFilter>,
    response: Vec<HeaderEdit>,
    mirrors: Vec<Mirror>,
}

#[derive(Debug)]
enum RequestFilter {
    Headers(HeaderEdit),
    Rewrite(Rewrite),
    Redirect(Redirect),
}

/// `HTTPHeaderFilter`, applied as remove, set, add.
#[derive(Debug, Default)]
struct HeaderEdit {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

#[derive(Debug)]
struct Rewrite {
    hostname: Option<Hostname>,
    path: Option<PathRewrite>,
}

#[derive(Debug)]
struct Hostname {
    header: HeaderValue,
    authority: Authority,
}

#[derive(Debug)]
enum PathRewrite {
    Full(String),
    /// Replaces the matched `PathPrefix`, element-wise.
    Prefix(String),
}

#[derive(Debug)]
struct Redirect {
    scheme: Option<Scheme>,
    hostname: Option<String>,
    path: Option<PathRewrite>,
    port: Option<u16>,
    status: StatusCode,
}

/// `RequestMirror`: where a copy of the request goes, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mirror {
    backend: String,
    percent: u8,
}

impl Mirror {
    /// The key of the top-level `backends` map to send copies to.
    pub(crate) fn backend(&self) -> &str {
        &self.backend
    }

    /// The share of requests mirrored, 0 to 100.
    #[cfg(test)]
    pub(crate) fn percent(&self) -> u8 {
        self.percent
    }

    /// Whether to mirror this request, drawing from `rng` only when the
    /// percent is strictly between 0 and 100.
    pub(crate) fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> bool {
        match self.percent {
            0 => false,
            100.. => true,
            p => rng.random_range(0..100u8) < p,
        }
    }
}

/// What the HTTP layer does after the request filters ran.
#[derive(Debug)]
pub(crate) enum FilterOutcome {
    /// Send the (modified) request to a backend.
    Continue,
    /// Answer with this redirect; call no backend.
    Redirect(http::Response<()>),
}

/// A filter that could not be applied to this request. These are internal
/// errors (the config was accepted but cannot apply to the request): answer
/// 500 and do not retry.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FilterError {
    #[error("ReplacePrefixMatch needs the request to have matched a PathPrefix, and it matched another kind of path; use ReplaceFullPath, or match with PathPrefix")]
    NoPrefixMatch,
    #[error("the request path {path:?} does not start with the matched prefix {prefix:?}")]
    PrefixMismatch { path: String, prefix: String },
    #[error("the rewritten URI is invalid: {0}")]
    Uri(String),
    #[error(
        "the redirect has no host: set requestRedirect.hostname, or the request must carry Host"
    )]
    RedirectWithoutHost,
    #[error("the redirect Location {0:?} is not a valid header value")]
    Location(String),
    #[error("the header map is full")]
    TooManyHeaders,
}

impl Filters {
    /// Compiles a filter list; `field` is the list's path, e.g. `filters`.
    pub(super) fn compile(filters: &[RouteFilter], field: &str) -> Result<Self, FieldError> {
        let mut compiled = Self::default();
        for (index, filter) in filters.iter().enumerate() {
            let field = format!("{field}[{index}]");
            match filter {
                RouteFilter::RequestHeaderModifier(m) => {
                    compiled
                        .request
                        .push(RequestFilter::Headers(HeaderEdit::compile(
                            m,
                            &format!("{field}.requestHeaderModifier"),
                        )?))
                }
                RouteFilter::ResponseHeaderModifier(m) => compiled.response.push(
                    HeaderEdit::compile(m, &format!("{field}.responseHeaderModifier"))?,
                ),
                RouteFilter::UrlRewrite(r) => {
                    let field = format!("{field}.urlRewrite");
                    compiled.request.push(RequestFilter::Rewrite(Rewrite {
                        hostname: r
                            .hostname
                            .as_deref()
                            .map(|h| Hostname::compile(h, &format!("{field}.hostname")))
                            .transpose()?,
                        path: r.path.as_ref().map(PathRewrite::compile),
                    }));
                }
                RouteFilter::RequestRedirect(r) => {
                    let field = format!("{field}.requestRedirect");
                    let status = StatusCode::from_u16(r.status_code)
                        .ok()
                        .filter(StatusCode::is_redirection)
                        .ok_or_else(|| FieldError::Invalid {
                            field: format!("{field}.statusCode"),
                            reason: format!("{} is not a redirect status", r.status_code),
                        })?;
                    if let Some(host) = &r.hostname {
                        Authority::from_str(host).map_err(|e| FieldError::Invalid {
                            field: format!("{field}.hostname"),
                            reason: format!("{host:?} is not a host name: {e}"),
                        })?;
                    }
                    compiled.request.push(RequestFilter::Redirect(Redirect {
                        scheme: r.scheme,
                        hostname: r.hostname.clone(),
                        path: r.path.as_ref().map(PathRewrite::compile),
                        port: r.port,
                        status,
                    }));
                }
                RouteFilter::RequestMirror(m) => compiled.mirrors.push(Mirror {
                    backend: m.backend_ref.name.clone(),
                    percent: m.percent.min(100),
                }),
            }
        }
        Ok(compiled)
    }

    /// The mirror targets, in config order.
    pub(crate) fn mirrors(&self) -> &[Mirror] {
        &self.mirrors
    }

    /// Whether the list answers every request with a redirect, so the
    /// route needs no backend.
    #[cfg(test)]
    pub(crate) fn redirects(&self) -> bool {
        self.request
            .iter()
            .any(|f| matches!(f, RequestFilter::Redirect(_)))
    }
}

/// Applies the request-side filters in order. `matched_prefix` is
/// [`Selected::matched_prefix`](super::Selected), for `ReplacePrefixMatch`.
/// On error the request may be partly modified; answer 500.
pub(crate) fn apply_request_filters(
    filters: &Filters,
    req: &mut http::request::Parts,
    matched_prefix: Option<&str>,
) -> Result<FilterOutcome, FilterError> {
    for filter in &filters.request {
        match filter {
            RequestFilter::Headers(edit) => edit.apply(&mut req.headers)?,
            RequestFilter::Rewrite(rewrite) => rewrite.apply(req, matched_prefix)?,
            RequestFilter::Redirect(redirect) => {
                return redirect
                    .response(req, matched_prefix)
                    .map(FilterOutcome::Redirect)
            }
        }
    }
    Ok(FilterOutcome::Continue)
}

/// Applies the `ResponseHeaderModifier`s to a response head.
pub(crate) fn apply_response_filters(
    filters: &Filters,
    resp: &mut http::response::Parts,
) -> Result<(), FilterError> {
    for edit in &filters.response {
        edit.apply(&mut resp.headers)?;
    }
    Ok(())
}

impl HeaderEdit {
    fn compile(m: &HeaderModifier, field: &str) -> Result<Self, FieldError> {
        let pairs = |headers: &[HttpHeader], list: &str| {
            headers
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let field = format!("{field}.{list}[{i}]");
                    Ok((
                        header_name(&h.name, &format!("{field}.name"))?,
                        HeaderValue::from_str(&h.value).map_err(|_| FieldError::Invalid {
                            field: format!("{field}.value"),
                            reason: format!("{:?} is not a valid header value", h.value),
                        })?,
                    ))
                })
                .collect::<Result<Vec<_>, FieldError>>()
        };
        Ok(Self {
            set: pairs(&m.set, "set")?,
            add: pairs(&m.add, "add")?,
            remove: m
                .remove
                .iter()
                .enumerate()
                .map(|(i, name)| header_name(name, &format!("{field}.remove[{i}]")))
                .collect::<Result<_, _>>()?,
        })
    }

    fn apply(&self, headers: &mut HeaderMap) -> Result<(), FilterError> {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers
                .try_insert(name.clone(), value.clone())
                .map_err(|_| FilterError::TooManyHeaders)?;
        }
        for (name, value) in &self.add {
            headers
                .try_append(name.clone(), value.clone())
                .map_err(|_| FilterError::TooManyHeaders)?;
        }
        Ok(())
    }
}

fn header_name(name: &str, field: &str) -> Result<HeaderName, FieldError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| FieldError::Invalid {
        field: field.to_owned(),
        reason: format!("{name:?} is not a valid HTTP header name"),
    })
}

impl Hostname {
    fn compile(host: &str, field: &str) -> Result<Self, FieldError> {
        let invalid = |e: &dyn std::fmt::Display| FieldError::Invalid {
            field: field.to_owned(),
            reason: format!("{host:?} is not a host name: {e}"),
        };
        Ok(Self {
            header: HeaderValue::from_str(host).map_err(|e| invalid(&e))?,
            authority: Authority::from_str(host).map_err(|e| invalid(&e))?,
        })
    }
}

impl PathRewrite {
    fn compile(modifier: &PathModifier) -> Self {
        match modifier {
            PathModifier::ReplaceFullPath(path) => Self::Full(path.clone()),
            PathModifier::ReplacePrefixMatch(prefix) => Self::Prefix(prefix.clone()),
        }
    }

    /// The new path for `path`.
    fn apply(&self, path: &str, matched_prefix: Option<&str>) -> Result<String, FilterError> {
        match self {
            Self::Full(full) => Ok(full.clone()),
            Self::Prefix(replacement) => {
                let prefix = matched_prefix.ok_or(FilterError::NoPrefixMatch)?;
                replace_prefix(path, prefix, replacement).ok_or_else(|| {
                    FilterError::PrefixMismatch {
                        path: path.to_owned(),
                        prefix: prefix.to_owned(),
                    }
                })
            }
        }
    }
}

/// Gateway API `ReplacePrefixMatch`: replaces the element-wise `prefix` of
/// `path` with `replacement`. Trailing slashes of both are ignored, and the
/// result is never empty: `/foo/bar` with `/foo` -> `/xyz` is `/xyz/bar`,
/// with `/foo` -> `/` is `/bar`, and `/foo` with `/foo` -> `/` is `/`.
/// `None` if `path` does not start with `prefix`.
pub(super) fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> Option<String> {
    let prefix = prefix.trim_end_matches('/');
    if !prefix_matches(prefix, path) {
        return None;
    }
    let rest = path.get(prefix.len()..)?;
    let replacement = replacement.trim_end_matches('/');
    if replacement.is_empty() && rest.is_empty() {
        return Some("/".to_owned());
    }
    Some(format!("{replacement}{rest}"))
}

impl Rewrite {
    /// Rewrites `Host` and the URI's authority, and the path (keeping the
    /// query). The hostname replaces the whole authority, port included.
    /// `Host` is set when the request has it or has no authority; an
    /// HTTP/2 request keeps using `:authority` alone.
    fn apply(
        &self,
        req: &mut http::request::Parts,
        matched_prefix: Option<&str>,
    ) -> Result<(), FilterError> {
        let path = self
            .path
            .as_ref()
            .map(|rewrite| rewrite.apply(req.uri.path(), matched_prefix))
            .transpose()?;
        let authority = self
            .hostname
            .as_ref()
            .filter(|_| req.uri.authority().is_some())
            .map(|h| h.authority.clone());
        if path.is_some() || authority.is_some() {
            req.uri = rebuild_uri(&req.uri, authority, path)?;
        }
        if let Some(hostname) = &self.hostname {
            if req.headers.contains_key(HOST) || req.uri.authority().is_none() {
                req.headers
                    .try_insert(HOST, hostname.header.clone())
                    .map_err(|_| FilterError::TooManyHeaders)?;
            }
        }
        Ok(())
    }
}

fn rebuild_uri(
    uri: &Uri,
    authority: Option<Authority>,
    path: Option<String>,
) -> Result<Uri, FilterError> {
    let mut parts = uri.clone().into_parts();
    if authority.is_some() {
        parts.authority = authority;
    }
    if let Some(path) = path {
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        parts.path_and_query = Some(
            PathAndQuery::try_from(path_and_query).map_err(|e| FilterError::Uri(e.to_string()))?,
        );
    }
    Uri::from_parts(parts).map_err(|e| FilterError::Uri(e.to_string()))
}

impl Redirect {
    /// Builds the redirect. Unset parts come from the request: its scheme
    /// (`http` when the URI has none, as a sidecar's plaintext app speaks),
    /// host, port, path and query. An unset port is the scheme's well-known
    /// port when `scheme` is set, else the request's (Gateway API); the port
    /// is left out of `Location` when it is the scheme's default.
    fn response(
        &self,
        req: &http::request::Parts,
        matched_prefix: Option<&str>,
    ) -> Result<http::Response<()>, FilterError> {
        let request_scheme = match req.uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            _ => Scheme::Http,
        };
        let scheme = self.scheme.unwrap_or(request_scheme);
        let (request_host, request_port) = request_host(req);
        let host = match (&self.hostname, request_host) {
            (Some(host), _) => host.as_str(),
            (None, Some(host)) => host,
            (None, None) => return Err(FilterError::RedirectWithoutHost),
        };
        let port = match (self.port, self.scheme) {
            (Some(port), _) => port,
            (None, Some(scheme)) => default_port(scheme),
            (None, None) => request_port.unwrap_or(default_port(scheme)),
        };
        let path = match &self.path {
            Some(rewrite) => rewrite.apply(req.uri.path(), matched_prefix)?,
            None => req.uri.path().to_owned(),
        };
        let mut location = format!("{}://{host}", scheme_str(scheme));
        if port != default_port(scheme) {
            location.push_str(&format!(":{port}"));
        }
        location.push_str(&path);
        if let Some(query) = req.uri.query() {
            location.push('?');
            location.push_str(query);
        }
        let value = HeaderValue::try_from(location.as_str())
            .map_err(|_| FilterError::Location(location.clone()))?;
        let mut response = http::Response::new(());
        *response.status_mut() = self.status;
        response.headers_mut().insert(LOCATION, value);
        Ok(response)
    }
}

/// The request's host and port, from the URI's authority or else `Host`.
fn request_host(req: &http::request::Parts) -> (Option<&str>, Option<u16>) {
    if let Some(authority) = req.uri.authority() {
        return (Some(authority.host()), authority.port_u16());
    }
    let Some(host) = req.headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return (None, None);
    };
    match Authority::from_str(host) {
        // Borrow from the header, which outlives the parsed authority.
        Ok(authority) if host.starts_with(authority.host()) => {
            (host.get(..authority.host().len()), authority.port_u16())
        }
        _ => (None, None),
    }
}

fn default_port(scheme: Scheme) -> u16 {
    match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    }
}

fn scheme_str(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::route::tests::request;

    fn filters(yaml: &str) -> Filters {
        let list: Vec<RouteFilter> =
            serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        Filters::compile(&list, "filters").unwrap_or_else(|e| panic!("{e:?}\n{yaml}"))
    }

    fn rewrite(
        yaml: &str,
        uri: &str,
        prefix: Option<&str>,
    ) -> Result<http::request::Parts, FilterError> {
        let mut req = request("GET", uri, &[("host", "reviews:9080")]);
        match apply_request_filters(&filters(yaml), &mut req, prefix)? {
            FilterOutcome::Continue => Ok(req),
            FilterOutcome::Redirect(r) => panic!("unexpected redirect {r:?}"),
        }
    }

    /// Runs one redirect filter; returns (status, Location).
    fn redirect(
        redirect: &str,
        method_uri_host: (&str, Option<&str>),
        prefix: Option<&str>,
    ) -> (u16, String) {
        let (uri, host) = method_uri_host;
        let headers: Vec<_> = host.map(|h| ("host", h)).into_iter().collect();
        let mut req = request("GET", uri, &headers);
        let yaml = format!("[{{type: RequestRedirect, requestRedirect: {redirect}}}]");
        match apply_request_filters(&filters(&yaml), &mut req, prefix) {
            Ok(FilterOutcome::Redirect(r)) => (
                r.status().as_u16(),
                r.headers()[LOCATION]
                    .to_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            other => panic!("{redirect}: expected a redirect, got {other:?}"),
        }
    }

    #[test]
    fn request_header_modifier_removes_then_sets_then_adds() {
        let f = filters(
            "- type: RequestHeaderModifier\n  requestHeaderModifier:\n    \
               set: [{name: X-Set, value: new}, {name: x-fresh, value: '1'}]\n    \
               add: [{name: X-Add, value: two}, {name: x-gone, value: back}]\n    \
               remove: [X-Gone, x-missing]",
        );
        let mut req = request(
            "GET",
            "/",
            &[
                ("x-set", "old1"),
                ("x-set", "old2"),
                ("x-add", "one"),
                ("x-gone", "bye"),
                ("x-keep", "k"),
            ],
        );
        let outcome = apply_request_filters(&f, &mut req, None);
        assert!(
            matches!(outcome, Ok(FilterOutcome::Continue)),
            "{outcome:?}"
        );
        let all = |name: &str| -> Vec<_> {
            req.headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        assert_eq!(all("x-set"), ["new"]);
        assert_eq!(all("x-fresh"), ["1"]);
        assert_eq!(all("x-add"), ["one", "two"]);
        // Removed, then added back by the same filter: only the new value.
        assert_eq!(all("x-gone"), ["back"]);
        assert_eq!(all("x-keep"), ["k"]);
        assert!(f.mirrors().is_empty() && !f.redirects());
    }

    #[test]
    fn response_header_modifier_edits_the_response_only() {
        let f = filters(
            "- {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-frame-options, value: DENY}], add: [{name: vary, value: x-user}], remove: [server]}}\n\
             - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-req, value: '1'}]}}",
        );
        let (mut resp, ()) = http::Response::builder()
            .header("server", "envoy")
            .header("vary", "accept")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"))
            .into_parts();
        assert!(apply_response_filters(&f, &mut resp).is_ok());
        assert!(!resp.headers.contains_key("server"));
        assert_eq!(resp.headers["x-frame-options"], "DENY");
        assert_eq!(resp.headers.get_all("vary").iter().count(), 2);
        assert!(!resp.headers.contains_key("x-req"));

        let mut req = request("GET", "/", &[]);
        assert!(apply_request_filters(&f, &mut req, None).is_ok());
        assert!(!req.headers.contains_key("x-frame-options"));
        assert_eq!(req.headers["x-req"], "1");
    }

    /// Gateway API's table for `ReplacePrefixMatch` (HTTPPathModifier docs),
    /// plus the conformance cases of `httproute-rewrite-path`.
    #[test]
    fn replace_prefix_follows_gateway_api() {
        let cases = [
            // (request path, matched prefix, replacement, result)
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
            ("/strip-prefix", "/strip-prefix", "/", "/"),
            ("/foo/baz", "/foo", "/bar", "/bar/baz"),
            ("/a/b", "/", "/v2", "/v2/a/b"),
            ("/a/b", "/", "/", "/a/b"),
        ];
        for (path, prefix, replacement, expected) in cases {
            assert_eq!(
                replace_prefix(path, prefix, replacement).as_deref(),
                Some(expected),
                "{path} with {prefix} -> {replacement}"
            );
        }
        assert_eq!(replace_prefix("/foobar", "/foo", "/x"), None);
        assert_eq!(replace_prefix("/bar", "/foo", "/x"), None);
    }

    #[test]
    fn url_rewrite_replaces_the_path_and_keeps_the_query() {
        let full = "[{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]";
        let req = rewrite(full, "/full/one/two?a=1&b=%20", None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.uri, "/one?a=1&b=%20");

        let prefix = "[{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]";
        let req = rewrite(prefix, "/strip-prefix/three?x", Some("/strip-prefix"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.uri, "/three?x");
        let req = rewrite(prefix, "/strip-prefix", Some("/strip-prefix"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.uri, "/");
        // The host is untouched when no hostname is set.
        assert_eq!(req.headers["host"], "reviews:9080");

        // Without a matched prefix (an Exact or regex match chose the route)
        // the rewrite cannot apply: an error, not a guess.
        assert!(matches!(
            rewrite(prefix, "/a", None),
            Err(FilterError::NoPrefixMatch)
        ));
        assert!(matches!(
            rewrite(prefix, "/a", Some("/b")),
            Err(FilterError::PrefixMismatch { .. })
        ));
    }

    #[test]
    fn url_rewrite_replaces_host_and_authority() {
        let host = "[{type: URLRewrite, urlRewrite: {hostname: reviews-v2.default, path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}}]";
        // HTTP/1 origin form: only Host changes.
        let req = rewrite(host, "/v2/x?y=1", Some("/v2")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.uri, "/api/x?y=1");
        assert_eq!(req.headers["host"], "reviews-v2.default");

        // Absolute form (HTTP/2 `:authority`): the authority changes, port
        // included, and no Host is added when there was none.
        let mut req = request("GET", "http://reviews:9080/v2/x?y=1", &[]);
        let outcome = apply_request_filters(&filters(host), &mut req, Some("/v2"));
        assert!(
            matches!(outcome, Ok(FilterOutcome::Continue)),
            "{outcome:?}"
        );
        assert_eq!(req.uri, "http://reviews-v2.default/api/x?y=1");
        assert!(!req.headers.contains_key("host"));

        let mut req = request("GET", "https://reviews/x", &[("host", "reviews")]);
        let only_host = "[{type: URLRewrite, urlRewrite: {hostname: b.example}}]";
        assert!(apply_request_filters(&filters(only_host), &mut req, None).is_ok());
        assert_eq!(req.uri, "https://b.example/x");
        assert_eq!(req.headers["host"], "b.example");
    }

    #[test]
    fn redirect_builds_location_from_the_request_and_the_filter() {
        let plain = ("/path?q=1", Some("example.com"));
        // Defaults: 302, same scheme, host, port, path and query.
        assert_eq!(
            redirect("{}", plain, None),
            (302, "http://example.com/path?q=1".into())
        );
        assert_eq!(
            redirect("{}", ("/p", Some("example.com:8080")), None),
            (302, "http://example.com:8080/p".into())
        );
        assert_eq!(
            redirect(
                "{hostname: other.example, statusCode: 301}",
                ("/p", Some("example.com:8080")),
                None
            ),
            (301, "http://other.example:8080/p".into())
        );
        // A scheme without a port takes the scheme's well-known port, which
        // is then left out.
        assert_eq!(
            redirect("{scheme: https}", ("/p", Some("example.com:8080")), None),
            (302, "https://example.com/p".into())
        );
        assert_eq!(
            redirect("{scheme: http}", ("/p", Some("example.com:8443")), None),
            (302, "http://example.com/p".into())
        );
        assert_eq!(
            redirect("{scheme: https, port: 8443}", plain, None),
            (302, "https://example.com:8443/path?q=1".into())
        );
        assert_eq!(
            redirect("{port: 80}", plain, None).1,
            "http://example.com/path?q=1"
        );
        assert_eq!(
            redirect("{port: 443}", plain, None).1,
            "http://example.com:443/path?q=1"
        );
        // The request's own scheme and authority, in absolute form.
        assert_eq!(
            redirect(
                "{statusCode: 308}",
                ("https://example.com:443/p", None),
                None
            ),
            (308, "https://example.com/p".into())
        );
        assert_eq!(
            redirect("{scheme: http}", ("https://[fd00::1]:8443/p", None), None).1,
            "http://[fd00::1]/p"
        );
        assert_eq!(
            redirect("{}", ("/p", Some("[fd00::1]:81")), None).1,
            "http://[fd00::1]:81/p"
        );
    }

    #[test]
    fn redirect_rewrites_the_path() {
        let host = Some("example.com");
        assert_eq!(
            redirect(
                "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}",
                ("/original-prefix/lemon?x=1", host),
                Some("/original-prefix"),
            )
            .1,
            "http://example.com/replacement-prefix/lemon?x=1"
        );
        assert_eq!(
            redirect(
                "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}",
                ("/original-prefix", host),
                Some("/original-prefix"),
            )
            .1,
            "http://example.com/"
        );
        assert_eq!(
            redirect(
                "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}, scheme: https, hostname: b.example}",
                ("/full/path/original", host),
                None,
            )
            .1,
            "https://b.example/full-path-replacement"
        );
    }

    #[test]
    fn redirect_needs_a_host_and_stops_the_filters_after_it() {
        let f = filters(
            "- {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-before, value: '1'}]}}\n\
             - {type: RequestRedirect, requestRedirect: {}}\n\
             - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-after, value: '1'}]}}",
        );
        assert!(f.redirects());
        let mut req = request("GET", "/p", &[]);
        assert!(matches!(
            apply_request_filters(&f, &mut req, None),
            Err(FilterError::RedirectWithoutHost)
        ));
        let mut req = request("GET", "/p", &[("host", "a")]);
        assert!(matches!(
            apply_request_filters(&f, &mut req, None),
            Ok(FilterOutcome::Redirect(_))
        ));
        assert_eq!(req.headers["x-before"], "1");
    }

    #[test]
    fn mirrors_are_exposed_in_order_and_sampled_by_percent() {
        let f = filters(
            "- {type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}\n\
             - {type: RequestMirror, requestMirror: {backendRef: {name: sample}, percent: 25}}\n\
             - {type: RequestMirror, requestMirror: {backendRef: {name: off}, percent: 0}}",
        );
        let mirrors: Vec<_> = f
            .mirrors()
            .iter()
            .map(|m| (m.backend(), m.percent()))
            .collect();
        assert_eq!(mirrors, [("shadow", 100), ("sample", 25), ("off", 0)]);
        let mut rng = StdRng::seed_from_u64(3);
        let counts: Vec<usize> = f
            .mirrors()
            .iter()
            .map(|m| (0..10_000).filter(|_| m.sample(&mut rng)).count())
            .collect();
        assert_eq!(counts[0], 10_000);
        assert!((2_300..=2_700).contains(&counts[1]), "{counts:?}");
        assert_eq!(counts[2], 0);
        // Mirroring does not touch the request.
        let mut req = request("GET", "/p", &[]);
        assert!(matches!(
            apply_request_filters(&f, &mut req, None),
            Ok(FilterOutcome::Continue)
        ));
    }
}
