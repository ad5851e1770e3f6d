//! The one connector: every upstream connection the proxy makes (pooled
//! HTTP, opaque TCP, active health checks) is dialed here.
//!
//! A [`Dial`] says where to go, from which source address, how long to
//! wait, and which identity the peer must prove. Plaintext is all there is
//! until mesh mTLS lands; a dial that expects an identity then gets a TLS
//! session whose peer certificate is checked against it, and the
//! [`Connection`] records the identity the peer proved.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Identity;
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
}

/// Dials upstream connections.
#[derive(Debug, Default)]
pub(crate) struct Connector {
    _private: (),
}

impl Connector {
    /// A connector that dials plaintext TCP only.
    pub(crate) fn plaintext() -> Self {
        Connector { _private: () }
    }

    /// Connects as `dial` says, within its timeout.
    pub(crate) async fn connect(&self, dial: &Dial) -> io::Result<Connection> {
        let stream = net::connect(dial.addr, dial.source, dial.timeout).await?;
        Ok(Connection {
            io: Io::Plain(stream),
            peer_identity: None,
        })
    }
}

/// A connection made by the [`Connector`].
#[derive(Debug)]
pub(crate) struct Connection {
    io: Io,
    /// The identity the peer proved, when the connection is mesh mTLS.
    #[allow(dead_code)] // Set and read once the connector speaks mTLS.
    peer_identity: Option<Identity>,
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
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
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
