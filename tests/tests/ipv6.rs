//! IPv6 capture: the same outbound and inbound path as `outbound.rs`, over
//! `fd00:99::/64`, with `remora-init` left to detect IPv6 on its own.

use remora_e2e::metrics::{CLOSED, OPENED, RECEIVED_BYTES, SENT_BYTES};
use remora_e2e::{exchange, within, TestNet, INBOUND, OUTBOUND, WAIT};

#[tokio::test]
async fn echo_between_meshed_pods_over_ipv6_is_intact_and_counted() {
    let net = TestNet::new("ipv6_echo");
    let a = net.pod("a");
    let b = net.pod("b");
    let app = b.spawn_echo_server(8080);
    let proxy_a = a.mesh().await;
    let proxy_b = b.mesh().await;
    let (a0, b0) = (proxy_a.metrics().await, proxy_b.metrics().await);

    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
    let mut stream = a
        .connect(b.addr6(8080))
        .await
        .expect("a connects to [fd00:99::3]:8080");
    let reply = within(WAIT, "the echo", exchange(&mut stream, &payload))
        .await
        .expect("echo through both proxies over IPv6");
    assert_eq!(reply, payload, "bytes echoed over IPv6");
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
        a1.since(&a0, OPENED, OUTBOUND),
        1.0,
        "a's proxy: one outbound connection\n{a1}"
    );
    assert_eq!(
        a1.since(&a0, RECEIVED_BYTES, OUTBOUND),
        n,
        "a's proxy: bytes from the app\n{a1}"
    );
    assert_eq!(
        a1.since(&a0, SENT_BYTES, OUTBOUND),
        n,
        "a's proxy: bytes to the app\n{a1}"
    );
    assert_eq!(
        b1.since(&b0, OPENED, INBOUND),
        1.0,
        "b's proxy: one inbound connection\n{b1}"
    );
    assert_eq!(
        b1.since(&b0, RECEIVED_BYTES, INBOUND),
        n,
        "b's proxy: bytes from a\n{b1}"
    );
    assert_eq!(
        b1.since(&b0, SENT_BYTES, INBOUND),
        n,
        "b's proxy: bytes to a\n{b1}"
    );
    assert!(
        app.peers().iter().all(|p| p.ip() != a.ip6()),
        "b's app must be reached through b's proxy, not straight from a: {:?}",
        app.peers()
    );
}
