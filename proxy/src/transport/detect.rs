//! Protocol detection: reads the client's first bytes, with a bounded wait,
//! and names the protocol. The bytes read are handed back so that nothing is
//! lost: the caller replays them to whatever handles the connection.
//!
//! Detection never decides routing by itself; it only says what the client
//! speaks. Ports known to speak first skip it (see `Config::opaque_ports`).

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest HTTP/1 request line detection waits for. A longer first line
/// is treated as opaque TCP, which still works, just without HTTP features.
const MAX_REQUEST_LINE: usize = 8 * 1024;

const HTTP1_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// What the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Protocol {
    Http1,
    H2,
    Tls,
    Opaque,
}

impl Protocol {
    /// The metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of detection.
#[derive(Debug)]
pub(crate) struct Detected {
    pub(crate) protocol: Protocol,
    /// Everything read from the client so far; must be replayed upstream.
    pub(crate) prefix: Bytes,
    /// The client sent too little before the timeout.
    pub(crate) timed_out: bool,
}

/// Reads from `io` until the protocol is known, the client stops sending
/// (EOF), or `timeout` passes. An I/O error is returned as is.
pub(crate) async fn detect<I>(io: &mut I, timeout: Duration) -> std::io::Result<Detected>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(512);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(protocol) = classify(&buf) {
            return Ok(Detected {
                protocol,
                prefix: buf.freeze(),
                timed_out: false,
            });
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len());
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) => {
                // The client half-closed before we could tell: forward what
                // it sent as opaque bytes.
                return Ok(Detected {
                    protocol: Protocol::Opaque,
                    prefix: buf.freeze(),
                    timed_out: false,
                });
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => {
                return Ok(Detected {
                    protocol: Protocol::Opaque,
                    prefix: buf.freeze(),
                    timed_out: true,
                })
            }
        }
    }
}

/// Names the protocol from the first bytes, or `None` when more bytes are
/// needed to tell.
pub(crate) fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    // TLS record header: handshake (22), then a 3.x legacy version.
    if buf[0] == 0x16 {
        return match buf {
            [_, 0x03, minor, ..] if *minor <= 0x04 => Some(Protocol::Tls),
            [_] | [_, 0x03] => None,
            _ => Some(Protocol::Opaque),
        };
    }
    if buf[0] == b'P' && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
        return (buf.len() >= H2_PREFACE.len()).then_some(Protocol::H2);
    }
    let mut could_be_method = false;
    for method in HTTP1_METHODS {
        if buf.starts_with(method) {
            return classify_request_line(buf);
        }
        could_be_method |= method.starts_with(buf);
    }
    if could_be_method {
        None
    } else {
        Some(Protocol::Opaque)
    }
}

/// `buf` starts with a method and a space: it is HTTP/1 if the first line
/// ends in an HTTP/1 version.
fn classify_request_line(buf: &[u8]) -> Option<Protocol> {
    let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
        return (buf.len() >= MAX_REQUEST_LINE).then_some(Protocol::Opaque);
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
        Some(Protocol::Http1)
    } else {
        Some(Protocol::Opaque)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_http1_request_lines() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"POST /x HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /still-reading"), None);
        assert_eq!(classify(b"GET key\r\n"), Some(Protocol::Opaque));
    }

    #[test]
    fn classifies_h2_preface() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::H2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(classify(b"PRIVMSG #rust"), Some(Protocol::Opaque));
    }

    #[test]
    fn classifies_tls_client_hello() {
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Protocol::Tls)
        );
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(&[0x16, 0x09, 0x01]), Some(Protocol::Opaque));
    }

    #[test]
    fn everything_else_is_opaque() {
        assert_eq!(classify(b"\xff\xff\xff"), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Protocol::Opaque));
        let long = [b"GET /".as_slice(), &[b'a'; MAX_REQUEST_LINE]].concat();
        assert_eq!(classify(&long), Some(Protocol::Opaque));
    }

    #[tokio::test]
    async fn detection_keeps_every_byte() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut client, &request[..5])
            .await
            .unwrap();
        let task = tokio::spawn(async move { detect(&mut server, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        tokio::io::AsyncWriteExt::write_all(&mut client, &request[5..])
            .await
            .unwrap();
        let detected = task.await.unwrap().unwrap();
        assert_eq!(detected.protocol, Protocol::Http1);
        assert!(request.starts_with(&detected.prefix));
        assert!(detected.prefix.len() > 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out_as_opaque() {
        let (_client, mut server) = tokio::io::duplex(64);
        let detected = detect(&mut server, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(detected.protocol, Protocol::Opaque);
        assert!(detected.timed_out);
        assert!(detected.prefix.is_empty());
    }

    #[tokio::test]
    async fn eof_before_a_verdict_is_opaque_with_the_bytes() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GE")
            .await
            .unwrap();
        drop(client);
        let detected = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(detected.protocol, Protocol::Opaque);
        assert_eq!(&detected.prefix[..], b"GE");
        assert!(!detected.timed_out);
    }
}
