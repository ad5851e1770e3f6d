//! Which way a connection crosses the pod boundary. Every layer labels its
//! work with it (listeners, HTTP, metrics), so it lives below all of them.

/// Which way a connection crosses the pod boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The app in this pod is the client.
    Outbound,
    /// The app in this pod is the server.
    Inbound,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
