//! WebSocket through the mesh: a client in pod `a` upgrades an HTTP/1.1
//! connection to the echo app in pod `b`, through a's outbound and b's
//! inbound proxy. Both proxies handle it as HTTP (they see the `Upgrade`),
//! and after the 101 the frames flow both ways untouched until the close
//! handshake completes.

use futures_util::StreamExt;
use remora_e2e::metrics::OPENED;
use remora_e2e::ws::ws_round_trip;
use remora_e2e::{within, TestNet, WAIT};
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
