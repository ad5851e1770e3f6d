//! Graceful drain: after `POST /drain` (or SIGTERM) the proxy refuses new
//! connections, lets in-flight ones finish, closes the rest at the deadline,
//! and exits 0. Only loopback may ask it to drain.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use remora_e2e::{assert_closed_without_data, exchange, within, Pod, ProxyHandle, TestNet, WAIT};
use tokio::net::TcpStream;

async fn echo_ok(stream: &mut TcpStream, payload: &[u8], what: &str) {
    let reply = within(WAIT, what, exchange(stream, payload))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(reply, payload, "{what}");
}

/// New connections through the drained proxy must be refused. Allows the
/// proxy a moment to close its listeners after it is told to drain: a
/// connection that lands in the accept queue just before the listener closes
/// is reset, and one accepted before that is served; neither is a failure
/// while the proxy is still acting on the drain.
async fn assert_new_connections_refused(client: &Pod, target: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let outcome = match client.connect(target).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            Err(e) => e.to_string(),
            Ok(stream) => format!("accepted, {:?}", stream.peer_addr()),
        };
        if Instant::now() > deadline {
            panic!("new connection 2 s after drain: expected refused, got {outcome}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_exits_zero(proxy: &mut ProxyHandle, within_time: Duration, what: &str) {
    match proxy.wait_exit(within_time).await {
        Some(status) => assert!(status.success(), "{what}: proxy exited with {status}"),
        None => panic!("{what}: proxy still running after {within_time:?}"),
    }
}

#[tokio::test]
async fn drain_keeps_in_flight_connection_refuses_new_ones_and_exits_zero() {
    let net = TestNet::new("drain_post");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_echo_server(8080);
    let mut proxy = a.mesh().await;

    let mut in_flight = a
        .connect(b.addr4(8080))
        .await
        .expect("a connects to b:8080");
    echo_ok(&mut in_flight, b"\x00before drain", "echo before drain").await;

    proxy.drain().await;
    assert_eq!(proxy.ready_status().await, 503, "/ready while draining");
    assert_new_connections_refused(&a, b.addr4(8080)).await;

    echo_ok(
        &mut in_flight,
        b"\x00during drain",
        "in-flight echo after drain",
    )
    .await;
    assert!(
        proxy.try_wait().is_none(),
        "proxy exited while a connection was still in flight"
    );

    drop(in_flight);
    assert_exits_zero(&mut proxy, WAIT, "after the in-flight connection closed").await;
}

#[tokio::test]
async fn sigterm_drains_like_post_drain() {
    let net = TestNet::new("drain_sigterm");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_echo_server(8080);
    let mut proxy = a.mesh().await;

    let mut in_flight = a
        .connect(b.addr4(8080))
        .await
        .expect("a connects to b:8080");
    echo_ok(&mut in_flight, b"\x00before SIGTERM", "echo before SIGTERM").await;

    proxy.terminate();
    assert_new_connections_refused(&a, b.addr4(8080)).await;
    echo_ok(
        &mut in_flight,
        b"\x00after SIGTERM",
        "in-flight echo after SIGTERM",
    )
    .await;
    assert!(
        proxy.try_wait().is_none(),
        "proxy exited while a connection was still in flight"
    );

    drop(in_flight);
    assert_exits_zero(
        &mut proxy,
        WAIT,
        "after SIGTERM and the in-flight connection closed",
    )
    .await;
}

#[tokio::test]
async fn drain_deadline_force_closes_idle_connections_and_exits_zero() {
    let net = TestNet::new("drain_deadline");
    let a = net.pod("a");
    let b = net.pod("b");
    let _app = b.spawn_echo_server(8080);
    let mut proxy = a.mesh_with(&[], &["--drain-deadline", "2s"]).await;

    let mut idle = a
        .connect(b.addr4(8080))
        .await
        .expect("a connects to b:8080");
    echo_ok(&mut idle, b"\x00hello", "echo before drain").await;

    let started = Instant::now();
    proxy.drain().await;
    assert_closed_without_data(&mut idle, "idle connection at the drain deadline").await;
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1500),
        "the connection was closed after {closed_after:?}, before the 2 s drain deadline"
    );
    assert_exits_zero(
        &mut proxy,
        Duration::from_secs(5),
        "after the drain deadline",
    )
    .await;
}

#[tokio::test]
async fn drain_from_another_pod_is_forbidden() {
    let net = TestNet::new("drain_remote");
    let a = net.pod("a");
    let b = net.pod("b");
    let mut proxy = a.mesh().await;

    let response = b
        .http("POST", a.addr4(15020), "/drain")
        .await
        .expect("POST http://a:15020/drain from pod b");
    assert_eq!(
        response.status, 403,
        "POST /drain from another pod: {}",
        response.body
    );
    proxy.assert_up().await;
}
