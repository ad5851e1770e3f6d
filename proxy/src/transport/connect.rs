//! The one connector: every upstream connection the proxy makes (pooled
//! HTTP, opaque TCP, active health checks) is dialed here.
//!
//! A [`Dial`] says where to go, from which source address, how long to
//! wait, which identity the peer must prove and what the connection will
//! carry. A dial that expects an identity gets mesh mTLS (`tls`): the
//! peer's chain is checked against the trust bundle, its SPIFFE identity
//! against the expected one, and a mismatch fails the dial before a byte
//! is sent. Other dials are plaintext TCP.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::tls::{peer_identity, Inner, MeshTls, PeerIdentityError};
use super::Identity;
use crate::direction::Direction;
use crate::metrics::{HandshakeResult, Metrics};
use crate::net;

/// One dial: the target and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Dial {
    pub(crate) addr: SocketAddr,
    /// The local address to bind, if any (the inbound forward leaves from
    /// the loopback source the capture rules return).
    pub(crate) source: Option<IpAddr>,
    pub(crate) timeout: Duration,
    /// The identity the peer must prove; `None` for a plaintext peer.
    pub(crate) identity: Option<Identity>,
    /// What the connection carries (the ALPN of a mesh connection).
    pub(crate) inner: Inner,
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the endpoint expects mesh identity {expected} but this proxy has no mesh identity (start it with --ca-addr)")]
    NoMeshTls { expected: Identity },
    #[error("this proxy holds no valid certificate yet (or it expired); mTLS to {expected} is not possible")]
    NoCertificate { expected: Identity },
    #[error("mTLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("{0}")]
    PeerIdentity(PeerIdentityError),
    #[error("the endpoint proved identity {actual}, not the expected {expected}")]
    IdentityMismatch {
        expected: Identity,
        actual: Identity,
    },
}

impl ConnectError {
    /// A peer that proved the wrong identity must not be tried again.
    pub(crate) fn is_identity_mismatch(&self) -> bool {
        matches!(
            self,
            ConnectError::IdentityMismatch { .. } | ConnectError::PeerIdentity(_)
        )
    }
}

/// Dials upstream connections.
#[derive(Debug, Default)]
pub(crate) struct Connector {
    tls: Option<Arc<MeshTls>>,
    metrics: Option<Metrics>,
}

impl Connector {
    /// A connector that dials plaintext TCP only.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn plaintext() -> Self {
        Connector::default()
    }

    /// A connector that speaks mesh mTLS to endpoints with an identity.
    pub(crate) fn mesh(tls: Option<Arc<MeshTls>>, metrics: Metrics) -> Self {
        Connector {
            tls,
            metrics: Some(metrics),
        }
    }

    /// Connects as `dial` says, within its timeout (TCP and TLS together).
    pub(crate) async fn connect(&self, dial: &Dial) -> Result<Connection, ConnectError> {
        let Some(expected) = &dial.identity else {
            let stream = net::connect(dial.addr, dial.source, dial.timeout).await?;
            return Ok(Connection {
                io: Io::Plain(stream),
                peer_identity: None,
            });
        };
        let result = tokio::time::timeout(dial.timeout, self.connect_mesh(dial, expected))
            .await
            .unwrap_or(Err(ConnectError::Timeout(dial.timeout)));
        if let Some(metrics) = &self.metrics {
            let outcome = match &result {
                Ok(_) => HandshakeResult::Ok,
                Err(ConnectError::Io(_)) => return result,
                Err(ConnectError::Timeout(_)) => HandshakeResult::Timeout,
                Err(ConnectError::NoMeshTls { .. } | ConnectError::NoCertificate { .. }) => {
                    HandshakeResult::NoCertificate
                }
                Err(ConnectError::Handshake(_)) => HandshakeResult::Failed,
                Err(ConnectError::PeerIdentity(_) | ConnectError::IdentityMismatch { .. }) => {
                    HandshakeResult::IdentityMismatch
                }
            };
            metrics.tls_handshake(Direction::Outbound, outcome);
        }
        result
    }

    async fn connect_mesh(
        &self,
        dial: &Dial,
        expected: &Identity,
    ) -> Result<Connection, ConnectError> {
        let tls = self.tls.as_ref().ok_or_else(|| ConnectError::NoMeshTls {
            expected: expected.clone(),
        })?;
        if !tls.has_certificate() {
            return Err(ConnectError::NoCertificate {
                expected: expected.clone(),
            });
        }
        let stream = net::connect(dial.addr, dial.source, dial.timeout).await?;
        let connector = tokio_rustls::TlsConnector::from(tls.client(dial.inner));
        let stream = connector
            .connect(ServerName::IpAddress(dial.addr.ip().into()), stream)
            .await
            .map_err(ConnectError::Handshake)?;
        let actual = peer_identity(stream.get_ref().1.peer_certificates())
            .map_err(ConnectError::PeerIdentity)?;
        if &actual != expected {
            return Err(ConnectError::IdentityMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        Ok(Connection {
            io: Io::Tls(Box::new(stream)),
            peer_identity: Some(actual),
        })
    }
}

/// A connection made by the [`Connector`].
#[derive(Debug)]
pub(crate) struct Connection {
    io: Io,
    /// The identity the peer proved, when the connection is mesh mTLS.
    peer_identity: Option<Identity>,
}

impl Connection {
    /// The identity the peer proved, when the connection is mesh mTLS.
    #[allow(dead_code)] // For logs and tests; the dial already checked it.
    pub(crate) fn peer_identity(&self) -> Option<&Identity> {
        self.peer_identity.as_ref()
    }
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
