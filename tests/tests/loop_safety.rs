//! Loop safety: the proxy's own upstream connections are never captured
//! (every meshed test depends on that), a pod can call its own IP, and a
//! connection made straight to a capture port is refused, not looped.

use remora_e2e::metrics::{CLOSED, ERRORS, OPENED};
use remora_e2e::{
    assert_closed_without_data, exchange, within, Pod, ProxyHandle, TestNet, INBOUND, WAIT,
};
use tokio::io::AsyncWriteExt;

const ORIGINAL_DST: &[(&str, &str)] = &[("reason", "original_dst")];

#[tokio::test]
async fn pod_calling_its_own_ip_goes_through_the_inbound_listener() {
    let net = TestNet::new("loop_self_ip");
    let a = net.pod("a");
    let app = a.spawn_echo_server(8080);
    let proxy = a.mesh().await;
    let before = proxy.metrics().await;

    let mut stream = a
        .connect(a.addr4(8080))
        .await
        .expect("a connects to its own IP");
    let reply = within(WAIT, "the echo", exchange(&mut stream, b"\x00myself"))
        .await
        .expect("echo");
    assert_eq!(reply, b"\x00myself");
    drop(stream);

    let after = proxy
        .wait_metrics("the inbound connection closed", |m| {
            m.since(&before, CLOSED, INBOUND) >= 1.0
        })
        .await;
    assert_eq!(
        after.since(&before, OPENED, INBOUND),
        1.0,
        "counted once as inbound\n{after}"
    );
    assert_eq!(after.since(&before, ERRORS, &[]), 0.0, "no errors\n{after}");
    let peers: Vec<String> = app.peers().iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(
        peers,
        ["127.0.0.6"],
        "the app is reached once, by the inbound proxy"
    );
}

/// Connects `client` to `target`, which is a capture port of `proxy`'s pod,
/// and checks the proxy closes it, counts `original_dst`, and stays up.
async fn assert_refused_without_loop(
    client: &Pod,
    target: std::net::SocketAddr,
    proxy: &mut ProxyHandle,
) {
    let before = proxy.metrics().await;
    let mut stream = client.connect(target).await.unwrap_or_else(|e| {
        panic!("connect to {target}: {e} (expected the proxy to accept, then close)")
    });
    // Errors are fine here: the proxy may already have closed the socket.
    let _ = stream.write_all(b"\x00loop?").await;
    assert_closed_without_data(&mut stream, &format!("connection straight to {target}")).await;
    let after = proxy
        .wait_metrics("an original_dst error", |m| {
            m.since(&before, ERRORS, ORIGINAL_DST) >= 1.0
        })
        .await;
    // A loop would show up as many errors or many connections.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let settled = proxy.metrics().await;
    assert_eq!(
        settled.since(&before, ERRORS, ORIGINAL_DST),
        1.0,
        "exactly one original_dst error for one connection to {target}\n{after}"
    );
    proxy.assert_up().await;
}

#[tokio::test]
async fn connection_straight_to_the_outbound_port_from_another_pod_is_refused() {
    let net = TestNet::new("loop_direct_pod");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_echo_server(8080);
    let mut proxy = a.mesh().await;

    assert_refused_without_loop(&b, a.addr4(15001), &mut proxy).await;

    // The proxy still serves ordinary traffic.
    let mut stream = a
        .connect(b.addr4(8080))
        .await
        .expect("a connects to b:8080");
    let reply = within(WAIT, "the echo", exchange(&mut stream, b"\x00still up"))
        .await
        .expect("echo");
    assert_eq!(reply, b"\x00still up");
}

#[tokio::test]
async fn connection_to_loopback_capture_ports_in_the_pod_is_refused() {
    let net = TestNet::new("loop_loopback");
    let a = net.pod("a");
    let mut proxy = a.mesh().await;

    assert_refused_without_loop(&a, "127.0.0.1:15001".parse().unwrap(), &mut proxy).await;
    assert_refused_without_loop(&a, "127.0.0.1:15006".parse().unwrap(), &mut proxy).await;
}
