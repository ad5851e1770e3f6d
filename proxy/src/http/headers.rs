//! Header hygiene between hops: hop-by-hop headers are dropped, `Upgrade`
//! is kept for protocol upgrades, and `x-forwarded-*` is set as configured.

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

/// The `Upgrade` token the request asks for (e.g. `websocket`), if any.
pub(crate) fn upgrade_requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if connection_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes hop-by-hop headers, including those `Connection` names. When
/// `upgrade` is set, `Connection: upgrade` and `Upgrade` are put back.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // `TE: trailers` is end to end in practice: gRPC over HTTP/2 needs it.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// Appends the downstream peer to `x-forwarded-for` and sets
/// `x-forwarded-proto`.
pub(crate) fn append_forwarded(headers: &mut HeaderMap, peer: IpAddr) {
    let name = HeaderName::from_static("x-forwarded-for");
    let peer = peer.to_canonical().to_string();
    let value = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing}, {peer}"),
        _ => peer,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
    headers
        .entry(HeaderName::from_static("x-forwarded-proto"))
        .or_insert(HeaderValue::from_static("http"));
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
    fn forwarded_for_appends() {
        let mut map = headers(&[("x-forwarded-for", "1.2.3.4")]);
        append_forwarded(&mut map, "10.0.0.2".parse().unwrap());
        assert_eq!(map["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        assert_eq!(map["x-forwarded-proto"], "http");
    }
}
