//! The acceptor step: what every captured connection goes through after
//! its original destination is known and before it is handled.
//!
//! On the inbound listener a connection that opens with a ClientHello
//! offering the mesh's ALPN is terminated here: the client's certificate
//! is checked against the trust bundle, and the identity it proves travels
//! with the connection to the HTTP layer and policy. A ClientHello without
//! the mesh ALPN is the app's own TLS and is handed back untouched, every
//! byte read so far included. Plaintext is `accept`'s: no identity.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::StartHandshake;

use super::tls::{peer_identity, Inner, MeshTls};
use super::Identity;
use crate::direction::Direction;
use crate::metrics::{HandshakeResult, Metrics};

/// The most a ClientHello may take before the proxy gives up on it: a TLS
/// record is at most 16 KiB plus its header.
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5 + 256;

/// A connection as the rest of the proxy sees it once accepted.
#[derive(Debug)]
pub(crate) struct Accepted<I> {
    pub(crate) io: I,
    /// The identity the client proved (mesh mTLS), if any.
    pub(crate) peer_identity: Option<Identity>,
}

/// What became of a connection that opened with a ClientHello.
#[derive(Debug)]
pub(crate) enum Terminated {
    /// Mesh mTLS: the client proved `identity`, and speaks `inner` inside.
    Mesh {
        io: Box<TlsStream<TcpStream>>,
        identity: Identity,
        inner: Inner,
    },
    /// Not the mesh's TLS: the bytes read so far, then the stream.
    NotMesh { prefix: Bytes, io: TcpStream },
    /// The handshake failed or took too long; the connection is closed.
    Failed(String),
}

/// Turns accepted sockets into [`Accepted`] connections.
#[derive(Debug, Default)]
pub(crate) struct Acceptor {
    tls: Option<Arc<MeshTls>>,
    metrics: Option<Metrics>,
}

impl Acceptor {
    /// An acceptor that terminates mesh mTLS on inbound connections.
    pub(crate) fn mesh(tls: Option<Arc<MeshTls>>, metrics: Metrics) -> Self {
        Acceptor {
            tls,
            metrics: Some(metrics),
        }
    }

    /// Whether this proxy takes part in mesh mTLS at all.
    pub(crate) fn is_mesh(&self) -> bool {
        self.tls.is_some()
    }

    /// Accepts `stream` as plaintext with no identity.
    pub(crate) fn accept(&self, stream: TcpStream) -> Accepted<TcpStream> {
        Accepted {
            io: stream,
            peer_identity: None,
        }
    }

    /// Reads the ClientHello that `prefix` starts, and terminates the
    /// connection if it is the mesh's, within `timeout`.
    pub(crate) async fn terminate(
        &self,
        stream: TcpStream,
        prefix: Bytes,
        timeout: Duration,
    ) -> Terminated {
        let Some(tls) = &self.tls else {
            return Terminated::NotMesh { prefix, io: stream };
        };
        let mut holder = Some(stream);
        let mut seen = BytesMut::from(&prefix[..]);
        let outcome = tokio::time::timeout(timeout, async {
            let stream = holder.as_mut().ok_or("no stream")?;
            let hello = read_client_hello(stream, &mut seen).await?;
            let Some(accepted) = hello else {
                return Ok(None);
            };
            Ok::<_, &'static str>(Some(accepted))
        })
        .await;
        let accepted = match outcome {
            Ok(Ok(Some(accepted))) => accepted,
            // Not a ClientHello rustls can read, or not the mesh's: the
            // bytes go on as they came.
            Ok(Ok(None)) => {
                return match holder.take() {
                    Some(io) => Terminated::NotMesh {
                        prefix: seen.freeze(),
                        io,
                    },
                    None => Terminated::Failed("connection lost".into()),
                }
            }
            Ok(Err(why)) => {
                self.count(HandshakeResult::Failed);
                return Terminated::Failed(why.into());
            }
            Err(_) => {
                self.count(HandshakeResult::Timeout);
                return Terminated::Failed(format!("no ClientHello within {timeout:?}"));
            }
        };
        let Some(stream) = holder.take() else {
            return Terminated::Failed("connection lost".into());
        };
        let handshake = StartHandshake::from_parts(accepted, stream).into_stream(tls.server());
        let io = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                self.count(HandshakeResult::Failed);
                return Terminated::Failed(format!("mTLS handshake failed: {e}"));
            }
            Err(_) => {
                self.count(HandshakeResult::Timeout);
                return Terminated::Failed(format!("mTLS handshake not done within {timeout:?}"));
            }
        };
        let (_, session) = io.get_ref();
        let inner = session.alpn_protocol().and_then(Inner::from_alpn);
        let identity = peer_identity(session.peer_certificates());
        match (inner, identity) {
            (Some(inner), Ok(identity)) => {
                self.count(HandshakeResult::Ok);
                Terminated::Mesh {
                    io: Box::new(io),
                    identity,
                    inner,
                }
            }
            (None, _) => {
                self.count(HandshakeResult::Failed);
                Terminated::Failed("no mesh ALPN was agreed".into())
            }
            (_, Err(e)) => {
                self.count(HandshakeResult::IdentityMismatch);
                Terminated::Failed(e.to_string())
            }
        }
    }

    fn count(&self, result: HandshakeResult) {
        if let Some(metrics) = &self.metrics {
            metrics.tls_handshake(Direction::Inbound, result);
        }
    }
}

/// Reads until rustls has a whole ClientHello, keeping every byte in
/// `seen`. `Ok(None)`: it is not a ClientHello rustls can parse, or it
/// offers none of the mesh's ALPN ids (the app's own TLS).
async fn read_client_hello(
    stream: &mut TcpStream,
    seen: &mut BytesMut,
) -> Result<Option<rustls::server::Accepted>, &'static str> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < seen.len() {
            let mut rest = &seen[fed..];
            match acceptor.read_tls(&mut rest as &mut dyn Read) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(_) => return Ok(None),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let mesh = accepted.client_hello().alpn().is_some_and(|mut offered| {
                    offered.any(|alpn| Inner::from_alpn(alpn).is_some())
                });
                return Ok(mesh.then_some(accepted));
            }
            Ok(None) => {}
            Err(_) => return Ok(None),
        }
        if seen.len() >= MAX_CLIENT_HELLO {
            return Ok(None);
        }
        seen.reserve(4096);
        match stream.read_buf(seen).await {
            Ok(0) => return Err("the client closed before its ClientHello was complete"),
            Ok(_) => {}
            Err(_) => return Err("reading the ClientHello failed"),
        }
    }
}
