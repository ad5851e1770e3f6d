//! The transport seam: every upstream dial goes through one connector
//! (`connect`), and every accepted connection through one acceptor step
//! (`accept`). That is where mesh mTLS lives (`tls`): the connector wraps
//! a dial to a meshed endpoint in TLS and checks the peer's identity, and
//! the acceptor terminates the mesh's TLS and says who the client is.
//! Every caller (pooled HTTP, opaque TCP, health checks, the listeners)
//! goes through them, with the expected and the proven identity in their
//! types.

mod accept;
mod connect;
pub(crate) mod detect;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

pub(crate) use accept::{Accepted, Acceptor, Terminated};
pub(crate) use connect::{ConnectError, Connection, Connector, Dial};
pub(crate) use tls::{Inner, MeshTls};

/// A workload identity: a SPIFFE ID,
/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Identity(Arc<str>);

impl Identity {
    pub(crate) fn new(id: &str) -> Self {
        Identity(Arc::from(id))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The ID's text, shared (a label value, say) without a copy.
    pub(crate) fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An endpoint as the pool dials it: its address and the identity it must
/// prove (none for a plaintext peer).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) identity: Option<Identity>,
}

impl Peer {
    pub(crate) fn plaintext(addr: SocketAddr) -> Self {
        Peer {
            addr,
            identity: None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.identity {
            Some(id) => write!(f, "{} ({id})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}
