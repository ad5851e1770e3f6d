//! A WebSocket echo app and client for pods, on `tokio-tungstenite` (plain
//! `ws://`, no TLS: mesh TLS is the proxy's job, not the app's).
//!
//! This module owns the app side only; what the mesh does to the upgrade and
//! the frames is asserted in `tests/websocket.rs`.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::apps::App;
use crate::netns::Pod;

/// A WebSocket client connection made from inside a pod.
pub type WsClient = WebSocketStream<TcpStream>;

impl Pod {
    /// A WebSocket echo app on `port`: after the upgrade it sends back every
    /// text and binary message as it came, and answers the client's close.
    pub fn spawn_ws_echo_server(&self, port: u16) -> App {
        self.spawn_server(port, |stream: TcpStream| async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            // Keep polling after a Close: tungstenite queues the close reply
            // and flushes it on the next poll, completing the handshake.
            while let Some(Ok(message)) = ws.next().await {
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    return;
                }
            }
        })
    }

    /// Opens `ws://addr/path` over a socket created inside this pod: the
    /// HTTP/1.1 `Upgrade: websocket` handshake, then frames.
    pub async fn ws_connect(&self, addr: SocketAddr, path: &str) -> tungstenite::Result<WsClient> {
        let stream = self.connect(addr).await?;
        let (ws, _response) =
            tokio_tungstenite::client_async(format!("ws://{addr}{path}"), stream).await?;
        Ok(ws)
    }
}

/// Sends `message` and returns the next data message (text or binary) that
/// comes back, skipping pings and pongs.
pub async fn ws_round_trip(ws: &mut WsClient, message: Message) -> tungstenite::Result<Message> {
    ws.send(message).await?;
    loop {
        match ws.next().await {
            Some(Ok(reply)) if reply.is_text() || reply.is_binary() => return Ok(reply),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => {
                return Err(tungstenite::Error::Io(std::io::Error::other(format!(
                    "expected an echoed data message, got {other:?}"
                ))))
            }
            Some(Err(e)) => return Err(e),
            None => return Err(tungstenite::Error::ConnectionClosed),
        }
    }
}
