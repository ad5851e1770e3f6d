//! WebSocket through the mesh: a client in pod `a` upgrades an HTTP/1.1
//! connection to the echo app in pod `b`, through a's outbound and b's
//! inbound proxy. Both detect HTTP/1; b's inbound proxy handles the
//! `Upgrade` itself, while a's outbound proxy, which has no config for b's
//! address, passes the bytes through. The drain tests route a service
//! address through a's config so that a handles the upgrade too. After the
//! 101 the frames flow both ways untouched until the close handshake.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use remora_e2e::http_apps::REQUESTS;
use remora_e2e::mesh_config::ConfigFile;
use remora_e2e::metrics::OPENED;
use remora_e2e::ws::{ws_round_trip, WsClient};
use remora_e2e::{within, App, Pod, ProxyHandle, TestNet, WAIT};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};

#[tokio::test]
async fn websocket_echo_through_both_proxies_carries_text_binary_1mib_and_close() {
    let net = TestNet::new("ws_echo");
    let a = net.pod("a");
    let b = net.pod("b");
    let app = b.spawn_ws_echo_server(8080);
    let proxy_a = a.mesh().await;
    let proxy_b = b.mesh().await;
    let (a0, b0) = (proxy_a.metrics().await, proxy_b.metrics().await);

    let mut ws = within(
        WAIT,
        "the WebSocket upgrade",
        a.ws_connect(b.addr4(8080), "/chat"),
    )
    .await
    .unwrap_or_else(|e| panic!("WebSocket upgrade from a to b:8080: {e}"));

    let text = Message::text("hello, ünïcode and all");
    let reply = within(WAIT, "the text echo", ws_round_trip(&mut ws, text.clone()))
        .await
        .expect("text echo");
    assert_eq!(reply, text, "text message echoed");

    let small: Vec<u8> = (0..=255u8).collect();
    let binary = Message::binary(Bytes::from(small));
    let reply = within(
        WAIT,
        "the binary echo",
        ws_round_trip(&mut ws, binary.clone()),
    )
    .await
    .expect("binary echo");
    assert_eq!(reply, binary, "binary message echoed");

    // 1 MiB in one message: larger than any socket buffer and than hyper's
    // read buffer, so the upgraded connection must really be spliced.
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let reply = within(
        WAIT,
        "the 1 MiB echo",
        ws_round_trip(&mut ws, Message::binary(Bytes::from(big.clone()))),
    )
    .await
    .expect("1 MiB binary echo");
    match reply {
        Message::Binary(data) => {
            assert_eq!(data.len(), big.len(), "1 MiB message length");
            assert!(data == big, "1 MiB message content intact");
        }
        other => panic!("expected the 1 MiB binary echo, got {other:?}"),
    }

    // Close handshake: our Close goes to the app, its Close comes back, and
    // then the connection ends.
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    within(WAIT, "sending Close", ws.close(Some(bye)))
        .await
        .expect("send Close");
    let answer = within(WAIT, "the app's Close", ws.next()).await;
    match answer {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(
                frame.code,
                CloseCode::Normal,
                "the app answers our close code"
            )
        }
        other => panic!("expected the app's Close frame, got {other:?}"),
    }
    let end = within(WAIT, "the end of the connection", ws.next()).await;
    assert!(end.is_none(), "nothing after the close handshake: {end:?}");

    assert_eq!(
        app.peers()
            .iter()
            .map(|p| p.ip().to_string())
            .collect::<Vec<_>>(),
        ["127.0.0.6"],
        "b's app is reached by b's inbound proxy"
    );
    let http1_out = &[("direction", "outbound"), ("protocol", "http1")];
    let http1_in = &[("direction", "inbound"), ("protocol", "http1")];
    let a1 = proxy_a.metrics().await;
    let b1 = proxy_b.metrics().await;
    assert_eq!(
        a1.since(&a0, OPENED, http1_out),
        1.0,
        "a's proxy handled the upgrade as HTTP/1, not as opaque bytes\n{a1}"
    );
    assert!(
        b1.since(&b0, OPENED, http1_in) >= 1.0,
        "b's proxy handled the upgrade as HTTP/1, not as opaque bytes\n{b1}"
    );
}

/// New connections through a drained proxy must be refused. Allows the
/// proxy a moment to close its listeners after it is told to drain.
async fn assert_new_connections_refused(client: &Pod, target: SocketAddr) {
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

/// The WebSocket service's virtual address in a's mesh config: a's proxy
/// routes the upgrade request as HTTP (a destination its config does not
/// know would pass through as opaque bytes, and never be upgraded there).
const WS_VIP: &str = "10.96.0.40:80";

/// Pods `a` (client) and `b` (WebSocket echo app), both meshed; a's proxy
/// runs on a config that routes [`WS_VIP`] to b's app, with `proxy_args`.
/// Returns a WebSocket from a to the VIP that echoed once.
async fn ws_through_both(
    net: &TestNet,
    test: &str,
    proxy_args: &[&str],
) -> (Pod, App, ProxyHandle, ProxyHandle, WsClient, ConfigFile) {
    let a = net.pod("a");
    let b = net.pod("b");
    let app = b.spawn_ws_echo_server(8080);
    let vip: SocketAddr = WS_VIP.parse().expect("WS_VIP");
    let config = ConfigFile::new(test);
    config.write_json(&json!({
        "version": "ws-v1",
        "outbound": { "services": [{
            "name": "ws.default",
            "addresses": [vip.ip().to_string()],
            "ports": [{ "port": vip.port(), "protocol": "http", "backendRefs": [{ "name": "ws" }] }],
        }]},
        "backends": { "ws": { "endpoints": [{ "address": b.addr4(8080).to_string() }] } },
    }));
    let mut args = config.proxy_args().to_vec();
    args.extend_from_slice(proxy_args);
    let proxy_a = a.mesh_with(&[], &args).await;
    let proxy_b = b.mesh().await;
    let before = proxy_a.metrics().await;
    let mut ws = within(WAIT, "the WebSocket upgrade", a.ws_connect(vip, "/chat"))
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade from a to {vip}: {e}"));
    let routed = proxy_a
        .wait_metrics("the upgrade request routed to ws.default", |m| {
            m.since(&before, REQUESTS, &[("service", "ws.default")]) >= 1.0
        })
        .await;
    assert_eq!(
        routed.since(
            &before,
            REQUESTS,
            &[("service", "ws.default"), ("status", "101")]
        ),
        1.0,
        "a's proxy routed the upgrade as an HTTP request answered 101\n{routed}"
    );
    let hello = Message::text("before the drain");
    let reply = within(
        WAIT,
        "the echo before the drain",
        ws_round_trip(&mut ws, hello.clone()),
    )
    .await
    .expect("echo before the drain");
    assert_eq!(reply, hello);
    (a, app, proxy_a, proxy_b, ws, config)
}

#[tokio::test]
async fn a_websocket_outlives_a_drain_until_the_client_closes_it() {
    let net = TestNet::new("ws_drain");
    let (a, _app, mut proxy_a, _proxy_b, mut ws, _config) =
        ws_through_both(&net, "ws_drain", &[]).await;

    proxy_a.drain().await;
    assert_new_connections_refused(&a, WS_VIP.parse().expect("WS_VIP")).await;
    // Well after the drain started, the upgraded connection still carries
    // frames both ways, and the proxy waits for it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        let message = Message::text(format!("during the drain {i}"));
        let reply = within(
            WAIT,
            "an echo during the drain",
            ws_round_trip(&mut ws, message.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("echo {i} during the drain: {e}"));
        assert_eq!(reply, message, "echo {i} during the drain");
    }
    assert!(
        proxy_a.try_wait().is_none(),
        "the proxy exited while a WebSocket was still open"
    );

    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    within(WAIT, "sending Close", ws.close(Some(bye)))
        .await
        .expect("send Close");
    match within(WAIT, "the app's Close", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the app's Close frame during the drain, got {other:?}"),
    }
    drop(ws);
    assert_exits_zero(&mut proxy_a, WAIT, "after the WebSocket closed").await;
}

#[tokio::test]
async fn an_idle_websocket_is_closed_at_the_drain_deadline() {
    let net = TestNet::new("ws_drain_deadline");
    let (_a, _app, mut proxy_a, _proxy_b, mut ws, _config) =
        ws_through_both(&net, "ws_drain_deadline", &["--drain-deadline", "1s"]).await;

    let started = Instant::now();
    proxy_a.terminate();
    // The WebSocket stays idle; the proxy must end it at the deadline. Any
    // end will do (EOF, reset, or a Close frame), but no data.
    let end = within(WAIT, "the WebSocket ended by the drain deadline", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    let closed_after = started.elapsed();
    match end {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
        Some(Ok(message)) => panic!("expected the WebSocket to end, got {message:?}"),
    }
    assert!(
        closed_after >= Duration::from_millis(800),
        "the WebSocket was closed after {closed_after:?}, before the 1 s drain deadline"
    );
    assert_exits_zero(
        &mut proxy_a,
        Duration::from_secs(5),
        "after the drain deadline",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the proxy exited {:?} after SIGTERM; the deadline was 1 s",
        started.elapsed()
    );
}
