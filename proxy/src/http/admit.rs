//! What a downstream request must be before anything routes or forwards
//! it, checked once at the top of request handling, for both directions.
//!
//! A request is refused when the proxy could only guess at it: a `Host` that
//! is not one valid authority, an HTTP/2 `:authority` that a `Host`
//! contradicts, a transfer coding the proxy would drop, a path that does
//! not normalise. Otherwise it is normalised so that routing and the app
//! read it alike: an absolute-form target is routed on its own authority
//! (RFC 9112 3.2.2) and sent as origin-form with that `Host`; the path is
//! normalised (`normalize`); upgrades other than those allowed (never
//! `h2c`) are dropped; and headers the proxy owns are removed.
//!
//! This module decides nothing about where a request goes.

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Version};
use remora_api::{HttpSettings, PathNormalizationMode};

use super::headers::{self, TransferCodingError};
use super::normalize::{normalize_path, PathOptions};
use crate::error::{ErrorKind, ProxyError};

/// Why an authority (`Host`, `:authority`, an absolute-form target's) was
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthorityError {
    #[error("the request has {0} Host headers: send one")]
    ManyHosts(usize),
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    #[error("{0:?} is not a host[:port]")]
    Invalid(String),
    #[error("{0:?} carries user information (user@host), which an authority must not")]
    UserInfo(String),
    #[error("{0:?} has no host")]
    EmptyHost(String),
    #[error("{0:?} has a bad port: use 1 to 65535")]
    BadPort(String),
    #[error("Host {host:?} contradicts :authority {authority:?}")]
    Contradicts { host: String, authority: String },
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
}

/// Refuses or normalises `req` in place; an error is the client's (400, or
/// 501 for a transfer coding).
pub(crate) fn admit<B>(req: &mut Request<B>, settings: &HttpSettings) -> Result<(), ProxyError> {
    headers::strip_owned(req.headers_mut(), &headers::OWNED_REQUEST_HEADERS);
    let bad = |e: AuthorityError| ProxyError::new(ErrorKind::BadRequest, e.to_string());
    match req.version() {
        Version::HTTP_2 | Version::HTTP_3 => {
            let authority = h2_authority(req.uri(), req.headers()).map_err(bad)?;
            // `:authority` it is (RFC 9113 8.3.1): a `Host` that agreed is
            // dropped, so that nothing downstream reads two.
            req.headers_mut().remove(header::HOST);
            if let Some(authority) = authority {
                set_authority_form(req, authority).map_err(bad)?;
            }
        }
        _ => {
            headers::check_transfer_encoding(req.headers()).map_err(|e| match e {
                TransferCodingError::Unsupported(_) => {
                    ProxyError::new(ErrorKind::NotImplemented, e.to_string())
                }
                TransferCodingError::ChunkedTwice => {
                    ProxyError::new(ErrorKind::BadRequest, e.to_string())
                }
            })?;
            headers::filter_upgrade(req.headers_mut(), &settings.allowed_upgrades);
            let host = h1_host(req.version(), req.uri(), req.headers()).map_err(bad)?;
            if let Some(host) = host {
                let value = HeaderValue::from_str(host.as_str())
                    .map_err(|_| bad(AuthorityError::Invalid(host.to_string())))?;
                req.headers_mut().insert(header::HOST, value);
            }
            to_origin_form(req);
        }
    }
    if settings.path_normalization.mode == PathNormalizationMode::Default {
        let options = PathOptions {
            merge_slashes: settings.path_normalization.merge_slashes,
        };
        normalize(req, options)?;
    }
    Ok(())
}

/// Checks one authority: a host, and a port of 1 to 65535 if any.
pub(crate) fn parse_authority(text: &str) -> Result<Authority, AuthorityError> {
    let authority: Authority = text
        .parse()
        .map_err(|_| AuthorityError::Invalid(text.to_owned()))?;
    check_authority(authority)
}

/// [`parse_authority`]'s checks on an authority `http` has parsed already
/// (an HTTP/2 request's `:authority`), without parsing it again.
fn check_authority(authority: Authority) -> Result<Authority, AuthorityError> {
    let text = authority.as_str();
    if text.contains('@') {
        return Err(AuthorityError::UserInfo(text.to_owned()));
    }
    if authority.host().is_empty() {
        return Err(AuthorityError::EmptyHost(text.to_owned()));
    }
    // `http` accepts any text after the last `:` outside brackets and
    // reports no port when it is not a number: check it here.
    let after_host = text
        .rsplit_once(']')
        .map_or(text, |(_, rest)| rest)
        .rsplit_once(':');
    if let Some((_, port)) = after_host {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return Err(AuthorityError::BadPort(text.to_owned()));
        }
    }
    Ok(authority)
}

/// The text of a request's one `Host` header, if it has one.
fn one_host(headers: &HeaderMap) -> Result<Option<&str>, AuthorityError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    let more = hosts.count();
    if more > 0 {
        return Err(AuthorityError::ManyHosts(more + 1));
    }
    first
        .map(|v| {
            v.to_str().map_err(|_| {
                AuthorityError::Invalid(String::from_utf8_lossy(v.as_bytes()).into_owned())
            })
        })
        .transpose()
}

/// Checks the authority an HTTP/1 request addressed: an absolute-form
/// target's own, which wins over `Host` (RFC 9112 3.2.2) and is returned to
/// be sent as `Host`; else its one `Host`, which stays as it is.
fn h1_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Authority>, AuthorityError> {
    let host = one_host(headers)?;
    if let Some(authority) = uri.authority() {
        check_scheme(uri)?;
        return parse_authority(authority.as_str()).map(Some);
    }
    match host {
        Some(text) => parse_authority(text).map(|_| None),
        // HTTP/1.0 may leave it out; HTTP/1.1 must send it (RFC 9112 3.2).
        None if version == Version::HTTP_11 => Err(AuthorityError::MissingHost),
        None => Ok(None),
    }
}

/// The authority of an HTTP/2 request: `:authority`, which a `Host` must
/// agree with (RFC 9113 8.3.1 lets a server refuse one that differs, and
/// this proxy does), else the `Host` alone.
fn h2_authority(uri: &Uri, headers: &HeaderMap) -> Result<Option<Authority>, AuthorityError> {
    let host = one_host(headers)?;
    let Some(authority) = uri.authority() else {
        return host.map(parse_authority).transpose();
    };
    check_scheme(uri)?;
    let authority = check_authority(authority.clone())?;
    if let Some(host) = host {
        let host = parse_authority(host)?;
        let same = host.host().eq_ignore_ascii_case(authority.host())
            && host.port_u16() == authority.port_u16();
        if !same {
            return Err(AuthorityError::Contradicts {
                host: host.to_string(),
                authority: authority.to_string(),
            });
        }
    }
    Ok(Some(authority))
}

fn check_scheme(uri: &Uri) -> Result<(), AuthorityError> {
    match uri.scheme() {
        None => Ok(()),
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => Ok(()),
        Some(s) => Err(AuthorityError::Scheme(s.to_string())),
    }
}

/// HTTP/1 targets become origin-form (the authority now rides in `Host`);
/// `CONNECT`'s authority-form and `OPTIONS *` stay.
fn to_origin_form<B>(req: &mut Request<B>) {
    if req.method() == Method::CONNECT || req.uri().authority().is_none() {
        return;
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path_and_query);
}

/// Sets an HTTP/2 request's `:authority` to the checked one.
fn set_authority_form<B>(req: &mut Request<B>, authority: Authority) -> Result<(), AuthorityError> {
    if req.uri().authority() == Some(&authority) {
        return Ok(());
    }
    let mut parts = req.uri().clone().into_parts();
    parts.scheme.get_or_insert(Scheme::HTTP);
    parts
        .path_and_query
        .get_or_insert_with(|| PathAndQuery::from_static("/"));
    let text = authority.to_string();
    parts.authority = Some(authority);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| AuthorityError::Invalid(text))?;
    Ok(())
}

/// Normalises the path of an origin-form (or HTTP/2) target in place.
fn normalize<B>(req: &mut Request<B>, options: PathOptions) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Ok(());
    }
    let Some(path_and_query) = req.uri().path_and_query() else {
        return Ok(());
    };
    let path = path_and_query.path();
    // `OPTIONS *` has no path to normalise.
    if path == "*" && req.method() == Method::OPTIONS {
        return Ok(());
    }
    let normal = normalize_path(path, options)
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest, e.to_string()))?;
    if normal == path {
        return Ok(());
    }
    let rebuilt = match path_and_query.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal.into_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(rebuilt)
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest, format!("bad path: {e}")))?,
    );
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest, format!("bad path: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HttpSettings {
        HttpSettings::default()
    }

    fn h1(target: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::builder().uri(target).version(Version::HTTP_11);
        for host in hosts {
            builder = builder.header("host", *host);
        }
        builder.body(()).unwrap()
    }

    fn h2(target: &str, hosts: &[&str]) -> Request<()> {
        let mut req = h1(target, hosts);
        *req.version_mut() = Version::HTTP_2;
        req
    }

    fn admitted(mut req: Request<()>) -> Result<Request<()>, (ErrorKind, String)> {
        admit(&mut req, &settings()).map_err(|e| (e.kind, e.to_string()))?;
        Ok(req)
    }

    fn host_of(req: &Request<()>) -> Vec<&str> {
        req.headers()
            .get_all("host")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn authorities_are_one_host_and_a_good_port() {
        for good in [
            "web",
            "web:80",
            "web.ns.svc:8080",
            "10.0.0.1:1",
            "[::1]:65535",
            "WEB",
        ] {
            assert!(parse_authority(good).is_ok(), "{good}");
        }
        let cases = [
            ("web/admin", "is not a host[:port]"),
            ("evil@web", "user information"),
            ("u:p@web:80", "user information"),
            ("", "is not a host[:port]"),
            (":80", "has no host"),
            ("web:", "bad port"),
            ("web:0", "bad port"),
            ("web:65536", "bad port"),
            ("web:99999", "bad port"),
            ("web:8x", "bad port"),
            ("web:+80", "bad port"),
            ("[::1]:", "bad port"),
            ("a b", "is not a host[:port]"),
            ("web?x", "is not a host[:port]"),
        ];
        for (bad, why) in cases {
            let e = parse_authority(bad).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn absolute_form_routes_on_its_own_authority() {
        let req = admitted(h1("http://api.internal:8080/x?y=1", &["web"])).unwrap();
        assert_eq!(req.uri(), "/x?y=1");
        assert_eq!(host_of(&req), ["api.internal:8080"]);
        // Even with no Host at all.
        let req = admitted(h1("http://api/x", &[])).unwrap();
        assert_eq!(host_of(&req), ["api"]);
        assert_eq!(req.uri(), "/x");
    }

    #[test]
    fn hosts_that_are_not_one_authority_get_400() {
        let cases = [
            (h1("/", &["web", "web"]), "2 Host headers"),
            (h1("/", &["web", "evil"]), "2 Host headers"),
            (h1("/", &["web/admin"]), "not a host[:port]"),
            (h1("/", &["evil@web"]), "user information"),
            (h1("/", &[""]), "not a host[:port]"),
            (h1("/", &["web:99999"]), "bad port"),
            (h1("/", &[]), "needs a Host header"),
            (h1("http://evil@web/", &["web"]), "user information"),
            (h1("ftp://web/", &["web"]), "not http or https"),
        ];
        for (req, why) in cases {
            let (kind, message) = admitted(req).expect_err(why);
            assert_eq!(kind, ErrorKind::BadRequest, "{why}");
            assert!(message.contains(why), "{why}: {message}");
        }
        let mut old = h1("/", &[]);
        *old.version_mut() = Version::HTTP_10;
        assert!(admitted(old).is_ok(), "HTTP/1.0 needs no Host");
    }

    #[test]
    fn h2_authority_wins_and_a_contradicting_host_is_refused() {
        let req = admitted(h2("http://web:80/x", &["WEB:80"])).unwrap();
        assert_eq!(req.uri(), "http://web:80/x");
        assert!(host_of(&req).is_empty(), "an agreeing Host is dropped");
        let (kind, message) = admitted(h2("http://web/x", &["admin"])).unwrap_err();
        assert_eq!(kind, ErrorKind::BadRequest);
        assert!(message.contains("contradicts"), "{message}");
        let (_, message) = admitted(h2("http://web/x", &["web:81"])).unwrap_err();
        assert!(message.contains("contradicts"), "{message}");
        // Host alone stands in for :authority.
        let req = admitted(h2("/x", &["web:8080"])).unwrap();
        assert_eq!(req.uri(), "http://web:8080/x");
        assert!(host_of(&req).is_empty());
        let (_, message) = admitted(h2("http://evil@web/x", &[])).unwrap_err();
        assert!(message.contains("user information"), "{message}");
    }

    #[test]
    fn paths_are_normalised_once_and_the_query_kept() {
        let req = admitted(h1("/public/../admin?a=%2e%2e", &["web"])).unwrap();
        assert_eq!(req.uri(), "/admin?a=%2e%2e");
        let req = admitted(h2("http://web/public/%2e%2e/admin", &[])).unwrap();
        assert_eq!(req.uri(), "http://web/admin");
        let (kind, _) = admitted(h1("/a%zz", &["web"])).unwrap_err();
        assert_eq!(kind, ErrorKind::BadRequest);

        let mut off = settings();
        off.path_normalization.mode = PathNormalizationMode::None;
        let mut req = h1("/public/../admin", &["web"]);
        admit(&mut req, &off).unwrap();
        assert_eq!(req.uri(), "/public/../admin");

        let mut merge = settings();
        merge.path_normalization.merge_slashes = true;
        let mut req = h1("//a//b", &["web"]);
        admit(&mut req, &merge).unwrap();
        assert_eq!(req.uri(), "/a/b");
    }

    #[test]
    fn connect_and_asterisk_targets_are_left_alone() {
        let mut req = h1("web:443", &["web:443"]);
        *req.method_mut() = Method::CONNECT;
        let req = admitted(req).unwrap();
        assert_eq!(req.uri(), "web:443");
        let mut req = h1("*", &["web"]);
        *req.method_mut() = Method::OPTIONS;
        assert_eq!(admitted(req).unwrap().uri(), "*");
    }

    #[test]
    fn transfer_codings_other_than_chunked_get_501() {
        let mut req = h1("/", &["web"]);
        req.headers_mut().insert(
            "transfer-encoding",
            HeaderValue::from_static("gzip, chunked"),
        );
        assert_eq!(admitted(req).unwrap_err().0, ErrorKind::NotImplemented);
        let mut req = h1("/", &["web"]);
        req.headers_mut()
            .insert("transfer-encoding", HeaderValue::from_static("chunked"));
        assert!(admitted(req).is_ok());
    }

    #[test]
    fn forged_owned_headers_and_h2c_never_pass() {
        let mut req = h1("/", &["web"]);
        let headers = req.headers_mut();
        headers.insert("remora-error", HeaderValue::from_static("no_route"));
        headers.insert("x-remora-client-id", HeaderValue::from_static("spiffe://x"));
        headers.insert(
            "connection",
            HeaderValue::from_static("upgrade, http2-settings"),
        );
        headers.insert("upgrade", HeaderValue::from_static("h2c"));
        headers.insert("http2-settings", HeaderValue::from_static("AAMAAABk"));
        let req = admitted(req).unwrap();
        let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host"]);
    }
}
