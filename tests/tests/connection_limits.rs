//! Connection exhaustion: an unmeshed pod that opens silent connections can
//! fill a sidecar's listener only up to `--max-connections`; past it new
//! connections are reset at once and counted, while connections already
//! open, the admin port and the other listener keep working, and every slot
//! comes back when the connections close. Opaque connections that carry
//! nothing are closed after `--tcp-idle-timeout`; busy ones are not.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use remora_e2e::http_apps::HttpClient;
use remora_e2e::metrics::{CLOSED, ERRORS, OPENED, REFUSED};
use remora_e2e::ws::ws_round_trip;
use remora_e2e::{
    assert_closed_without_data, exchange, within, Pod, ProxyHandle, TestNet, INBOUND, OUTBOUND,
    WAIT,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: usize = 50;
const FLOOD: usize = 80;
const INBOUND_LIMIT: &[(&str, &str)] = &[("direction", "inbound"), ("reason", "limit")];
const OUTBOUND_LIMIT: &[(&str, &str)] = &[("direction", "outbound"), ("reason", "limit")];
const OUTBOUND_IDLE: &[(&str, &str)] = &[("direction", "outbound"), ("reason", "idle_timeout")];
const INBOUND_IDLE: &[(&str, &str)] = &[("direction", "inbound"), ("reason", "idle_timeout")];

/// Silent connections: open ones, and how many were reset so soon that
/// `connect` itself reported it.
struct Silent {
    open: Vec<TcpStream>,
    reset_at_connect: usize,
}

/// Opens `n` connections from `pod` to `target` that never send a byte.
async fn open_silent(pod: &Pod, target: SocketAddr, n: usize) -> Silent {
    let mut silent = Silent {
        open: Vec::with_capacity(n),
        reset_at_connect: 0,
    };
    for i in 0..n {
        match pod.connect(target).await {
            Ok(stream) => silent.open.push(stream),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => silent.reset_at_connect += 1,
            Err(e) => panic!("silent connection {i}: connect: {e}"),
        }
    }
    silent
}

impl Silent {
    /// How many the other side reset, at connect or since; the rest must
    /// still be open (a read finds nothing for a while), never closed
    /// cleanly or sent data.
    async fn count_reset(&mut self) -> usize {
        let reads = self
            .open
            .iter_mut()
            .enumerate()
            .map(|(i, stream)| async move {
                let mut buf = [0; 64];
                match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await
                {
                    Err(_) => false,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => true,
                    Ok(other) => {
                        panic!("silent connection {i}: expected open or reset, got {other:?}")
                    }
                }
            });
        let reset_later = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .filter(|reset| *reset)
            .count();
        self.reset_at_connect + reset_later
    }
}

/// Echoes through `pod`'s outbound listener to `target`.
async fn assert_outbound_echo(pod: &Pod, target: SocketAddr) {
    let mut stream = pod
        .connect(target)
        .await
        .unwrap_or_else(|e| panic!("pod {}: connect out to {target}: {e}", pod.name()));
    let reply = within(WAIT, "the outbound echo", exchange(&mut stream, b"out"))
        .await
        .unwrap_or_else(|e| panic!("pod {}: echo through its outbound: {e}", pod.name()));
    assert_eq!(reply, b"out");
}

/// Waits until `proxy` has given `expected` inbound connections their place
/// (detected, so counted as opened) or refused them, since `before`.
async fn wait_settled(
    proxy: &ProxyHandle,
    before: &remora_e2e::Metrics,
    expected: f64,
) -> remora_e2e::Metrics {
    proxy
        .wait_metrics("every flood connection opened or refused", |m| {
            m.since(before, OPENED, INBOUND) + m.since(before, REFUSED, INBOUND) >= expected
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_past_the_limit_are_refused_while_good_clients_carry_on() {
    let net = TestNet::new("conn_limit");
    let client = net.pod("client");
    let server = net.pod("server");
    let flooder = net.pod("flooder");
    let _web = server.spawn_http_app(8080, "web");
    let _echo = flooder.spawn_echo_server(9000);
    let _client_proxy = client.mesh().await;
    let max = LIMIT.to_string();
    let server_proxy = server.mesh_with(&[], &["--max-connections", &max]).await;
    let target = server.addr4(8080);

    // Before the flood: a keep-alive HTTP client, meshed. Its proxy's pooled
    // connection to the server takes one of the server listener's slots.
    let mut keep_alive = HttpClient::new(&client, target);
    let reply = keep_alive
        .get("/before")
        .await
        .expect("GET before the flood");
    assert_eq!((reply.status, reply.body.as_str()), (200, "web"));
    let before = server_proxy.metrics().await;

    // The flood: 80 silent connections from an unmeshed pod. 49 fit beside
    // the keep-alive one; 31 are reset.
    let mut flood = open_silent(&flooder, target, FLOOD).await;
    let settled = wait_settled(&server_proxy, &before, FLOOD as f64).await;
    let fit = LIMIT - 1;
    let refused = FLOOD - fit;
    assert_eq!(
        settled.since(&before, REFUSED, INBOUND_LIMIT),
        refused as f64,
        "refused at the limit\n{settled}"
    );
    assert_eq!(
        settled.since(&before, OPENED, INBOUND),
        fit as f64,
        "accepted up to the limit\n{settled}"
    );
    assert_eq!(
        flood.count_reset().await,
        refused,
        "the flooder sees exactly the refused ones reset"
    );

    // The connection opened before the flood still works.
    let reply = keep_alive
        .get("/during")
        .await
        .expect("GET during the flood");
    assert_eq!((reply.status, reply.body.as_str()), (200, "web"));
    assert_eq!(keep_alive.connects(), 1, "the same connection as before");

    // The admin port answers, from the pod itself and from the pod network.
    let metrics = server_proxy.metrics().await;
    let scrape = flooder
        .http("GET", server.addr4(15020), "/metrics")
        .await
        .expect("/metrics from another pod during the flood");
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    assert!(scrape.body.contains("remora_connections_refused_total"));

    // Outbound listeners carry on: the client pod's, and the flooded server
    // pod's own (each listener has its own limit).
    assert_outbound_echo(&client, flooder.addr4(9000)).await;
    assert_outbound_echo(&server, flooder.addr4(9000)).await;

    // One more while full: reset at once, not left to time out.
    let started = Instant::now();
    let extra = flooder.http("GET", target, "/extra").await;
    assert!(extra.is_err(), "a request past the limit: {extra:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused in {:?}: a refusal must be immediate",
        started.elapsed()
    );
    let full = server_proxy.metrics().await;
    assert_eq!(
        full.since(&metrics, REFUSED, INBOUND_LIMIT),
        1.0,
        "one more refused\n{full}"
    );
    assert_eq!(full.since(&before, REFUSED, OUTBOUND_LIMIT), 0.0);

    // The flood ends: every slot comes back. Exactly 49 silent connections
    // fit again, and the 50th is refused.
    drop(flood);
    let released = server_proxy
        .wait_metrics("the flood's connections closed", |m| {
            m.since(&before, CLOSED, INBOUND) >= fit as f64
        })
        .await;
    let mut again = open_silent(&flooder, target, fit).await;
    let settled = wait_settled(&server_proxy, &released, fit as f64).await;
    assert_eq!(
        settled.since(&released, REFUSED, INBOUND_LIMIT),
        0.0,
        "all 49 slots came back\n{settled}"
    );
    let mut over = open_silent(&flooder, target, 1).await;
    let refused_again = server_proxy
        .wait_metrics("the 50th refused", |m| {
            m.since(&released, REFUSED, INBOUND_LIMIT) >= 1.0
        })
        .await;
    assert_eq!(
        refused_again.since(&released, REFUSED, INBOUND_LIMIT),
        1.0,
        "no slot leaked and none given twice\n{refused_again}"
    );
    assert_eq!(over.count_reset().await, 1);
    assert_eq!(again.count_reset().await, 0);

    // And once they close too, new clients, meshed or not, are served.
    drop(again);
    server_proxy
        .wait_metrics("the second flood closed", |m| {
            m.since(&released, CLOSED, INBOUND) >= fit as f64
        })
        .await;
    let reply = HttpClient::new(&flooder, target)
        .get("/after")
        .await
        .expect("an unmeshed client after the flood");
    assert_eq!((reply.status, reply.body.as_str()), (200, "web"));
    let reply = HttpClient::new(&client, target)
        .get("/after")
        .await
        .expect("a new meshed client after the flood");
    assert_eq!((reply.status, reply.body.as_str()), (200, "web"));
    let reply = keep_alive.get("/after").await.expect("GET after the flood");
    assert_eq!((reply.status, reply.body.as_str()), (200, "web"));
}

#[tokio::test]
async fn idle_opaque_connections_are_closed_and_busy_ones_are_not() {
    let net = TestNet::new("conn_idle");
    let client = net.pod("client");
    let server = net.pod("server");
    // 3306 is an opaque port: no detection, straight to the copy loop.
    let _echo = server.spawn_echo_server(3306);
    let proxy = client.mesh_with(&[], &["--tcp-idle-timeout", "2s"]).await;
    let target = server.addr4(3306);
    let before = proxy.metrics().await;

    let opened = Instant::now();
    let mut silent = client.connect(target).await.expect("silent connection");
    let mut busy = client.connect(target).await.expect("busy connection");

    // Bytes every 500 ms for 4 s keep one open while the other is closed.
    let keep_busy = async {
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let message = format!("tick {i}");
            let reply = within(WAIT, "a busy echo", exchange(&mut busy, message.as_bytes()))
                .await
                .unwrap_or_else(|e| panic!("busy connection, tick {i}: {e}"));
            assert_eq!(reply, message.as_bytes());
        }
    };
    let closed_silent = async {
        assert_closed_without_data(&mut silent, "the silent connection").await;
        opened.elapsed()
    };
    let ((), silent_after) = tokio::join!(keep_busy, closed_silent);
    assert!(
        silent_after >= Duration::from_millis(1900) && silent_after < Duration::from_secs(3),
        "the silent connection closed after {silent_after:?}: expected the 2 s idle timeout"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        metrics.since(&before, ERRORS, OUTBOUND_IDLE),
        1.0,
        "only the silent one timed out\n{metrics}"
    );

    // Still open after 4 s of traffic; once it goes quiet, it closes too.
    let reply = within(WAIT, "a last echo", exchange(&mut busy, b"still here"))
        .await
        .expect("the busy connection is still open");
    assert_eq!(reply, b"still here");
    let quiet = Instant::now();
    assert_closed_without_data(&mut busy, "the busy connection gone quiet").await;
    let quiet_after = quiet.elapsed();
    assert!(
        quiet_after >= Duration::from_millis(1900) && quiet_after < Duration::from_secs(3),
        "closed {quiet_after:?} after its last byte: expected the 2 s idle timeout"
    );
    // The idle timeout is counted before the connection's metrics end:
    // wait for both, or the second close may not be counted yet.
    let after = proxy
        .wait_metrics("two idle timeouts and both connections closed", |m| {
            m.since(&before, ERRORS, OUTBOUND_IDLE) >= 2.0
                && m.since(&before, CLOSED, OUTBOUND) >= 2.0
        })
        .await;
    assert_eq!(after.since(&before, ERRORS, OUTBOUND_IDLE), 2.0, "{after}");
    assert_eq!(after.since(&before, CLOSED, OUTBOUND), 2.0, "{after}");
}

#[tokio::test]
async fn an_upgraded_tunnel_keeps_its_slot_until_it_closes_and_closes_when_idle() {
    let net = TestNet::new("conn_tunnel");
    let client = net.pod("client");
    let server = net.pod("server");
    let _ws = server.spawn_ws_echo_server(8080);
    let proxy = server
        .mesh_with(&[], &["--max-connections", "2", "--tcp-idle-timeout", "2s"])
        .await;
    let target = server.addr4(8080);
    let before = proxy.metrics().await;

    // The server's inbound proxy handles the upgrade: after the 101 its HTTP
    // connection is over, but the tunnel holds the socket, and its slot.
    let mut ws = within(
        WAIT,
        "the WebSocket upgrade",
        client.ws_connect(target, "/"),
    )
    .await
    .expect("WebSocket upgrade through the server's inbound proxy");
    let hello = Message::text("hello");
    let reply = within(WAIT, "the echo", ws_round_trip(&mut ws, hello.clone()))
        .await
        .expect("echo through the tunnel");
    assert_eq!(reply, hello);
    let last_frame = Instant::now();

    // Slot 2 of 2 for a silent connection; a third connection is refused.
    let mut second = open_silent(&client, target, 1).await;
    let mut third = open_silent(&client, target, 1).await;
    assert_eq!(
        third.count_reset().await,
        1,
        "the tunnel still holds a slot"
    );
    assert_eq!(second.count_reset().await, 0);

    // No frame for 2 s: the proxy closes the tunnel.
    let end = within(WAIT, "the idle tunnel to close", ws.next()).await;
    let closed_after = last_frame.elapsed();
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "the tunnel ended without data: {end:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(1900) && closed_after < Duration::from_secs(3),
        "tunnel closed {closed_after:?} after its last frame: expected the 2 s idle timeout"
    );

    // Its slot came back: a new connection is accepted.
    let mut after = open_silent(&client, target, 1).await;
    assert_eq!(
        after.count_reset().await,
        0,
        "the tunnel's slot was released"
    );
    let metrics = proxy
        .wait_metrics("the silent connection's idle timeout", |m| {
            m.since(&before, ERRORS, INBOUND_IDLE) >= 1.0
        })
        .await;
    assert_eq!(
        metrics.since(&before, REFUSED, INBOUND_LIMIT),
        1.0,
        "only the third was refused\n{metrics}"
    );
}
