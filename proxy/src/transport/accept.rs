//! The acceptor step: what every captured connection goes through after
//! its original destination is known and before its protocol is detected.
//! It is where mesh TLS will be terminated on the inbound listener; the
//! identity the client proved then travels with the connection to the
//! HTTP layer and policy. Today every connection is plaintext and carries
//! no identity.

use tokio::net::TcpStream;

use super::Identity;

/// A connection as the rest of the proxy sees it once accepted.
#[derive(Debug)]
pub(crate) struct Accepted<I> {
    pub(crate) io: I,
    /// The identity the client proved (mesh mTLS), if any.
    pub(crate) peer_identity: Option<Identity>,
}

/// Turns accepted sockets into [`Accepted`] connections.
#[derive(Debug, Default)]
pub(crate) struct Acceptor {
    _private: (),
}

impl Acceptor {
    pub(crate) fn plaintext() -> Self {
        Acceptor { _private: () }
    }

    /// Accepts `stream` as plaintext with no identity.
    pub(crate) fn accept(&self, stream: TcpStream) -> Accepted<TcpStream> {
        Accepted {
            io: stream,
            peer_identity: None,
        }
    }
}
