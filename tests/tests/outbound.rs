//! Outbound capture: an app's plain connection to another pod goes through
//! its own proxy's outbound listener and the peer's inbound listener, and
//! the bytes arrive intact, over IPv4 and IPv6. Each proxy counts exactly
//! what it carried.

use remora_e2e::metrics::{ACTIVE, CLOSED, OPENED, RECEIVED_BYTES, SENT_BYTES};
use std::net::SocketAddr;

use remora_e2e::{exchange, within, Pod, TestNet, INBOUND, OUTBOUND, WAIT};

const OUTBOUND_OPAQUE: &[(&str, &str)] = &[("direction", "outbound"), ("protocol", "opaque")];
const INBOUND_OPAQUE: &[(&str, &str)] = &[("direction", "inbound"), ("protocol", "opaque")];

#[tokio::test]
async fn echo_between_meshed_pods_is_intact_and_counted_on_both_sides() {
    echo_through_both_sidecars("outbound_echo", |b| b.addr4(8080), "127.0.0.6").await;
}

/// IPv6 capture: the same path over `fd00:99::/64`, with `remora-init` left
/// to detect IPv6 on its own.
#[tokio::test]
async fn echo_between_meshed_pods_over_ipv6_is_intact_and_counted() {
    echo_through_both_sidecars("ipv6_echo", |b| b.addr6(8080), "::6").await;
}

/// Pod a echoes bytes off pod b's app at `target(b)`, both pods meshed; the
/// bytes arrive intact, each proxy counts exactly what it carried, and b's
/// app is reached only from b's inbound forward source `via`.
async fn echo_through_both_sidecars(name: &str, target: fn(&Pod) -> SocketAddr, via: &str) {
    let net = TestNet::new(name);
    let a = net.pod("a");
    let b = net.pod("b");
    let app = b.spawn_echo_server(8080);
    let proxy_a = a.mesh().await;
    let proxy_b = b.mesh().await;
    let (a0, b0) = (proxy_a.metrics().await, proxy_b.metrics().await);

    // Starts with a NUL byte: no HTTP method, h2 preface or TLS record.
    let payload: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut stream = a
        .connect(target(&b))
        .await
        .unwrap_or_else(|e| panic!("a connects to {}: {e}", target(&b)));
    let reply = within(WAIT, "the echo", exchange(&mut stream, &payload))
        .await
        .expect("echo through both proxies");
    assert_eq!(reply, payload, "bytes echoed through both proxies");
    drop(stream);

    let a1 = proxy_a
        .wait_metrics("the outbound connection closed", |m| {
            m.since(&a0, CLOSED, OUTBOUND) >= 1.0
        })
        .await;
    let b1 = proxy_b
        .wait_metrics("the inbound connection closed", |m| {
            m.since(&b0, CLOSED, INBOUND) >= 1.0
        })
        .await;
    let n = payload.len() as f64;
    assert_eq!(
        a1.since(&a0, OPENED, OUTBOUND_OPAQUE),
        1.0,
        "a's proxy: outbound opaque opened\n{a1}"
    );
    assert_eq!(
        a1.since(&a0, CLOSED, OUTBOUND_OPAQUE),
        1.0,
        "a's proxy: outbound opaque closed\n{a1}"
    );
    assert_eq!(
        a1.since(&a0, RECEIVED_BYTES, OUTBOUND),
        n,
        "a's proxy: bytes read from the app\n{a1}"
    );
    assert_eq!(
        a1.since(&a0, SENT_BYTES, OUTBOUND),
        n,
        "a's proxy: bytes written to the app\n{a1}"
    );
    assert_eq!(
        a1.since(&a0, OPENED, INBOUND),
        0.0,
        "a's proxy saw no inbound connection\n{a1}"
    );
    assert_eq!(
        a1.get(ACTIVE, OUTBOUND),
        0.0,
        "a's proxy: no active outbound connection left\n{a1}"
    );

    assert_eq!(
        b1.since(&b0, OPENED, INBOUND_OPAQUE),
        1.0,
        "b's proxy: inbound opaque opened\n{b1}"
    );
    assert_eq!(
        b1.since(&b0, CLOSED, INBOUND_OPAQUE),
        1.0,
        "b's proxy: inbound opaque closed\n{b1}"
    );
    assert_eq!(
        b1.since(&b0, RECEIVED_BYTES, INBOUND),
        n,
        "b's proxy: bytes read from a's proxy\n{b1}"
    );
    assert_eq!(
        b1.since(&b0, SENT_BYTES, INBOUND),
        n,
        "b's proxy: bytes written to a's proxy\n{b1}"
    );
    assert_eq!(
        b1.since(&b0, OPENED, OUTBOUND),
        0.0,
        "b's proxy's own connection to its app must not be captured as outbound\n{b1}"
    );
    assert_eq!(
        b1.get(ACTIVE, INBOUND),
        0.0,
        "b's proxy: no active inbound connection left\n{b1}"
    );

    let peers: Vec<String> = app.peers().iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(
        peers,
        [via],
        "b's app is reached by b's inbound proxy from {via}"
    );
}

#[tokio::test]
async fn http1_request_between_meshed_pods_is_answered_and_detected_as_http1() {
    let net = TestNet::new("outbound_http1");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_http_server(8080, "hello from b");
    let proxy_a = a.mesh().await;
    let proxy_b = b.mesh().await;
    let (a0, b0) = (proxy_a.metrics().await, proxy_b.metrics().await);

    let response = a
        .http("GET", b.addr4(8080), "/")
        .await
        .expect("GET http://b:8080/ from a");
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "hello from b")
    );

    let http1_out = &[("direction", "outbound"), ("protocol", "http1")];
    let http1_in = &[("direction", "inbound"), ("protocol", "http1")];
    let a1 = proxy_a
        .wait_metrics("an outbound http1 connection", |m| {
            m.since(&a0, OPENED, http1_out) >= 1.0
        })
        .await;
    let b1 = proxy_b
        .wait_metrics("an inbound http1 connection", |m| {
            m.since(&b0, OPENED, http1_in) >= 1.0
        })
        .await;
    assert_eq!(
        a1.since(&a0, OPENED, OUTBOUND),
        1.0,
        "a's proxy: exactly one outbound connection\n{a1}"
    );
    assert_eq!(
        b1.since(&b0, OPENED, INBOUND),
        1.0,
        "b's proxy: exactly one inbound connection\n{b1}"
    );
}
