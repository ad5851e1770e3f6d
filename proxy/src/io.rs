//! Small I/O adapters used on every proxied connection: replaying the bytes
//! that detection read, counting bytes as they flow, and copying both ways.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::future::poll_fn;

use bytes::{Buf, Bytes, BytesMut};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose first reads return `prefix`, then the inner stream's bytes.
#[derive(Debug)]
pub(crate) struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub(crate) fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts the bytes read from and written to the inner stream as they flow,
/// so metrics are current even for long-lived connections.
#[derive(Debug)]
pub(crate) struct Counted<T> {
    inner: T,
    read: IntCounter,
    written: IntCounter,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T, read: IntCounter, written: IntCounter) -> Self {
        Counted {
            inner,
            read,
            written,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.inc_by(n as u64);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.written.inc_by(n as u64);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.written.inc_by(n as u64);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies bytes both ways until both sides are done, propagating each
/// side's end of stream as a half-close to the other. Returns the bytes
/// copied from `a` to `b` and from `b` to `a`.
///
/// Unlike `tokio::io::copy_bidirectional`, its buffers are allocated on the
/// first read and never zero-filled, so a connection that carries little
/// (most of them, most of the time) keeps little memory resident: only the
/// pages its bytes touched.
pub(crate) async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    buf_size: usize,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Pump::new(buf_size);
    let mut b_to_a = Pump::new(buf_size);
    poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, &mut *a, &mut *b)?;
        let backward = b_to_a.poll_copy(cx, &mut *b, &mut *a)?;
        match (forward, backward) {
            (Poll::Ready(ab), Poll::Ready(ba)) => Poll::Ready(Ok((ab, ba))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction of a copy.
#[derive(Debug)]
struct Pump {
    buf: BytesMut,
    size: usize,
    read_done: bool,
    done: bool,
    copied: u64,
}

impl Pump {
    fn new(size: usize) -> Self {
        Pump {
            buf: BytesMut::new(),
            size,
            read_done: false,
            done: false,
            copied: 0,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            while self.buf.has_remaining() {
                let n = ready(Pin::new(&mut *w).poll_write(cx, &self.buf))?;
                let Some(n) = n else { return Poll::Pending };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.buf.advance(n);
                self.copied += n as u64;
            }
            if self.read_done {
                if ready(Pin::new(&mut *w).poll_shutdown(cx))?.is_none() {
                    return Poll::Pending;
                }
                self.done = true;
                return Poll::Ready(Ok(self.copied));
            }
            // Emptied: reuse the same allocation (or make it on first use).
            self.buf.clear();
            self.buf.reserve(self.size);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *r), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing buffered is waiting: push out what was written.
                    if ready(Pin::new(&mut *w).poll_flush(cx))?.is_none() {
                        return Poll::Pending;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// `Poll<io::Result<T>>` as `io::Result<Option<T>>`, for `?` in poll loops.
fn ready<T>(poll: Poll<io::Result<T>>) -> io::Result<Option<T>> {
    match poll {
        Poll::Ready(Ok(t)) => Ok(Some(t)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = Rewind::new(Bytes::from_static(b"hello"), server);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn copy_carries_both_ways_and_half_closes() {
        let (mut client, mut proxy_down) = tokio::io::duplex(1024);
        let (mut proxy_up, mut server) = tokio::io::duplex(1024);
        let copy =
            tokio::spawn(
                async move { copy_bidirectional(&mut proxy_down, &mut proxy_up, 64).await },
            );
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big, "every byte, in order, then EOF");
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(
            writer.await.unwrap(),
            b"done",
            "the reply after the half-close"
        );
        assert_eq!(copy.await.unwrap().unwrap(), (100_000, 4));
    }

    #[tokio::test]
    async fn counted_counts_both_ways() {
        let (mut client, server) = tokio::io::duplex(64);
        let read = IntCounter::new("r", "r").unwrap();
        let written = IntCounter::new("w", "w").unwrap();
        let mut io = Counted::new(server, read.clone(), written.clone());
        client.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        io.read_exact(&mut buf).await.unwrap();
        io.write_all(b"hello").await.unwrap();
        assert_eq!(read.get(), 3);
        assert_eq!(written.get(), 5);
    }
}
