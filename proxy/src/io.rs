//! Small I/O adapters used on every proxied connection: replaying the bytes
//! that detection read, counting bytes as they flow (and holding the
//! connection's slot in its listener's limit), and copying both ways until
//! both sides are done or the connection has been idle too long.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::limits::Slot;

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
///
/// It also holds the connection's slot in its listener's limit, so the slot
/// is given back exactly when the socket closes, wherever the stream went:
/// an HTTP connection, or the tunnel of an upgrade that outlives it.
#[derive(Debug)]
pub(crate) struct Counted<T> {
    inner: T,
    read: IntCounter,
    written: IntCounter,
    slot: Option<Slot>,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T, read: IntCounter, written: IntCounter) -> Self {
        Counted {
            inner,
            read,
            written,
            slot: None,
        }
    }

    /// Keeps `slot` taken for as long as this stream lives.
    pub(crate) fn holding(mut self, slot: Slot) -> Self {
        self.slot = Some(slot);
        self
    }
}

impl<T> Drop for Counted<T> {
    /// The slot goes back before the socket closes (the fields drop after
    /// this), so a client that sees the close and connects again at once
    /// is never refused for the slot this connection held. Done here, not
    /// by declaring `slot` first: that field order made the HTTP/2 path,
    /// generic over this type, compile to 1.4k more instructions per
    /// request (bench/instructions.sh).
    fn drop(&mut self) {
        self.slot.take();
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

/// Why a copy ended before both sides were done.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// No byte moved either way for this long (`--tcp-idle-timeout`).
    #[error("no bytes in either direction for {0:?}; closed (see --tcp-idle-timeout)")]
    Idle(Duration),
}

/// Copies bytes both ways until both sides are done, propagating each
/// side's end of stream as a half-close to the other. Returns the bytes
/// copied from `a` to `b` and from `b` to `a`. A connection on which no
/// byte moves either way for `idle_timeout` is given up on.
///
/// Unlike `tokio::io::copy_bidirectional`, its buffers are allocated on the
/// first read and never zero-filled, so a connection that carries little
/// (most of them, most of the time) keeps little memory resident: only the
/// pages its bytes touched.
///
/// The idle timer is one sleep per connection that is never reset on a read
/// or write: a poll that moved bytes only notes the time, and when the sleep
/// fires it is pushed to the last activity plus the timeout, or ends the
/// copy if there was none since. The hot path costs a clock read per poll.
pub(crate) async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    buf_size: usize,
    idle_timeout: Duration,
) -> Result<(u64, u64), CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Pump::new(buf_size);
    let mut b_to_a = Pump::new(buf_size);
    let mut last_active = Instant::now();
    let mut moved_before = 0;
    let idle = tokio::time::sleep_until(deadline_after(last_active, idle_timeout));
    tokio::pin!(idle);
    poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, &mut *a, &mut *b)?;
        let backward = b_to_a.poll_copy(cx, &mut *b, &mut *a)?;
        if let (Poll::Ready(ab), Poll::Ready(ba)) = (forward, backward) {
            return Poll::Ready(Ok((ab, ba)));
        }
        let moved = a_to_b.moved + b_to_a.moved;
        if moved != moved_before {
            moved_before = moved;
            last_active = Instant::now();
        }
        while idle.as_mut().poll(cx).is_ready() {
            let deadline = deadline_after(last_active, idle_timeout);
            if deadline <= idle.deadline() {
                return Poll::Ready(Err(CopyError::Idle(idle_timeout)));
            }
            // Polled again by the loop, which registers the new deadline.
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// `at + timeout`, saturating far in the future rather than overflowing.
fn deadline_after(at: Instant, timeout: Duration) -> Instant {
    at.checked_add(timeout)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365 * 30))
}

/// One direction of a copy.
#[derive(Debug)]
struct Pump {
    buf: BytesMut,
    size: usize,
    read_done: bool,
    done: bool,
    copied: u64,
    /// Bytes read plus bytes written: what the idle timer watches.
    moved: u64,
}

impl Pump {
    fn new(size: usize) -> Self {
        Pump {
            buf: BytesMut::new(),
            size,
            read_done: false,
            done: false,
            copied: 0,
            moved: 0,
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
                self.moved += n as u64;
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
                Poll::Ready(Ok(n)) => self.moved += n as u64,
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const HOUR: Duration = Duration::from_secs(3600);

    type CopyTask = tokio::task::JoinHandle<Result<(u64, u64), CopyError>>;

    /// A copy between two duplex pipes, as the proxy runs it between a
    /// client and an upstream, with `idle` as its idle timeout. Returns the
    /// client's end, the server's end and the copy.
    fn spawn_copy(idle: Duration) -> (DuplexStream, DuplexStream, CopyTask) {
        let (client, mut proxy_down) = tokio::io::duplex(1024);
        let (mut proxy_up, server) = tokio::io::duplex(1024);
        let copy = tokio::spawn(async move {
            copy_bidirectional(&mut proxy_down, &mut proxy_up, 64, idle).await
        });
        (client, server, copy)
    }

    /// The copy's result, failing the test (not hanging it) if the copy
    /// never ends.
    async fn finish(copy: CopyTask) -> Result<(u64, u64), CopyError> {
        tokio::time::timeout(Duration::from_secs(60), copy)
            .await
            .expect("the copy ends within a minute")
            .expect("the copy task does not panic")
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_ends_at_the_idle_timeout() {
        let start = Instant::now();
        let (mut client, _server, copy) = spawn_copy(Duration::from_secs(2));
        let result = finish(copy).await;
        assert!(
            matches!(result, Err(CopyError::Idle(d)) if d == Duration::from_secs(2)),
            "{result:?}"
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "exactly at the timeout"
        );
        let mut buf = [0u8; 1];
        assert_eq!(
            client.read(&mut buf).await.unwrap(),
            0,
            "the client sees EOF"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_a_connection_open() {
        let start = Instant::now();
        let (mut client, mut server, copy) = spawn_copy(Duration::from_secs(2));
        let mut buf = [0u8; 4];
        // Every 500 ms for 4 s, alternating directions.
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if i % 2 == 0 {
                client.write_all(b"ping").await.unwrap();
                server.read_exact(&mut buf).await.unwrap();
            } else {
                server.write_all(b"pong").await.unwrap();
                client.read_exact(&mut buf).await.unwrap();
            }
            assert!(!copy.is_finished(), "still open after exchange {i}");
        }
        // Then silence: closed two seconds after the last byte, not before.
        let last = Instant::now();
        assert_eq!(last - start, Duration::from_secs(4));
        let result = finish(copy).await;
        assert!(matches!(result, Err(CopyError::Idle(_))), "{result:?}");
        assert_eq!(last.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_closed_connection_still_times_out_when_idle() {
        let start = Instant::now();
        let (mut client, mut server, copy) = spawn_copy(Duration::from_secs(3));
        client.shutdown().await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            server.read(&mut buf).await.unwrap(),
            0,
            "half-close passed on"
        );
        let result = finish(copy).await;
        assert!(matches!(result, Err(CopyError::Idle(_))), "{result:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_that_finishes_is_not_an_idle_timeout() {
        let (mut client, mut server, copy) = spawn_copy(Duration::from_secs(2));
        client.write_all(b"bye").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(finish(copy).await.unwrap(), (3, 0));
        assert_eq!(got, b"bye");
    }

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
        let copy = tokio::spawn(async move {
            copy_bidirectional(&mut proxy_down, &mut proxy_up, 64, HOUR).await
        });
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
