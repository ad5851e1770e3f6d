//! Header hygiene between hops: hop-by-hop headers are dropped, `Upgrade`
//! is kept for the protocol upgrades config allows (never `h2c`), headers
//! the proxy owns are never taken from a client or an app, and
//! `x-forwarded-*` is set as configured.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// The identity the client proved over mesh mTLS, as the inbound proxy
/// vouches for it to the app.
pub(crate) const CLIENT_ID: HeaderName = HeaderName::from_static("x-remora-client-id");

/// Between sidecars: the HTTP version the client's app spoke, when the
/// hop itself is HTTP/2 and the app spoke HTTP/1.x (`HTTP/1.1`), so that
/// the server's sidecar speaks the same to its app.
pub(crate) const ORIG_PROTO: HeaderName = HeaderName::from_static("remora-orig-proto");

/// Headers only the proxy may set. A request carrying one had it forged by
/// the client (or its app), so it is removed before anything reads it:
/// `remora-error` names why the proxy answered a request itself,
/// `x-remora-client-id` is the peer identity the inbound proxy vouches
/// for, `remora-orig-proto` is read only from a mesh peer, and
/// `x-remora-consumer` is the consumer an auth plugin authenticated.
pub(crate) const OWNED_REQUEST_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("remora-error"),
    CLIENT_ID,
    ORIG_PROTO,
    crate::plugins::CONSUMER_HEADER,
];

/// Headers only the proxy may put on a response: an app's own
/// `remora-error` would pass its failures off as the mesh's.
pub(crate) const OWNED_RESPONSE_HEADERS: [HeaderName; 1] =
    [HeaderName::from_static("remora-error")];

const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The elements of a comma-separated list header, all its lines together
/// (RFC 9110 5.6.1), trimmed, empty ones skipped.
fn list<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A header `strip_hop_by_hop` removes by its name alone: a hop-by-hop
/// one, or `Upgrade`.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE
}

/// Removes every header in `owned`: one pass over the names, then a
/// removal for each one present.
pub(crate) fn strip_owned(headers: &mut HeaderMap, owned: &[HeaderName]) {
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| owned.contains(n))
        .cloned()
        .collect();
    for name in present {
        headers.remove(name);
    }
}

/// Keeps only the protocols in `allowed` (compared case-insensitively, by
/// name or by `name/version`) in a request's `Upgrade`; `h2c` and
/// `HTTP2-Settings` go whatever `allowed` says. When nothing is left, the
/// request goes on as a plain request: `Upgrade` and the `upgrade` token of
/// `Connection` are removed.
pub(crate) fn filter_upgrade(headers: &mut HeaderMap, allowed: &[String]) {
    headers.remove(HTTP2_SETTINGS);
    if !headers.contains_key(header::UPGRADE) {
        return;
    }
    let kept: Vec<String> = list(headers, &header::UPGRADE)
        .filter(|token| upgrade_allowed(token, allowed))
        .map(str::to_owned)
        .collect();
    headers.remove(header::UPGRADE);
    if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            headers.insert(header::UPGRADE, value);
            return;
        }
    }
    remove_connection_tokens(headers, &["upgrade", "http2-settings"]);
}

fn upgrade_allowed(token: &str, allowed: &[String]) -> bool {
    let name = token.split('/').next().unwrap_or(token).trim();
    if name.is_empty() || name.eq_ignore_ascii_case("h2c") {
        return false;
    }
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(token) || a.eq_ignore_ascii_case(name))
}

/// Rewrites `Connection` without the named tokens (dropping it if empty).
fn remove_connection_tokens(headers: &mut HeaderMap, drop: &[&str]) {
    let kept: Vec<String> = list(headers, &header::CONNECTION)
        .filter(|t| !drop.iter().any(|d| t.eq_ignore_ascii_case(d)))
        .map(str::to_owned)
        .collect();
    headers.remove(header::CONNECTION);
    if kept.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
        headers.insert(header::CONNECTION, value);
    }
}

/// Why a request's `Transfer-Encoding` cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransferCodingError {
    /// RFC 9112 6.1: a coding the proxy does not implement gets 501.
    #[error("transfer coding {0:?} is not implemented: send the body chunked only, and say Content-Encoding for compression")]
    Unsupported(String),
    /// RFC 9112 7.1: chunked is applied once.
    #[error("the body is chunked more than once")]
    ChunkedTwice,
}

/// Checks an HTTP/1 request's `Transfer-Encoding`: `chunked` alone is
/// fine. hyper has already refused one that does not end in `chunked`
/// (400); anything before it (`gzip, chunked`) would be dropped with the
/// header, silently changing the body, so it is refused here.
pub(crate) fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), TransferCodingError> {
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            // A coding may carry parameters (`gzip;q=1`): the name decides.
            let name = coding.split(';').next().unwrap_or(coding).trim();
            if !name.eq_ignore_ascii_case("chunked") {
                return Err(TransferCodingError::Unsupported(name.to_owned()));
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(TransferCodingError::ChunkedTwice);
    }
    Ok(())
}

/// The `Upgrade` token the request asks for (e.g. `websocket`), if any.
pub(crate) fn upgrade_requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade =
        list(headers, &header::CONNECTION).any(|token| token.eq_ignore_ascii_case("upgrade"));
    if connection_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes hop-by-hop headers, including those `Connection` names. When
/// `upgrade` is set, `Connection: upgrade` and `Upgrade` are put back.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    // One pass over the names finds those to remove, and only they are
    // looked up again: most messages carry none (HTTP/2 forbids them), and
    // most of the rest one (HTTP/1.1's `Connection: keep-alive`).
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    if upgrade.is_none() && doomed.is_empty() {
        return;
    }
    // `TE: trailers` is end to end in practice (gRPC over HTTP/2 needs
    // it), unless `Connection` names TE.
    let mut te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if doomed.contains(&header::CONNECTION) {
        let named: Vec<&str> = list(headers, &header::CONNECTION).collect();
        te_trailers &= !named.iter().any(|t| t.eq_ignore_ascii_case("te"));
        let also = headers.keys().filter(|name| {
            !is_hop_by_hop(name) && named.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()))
        });
        doomed.extend(also.cloned());
    }
    for name in doomed {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// The downstream peer's address as `x-forwarded-for` carries it (an
/// IPv4-mapped IPv6 address as IPv4), made once per connection.
pub(crate) fn forwarded_for_value(peer: IpAddr) -> HeaderValue {
    let text = peer.to_canonical().to_string();
    // An address's text is always a valid header value.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Appends the downstream peer (see [`forwarded_for_value`]) to
/// `x-forwarded-for`.
pub(crate) fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let name = HeaderName::from_static("x-forwarded-for");
    // Every line the client sent, in order, as one list (RFC 9110 5.3).
    let mut joined: Vec<u8> = Vec::new();
    for line in headers.get_all(&name) {
        let line = line.as_bytes().trim_ascii();
        if !line.is_empty() {
            joined.extend_from_slice(line);
            joined.extend_from_slice(b", ");
        }
    }
    let value = if joined.is_empty() {
        peer.clone()
    } else {
        joined.extend_from_slice(peer.as_bytes());
        match HeaderValue::from_bytes(&joined) {
            Ok(value) => value,
            Err(_) => return,
        }
    };
    headers.insert(name, value);
}

/// Sets `x-forwarded-proto` to the scheme the proxy itself received the
/// request over, whatever the client claimed: plain `http` until inbound
/// TLS terminates here.
pub(crate) fn set_forwarded_proto(headers: &mut HeaderMap) {
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_do_not_cross() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut map, None);
        assert_eq!(map.len(), 1);
        assert_eq!(map["x-kept"], "yes");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "transfer-encoding",
            "upgrade",
            "Upgrade",
        ] {
            let mut map = headers(&[("x-kept", "yes"), (name, "gzip")]);
            strip_hop_by_hop(&mut map, None);
            assert_eq!(map.len(), 1, "{name} crossed");
            assert_eq!(map["x-kept"], "yes");
        }
        // Nothing to strip: the message is as it was.
        let mut map = headers(&[("x-a", "1"), ("x-b", "2"), ("content-length", "3")]);
        strip_hop_by_hop(&mut map, None);
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn each_owned_header_alone_is_removed() {
        for name in &OWNED_REQUEST_HEADERS {
            let mut map = headers(&[
                (name.as_str(), "forged"),
                ("x-kept", "yes"),
                (name.as_str(), "forged again"),
            ]);
            strip_owned(&mut map, &OWNED_REQUEST_HEADERS);
            assert_eq!(map.len(), 1, "{name} crossed");
        }
    }

    #[test]
    fn upgrades_survive() {
        let mut map = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let upgrade = upgrade_requested(&map);
        assert_eq!(upgrade.as_ref().unwrap(), "websocket");
        strip_hop_by_hop(&mut map, upgrade);
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["connection"], "upgrade");
    }

    #[test]
    fn te_trailers_is_kept_for_grpc() {
        let mut map = headers(&[("te", "trailers")]);
        strip_hop_by_hop(&mut map, None);
        assert_eq!(map["te"], "trailers");
    }

    #[test]
    fn connection_names_are_matched_without_case_and_may_name_te() {
        let mut map = headers(&[
            ("connection", "X-Secret, TE"),
            ("te", "trailers"),
            ("x-secret", "1"),
            ("x-secret", "2"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut map, None);
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map["x-kept"], "yes");
        // The common HTTP/1.1 response: only `Connection` goes.
        let mut map = headers(&[
            ("connection", "keep-alive"),
            ("content-length", "5"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut map, None);
        assert_eq!(map.len(), 2, "{map:?}");
        assert!(!map.contains_key("connection"));
    }

    #[test]
    fn forwarded_for_joins_every_line_before_the_peer() {
        let peer = forwarded_for_value("::ffff:10.0.0.2".parse().unwrap());
        assert_eq!(peer, "10.0.0.2");
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4, 5.6.7.8"),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        append_forwarded_for(&mut map, &peer);
        assert_eq!(
            map.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["1.2.3.4, 5.6.7.8, 9.9.9.9, 10.0.0.2"]
        );
        let mut map = headers(&[("x-forwarded-for", "")]);
        append_forwarded_for(&mut map, &peer);
        assert_eq!(map["x-forwarded-for"], "10.0.0.2");
        let mut map = headers(&[]);
        append_forwarded_for(
            &mut map,
            &forwarded_for_value("2001:db8::1".parse().unwrap()),
        );
        assert_eq!(map["x-forwarded-for"], "2001:db8::1");
    }

    #[test]
    fn forwarded_for_appends_and_proto_is_the_proxys_own() {
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-proto", "https"),
        ]);
        append_forwarded_for(&mut map, &forwarded_for_value("10.0.0.2".parse().unwrap()));
        set_forwarded_proto(&mut map);
        assert_eq!(map["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        assert_eq!(
            map.get_all("x-forwarded-proto").iter().collect::<Vec<_>>(),
            ["http"]
        );
    }

    fn allowed(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn h2c_is_never_an_upgrade() {
        let mut map = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ]);
        filter_upgrade(&mut map, &allowed(&["websocket", "h2c"]));
        assert_eq!(upgrade_requested(&map), None);
        assert!(map.get("upgrade").is_none());
        assert!(map.get("http2-settings").is_none());
        assert!(map.get("connection").is_none());
    }

    #[test]
    fn only_allowed_upgrades_survive() {
        let mut map = headers(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "h2c, WebSocket, foo/2"),
        ]);
        filter_upgrade(&mut map, &allowed(&["websocket"]));
        assert_eq!(map["upgrade"], "WebSocket");
        assert_eq!(upgrade_requested(&map).unwrap(), "WebSocket");

        let mut map = headers(&[("connection", "keep-alive, upgrade"), ("upgrade", "foo/2")]);
        filter_upgrade(&mut map, &allowed(&["websocket"]));
        assert!(map.get("upgrade").is_none());
        assert_eq!(map["connection"], "keep-alive");

        let mut map = headers(&[("connection", "upgrade"), ("upgrade", "foo/2, bar")]);
        filter_upgrade(&mut map, &allowed(&["FOO", "bar/1"]));
        assert_eq!(map["upgrade"], "foo/2");
    }

    #[test]
    fn requests_without_upgrade_are_left_alone() {
        let mut map = headers(&[("connection", "keep-alive"), ("x-a", "1")]);
        filter_upgrade(&mut map, &allowed(&["websocket"]));
        assert_eq!(map.len(), 2);
        assert_eq!(map["connection"], "keep-alive");
    }

    #[test]
    fn owned_headers_are_stripped() {
        let mut map = headers(&[
            ("remora-error", "no_route"),
            ("Remora-Error", "connect"),
            ("x-remora-client-id", "spiffe://evil"),
            ("x-kept", "1"),
        ]);
        strip_owned(&mut map, &OWNED_REQUEST_HEADERS);
        assert_eq!(map.len(), 1);
        let mut map = headers(&[("remora-error", "connect"), ("x-remora-client-id", "a")]);
        strip_owned(&mut map, &OWNED_RESPONSE_HEADERS);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("x-remora-client-id"));
    }

    #[test]
    fn only_chunked_alone_is_a_transfer_coding() {
        let check = |values: &[&str]| {
            let pairs: Vec<_> = values.iter().map(|v| ("transfer-encoding", *v)).collect();
            check_transfer_encoding(&headers(&pairs))
        };
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(check(&["chunked"]), Ok(()));
        assert_eq!(check(&["Chunked"]), Ok(()));
        assert_eq!(check(&[" chunked ,"]), Ok(()));
        assert_eq!(
            check(&["gzip, chunked"]),
            Err(TransferCodingError::Unsupported("gzip".into()))
        );
        assert_eq!(
            check(&["deflate", "chunked"]),
            Err(TransferCodingError::Unsupported("deflate".into()))
        );
        assert_eq!(
            check(&["x-custom;q=1, chunked"]),
            Err(TransferCodingError::Unsupported("x-custom".into()))
        );
        assert_eq!(
            check(&["chunked, chunked"]),
            Err(TransferCodingError::ChunkedTwice)
        );
    }
}
