//! Capture exclusions: traffic to an excluded outbound port or CIDR bypasses
//! the pod's proxy, and an excluded inbound port reaches the app directly.
//! Each test also sends one captured connection, so it fails if capture is off.

use remora_e2e::metrics::{CLOSED, OPENED};
use remora_e2e::{exchange, within, Pod, TestNet, INBOUND, OUTBOUND, WAIT};

async fn echo_ok(from: &Pod, to: std::net::SocketAddr) {
    let mut stream = from
        .connect(to)
        .await
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    let reply = within(WAIT, "the echo", exchange(&mut stream, b"\x00excluded?"))
        .await
        .unwrap_or_else(|e| panic!("echo via {to}: {e}"));
    assert_eq!(reply, b"\x00excluded?", "bytes echoed via {to}");
}

#[tokio::test]
async fn excluded_outbound_port_bypasses_the_proxy() {
    let net = TestNet::new("excl_out_port");
    let a = net.pod("a");
    let b = net.pod("b");
    let _excluded = b.spawn_echo_server(9999);
    let _captured = b.spawn_echo_server(8080);
    let proxy_a = a
        .mesh_with(&["--exclude-outbound-ports", "9999"], &[])
        .await;
    let a0 = proxy_a.metrics().await;

    echo_ok(&a, b.addr4(9999)).await;
    echo_ok(&a, b.addr4(8080)).await;

    let a1 = proxy_a
        .wait_metrics("the captured connection to 8080 closed", |m| {
            m.since(&a0, CLOSED, OUTBOUND) >= 1.0
        })
        .await;
    assert_eq!(
        a1.since(&a0, OPENED, OUTBOUND),
        1.0,
        "only b:8080 goes through a's proxy; b:9999 is excluded\n{a1}"
    );
}

#[tokio::test]
async fn excluded_outbound_cidr_bypasses_the_proxy() {
    let net = TestNet::new("excl_out_cidr");
    let a = net.pod("a");
    let b = net.pod("b");
    let c = net.pod("c");
    let _b_app = b.spawn_echo_server(8080);
    let _c_app = c.spawn_echo_server(8080);
    let excluded = format!("{}/32", b.ip4());
    let proxy_a = a
        .mesh_with(&["--exclude-outbound-cidrs", &excluded], &[])
        .await;
    let a0 = proxy_a.metrics().await;

    echo_ok(&a, b.addr4(8080)).await;
    echo_ok(&a, c.addr4(8080)).await;

    let a1 = proxy_a
        .wait_metrics("the captured connection to c closed", |m| {
            m.since(&a0, CLOSED, OUTBOUND) >= 1.0
        })
        .await;
    assert_eq!(
        a1.since(&a0, OPENED, OUTBOUND),
        1.0,
        "only c goes through a's proxy; {excluded} is excluded\n{a1}"
    );
}

#[tokio::test]
async fn excluded_inbound_port_reaches_the_app_directly() {
    let net = TestNet::new("excl_in_port");
    let a = net.pod("a");
    let b = net.pod("b");
    let excluded_app = b.spawn_echo_server(8081);
    let captured_app = b.spawn_echo_server(8080);
    let proxy_b = b.mesh_with(&["--exclude-inbound-ports", "8081"], &[]).await;
    let b0 = proxy_b.metrics().await;

    echo_ok(&a, b.addr4(8081)).await;
    echo_ok(&a, b.addr4(8080)).await;

    let b1 = proxy_b
        .wait_metrics("the captured connection to 8080 closed", |m| {
            m.since(&b0, CLOSED, INBOUND) >= 1.0
        })
        .await;
    assert_eq!(
        b1.since(&b0, OPENED, INBOUND),
        1.0,
        "only b:8080 goes through b's proxy; 8081 is excluded\n{b1}"
    );
    assert_eq!(
        excluded_app.peers()[0].ip(),
        a.ip4(),
        "the excluded port's app sees a itself"
    );
    assert_eq!(
        captured_app.peers()[0].ip().to_string(),
        "127.0.0.6",
        "the captured port's app sees b's inbound proxy"
    );
}
