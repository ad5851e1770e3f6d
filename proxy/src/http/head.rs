//! The start of a downstream HTTP connection, before hyper has a request:
//! on a port the config declares as HTTP, the client must speak HTTP, so a
//! head that is late, too long or malformed is answered as HTTP (408, 431,
//! 414, 400 on the wire), never handed on as opaque bytes.
//!
//! A declared port skips protocol detection: [`sniff`] only tells the
//! HTTP/2 preface from anything else (HTTP/1, for hyper to parse or refuse),
//! bounded by `http.requestHeadersTimeout`. A client silent past that gets
//! [`write_timeout`]'s 408, as does one whose head hyper's own header timer
//! cuts off midway (hyper would close without a word).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::transport::detect::{Detected, Protocol, H2_PREFACE};

/// How long the proxy tries to deliver its 408 to a client that is not
/// reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads from a client on a declared HTTP port until its bytes are the
/// HTTP/2 preface or cannot be, or the client closes, or `timeout` passes
/// (`timed_out`, with whatever came). Never opaque: a declared port gets
/// HTTP/1 unless the client sent the preface.
pub(crate) async fn sniff<I>(io: &mut I, timeout: Duration) -> std::io::Result<Detected>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(512);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // A TLS ClientHello is the app's own TLS: it passes through as
        // bytes (the proxy cannot read it), as on an undeclared port.
        if let [0x16, 0x03, ..] = buf[..] {
            return Ok(detected(Protocol::Tls, buf, false));
        }
        if buf.len() == 1 && buf[0] == 0x16 {
            // One more byte tells a ClientHello from garbage.
        } else if !buf.is_empty() {
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] {
                return Ok(detected(Protocol::Http1, buf, false));
            }
            if n == H2_PREFACE.len() {
                return Ok(detected(Protocol::H2, buf, false));
            }
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Ok(detected(Protocol::Http1, buf, false)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => return Ok(detected(Protocol::Http1, buf, true)),
        }
    }
}

fn detected(protocol: Protocol, buf: BytesMut, timed_out: bool) -> Detected {
    Detected {
        protocol,
        prefix: buf.freeze(),
        timed_out,
    }
}

/// Writes a 408 for a request head that did not arrive in time and closes
/// the connection; best effort, bounded in time.
pub(crate) async fn write_timeout<I>(io: &mut I)
where
    I: AsyncWrite + Unpin,
{
    let body =
        "header_timeout: the request head did not arrive within http.requestHeadersTimeout\n";
    let response = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nremora-error: header_timeout\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        io.write_all(response.as_bytes()).await?;
        io.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|elapsed| Err(elapsed.into()))
    {
        tracing::debug!(error = %e, "could not deliver the 408");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed(bytes: &[u8]) -> Detected {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(bytes).await.unwrap();
        sniff(&mut server, Duration::from_secs(5)).await.unwrap()
    }

    #[tokio::test]
    async fn http1_is_known_from_its_first_byte() {
        let d = sniffed(b"G").await;
        assert_eq!(
            (d.protocol, &d.prefix[..], d.timed_out),
            (Protocol::Http1, &b"G"[..], false)
        );
        // Even what detection would call opaque: hyper answers it with 400.
        let d = sniffed(b"\x16\x09\x01garbage").await;
        assert_eq!(d.protocol, Protocol::Http1);
        // But the app's own TLS passes through as bytes.
        let d = sniffed(b"\x16\x03\x01\x02\x00").await;
        assert_eq!((d.protocol, d.prefix.len()), (Protocol::Tls, 5));
        // `P` could still be the preface; `PO` cannot.
        assert_eq!(
            sniffed(b"POST / HTTP/1.1\r\n").await.protocol,
            Protocol::Http1
        );
        assert_eq!(
            sniffed(b"PRI * HTTP/1.1\r\n").await.protocol,
            Protocol::Http1
        );
    }

    #[tokio::test]
    async fn the_h2_preface_is_h2_and_kept() {
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let d = sniffed(&bytes).await;
        assert_eq!(d.protocol, Protocol::H2);
        assert!(bytes.starts_with(&d.prefix));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out_with_what_it_sent() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HT").await.unwrap();
        let d = sniff(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(d.timed_out);
        assert_eq!(&d.prefix[..], b"PRI * HT");
        let (_client, mut server) = tokio::io::duplex(64);
        let d = sniff(&mut server, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(d.timed_out && d.prefix.is_empty());
    }

    #[tokio::test]
    async fn the_408_is_a_whole_response() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        write_timeout(&mut server).await;
        drop(server);
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        let (head, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
    }
}
