//! Bodies as the proxy passes them along ([`Body`]: streamed, boxed), and
//! request bodies that may be sent more than once (retries, mirrors)
//! without holding up the first attempt ([`Replay`]).
//!
//! The first attempt streams the body as it arrives; every frame it reads
//! is also kept in a buffer shared by all copies, up to a cap. A retry gets
//! a fresh copy that replays what was kept, then reads on where the source
//! left off, and is possible only while the buffer still holds everything
//! read so far (linkerd2-proxy's replay body is the model). A mirror gets a
//! copy too, but never reads past the cap: a body too big to keep ends the
//! mirrored request, never the real one.
//!
//! Whatever the framing (Content-Length, chunked, HTTP/2 DATA, trailers),
//! each copy sends the same bytes and trailers, with the original's size
//! hint, so an HTTP/1 upstream sees the same framing on every attempt.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::error::BoxError;

/// Request and response bodies as the proxy passes them along: streamed,
/// never buffered whole; a retry or mirror keeps a bounded copy.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

pub(crate) fn incoming(body: Incoming) -> Body {
    body.map_err(BoxError::from).boxed_unsync()
}

/// Bodies up to this size are kept so they can be sent again.
pub(crate) const MAX_REPLAY_BODY: usize = 64 * 1024;

/// The state every copy of one request body shares.
struct Shared {
    /// The body as it comes from the client; `None` once it ended.
    source: Option<Body>,
    /// Data read so far, while it is kept.
    chunks: Vec<Bytes>,
    kept: usize,
    cap: usize,
    trailers: Option<HeaderMap>,
    /// The source ended (after its trailers, if any).
    ended: bool,
    /// The source failed: every copy fails the same way.
    failed: Option<Arc<str>>,
    /// More was read than can be kept: no further copy can be made.
    overflowed: bool,
    /// The copy allowed to read past the cap: the latest attempt.
    primary: u64,
    next_id: u64,
    /// Copies waiting for the source, woken whenever one of them gets a
    /// frame: the source only remembers the last waker it was polled with.
    waiting: Vec<Waker>,
}

impl Shared {
    fn wake_all(&mut self) {
        for waker in self.waiting.drain(..) {
            waker.wake();
        }
    }
}

/// A request body kept for replay. Make copies of it with [`Replay::attempt`]
/// and [`Replay::mirror`]; the handle itself reads nothing.
#[derive(Clone)]
pub(crate) struct Replay {
    shared: Arc<Mutex<Shared>>,
    hint: SizeHint,
    empty: bool,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("hint", &self.hint)
            .field("empty", &self.empty)
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// Wraps `body`, keeping up to `cap` bytes of it for copies.
    pub(crate) fn new(body: Body, cap: usize) -> Self {
        let hint = body.size_hint();
        let empty = body.is_end_stream();
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(body),
                chunks: Vec::new(),
                kept: 0,
                cap,
                trailers: None,
                ended: empty,
                failed: None,
                overflowed: false,
                primary: 0,
                next_id: 0,
                waiting: Vec::new(),
            })),
            hint,
            empty,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The body has no bytes and no trailers at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }

    /// Whether a new copy would carry the whole body: nothing read so far
    /// has been let go.
    pub(crate) fn is_replayable(&self) -> bool {
        !self.lock().overflowed
    }

    /// Whether the body is known to be longer than what is kept.
    pub(crate) fn exceeds_cap(&self) -> bool {
        let cap = self.lock().cap as u64;
        self.hint.lower() > cap
    }

    /// A copy for the next attempt, which from now on is the one allowed to
    /// read past the cap. `None` when the body can no longer be replayed.
    pub(crate) fn attempt(&self) -> Option<Body> {
        let mut shared = self.lock();
        if shared.overflowed {
            return None;
        }
        shared.next_id += 1;
        shared.primary = shared.next_id;
        Some(self.copy(shared.next_id))
    }

    /// A copy for a mirror: it fails rather than read past the cap.
    /// `None` when the body can no longer be replayed.
    pub(crate) fn mirror(&self) -> Option<Body> {
        let mut shared = self.lock();
        if shared.overflowed {
            return None;
        }
        shared.next_id += 1;
        Some(self.copy(shared.next_id))
    }

    fn copy(&self, id: u64) -> Body {
        ReplayCopy {
            shared: self.shared.clone(),
            id,
            next: 0,
            trailers_sent: false,
            hint: self.hint,
        }
        .boxed_unsync()
    }
}

/// One copy of the body, as one attempt or mirror sends it.
struct ReplayCopy {
    shared: Arc<Mutex<Shared>>,
    id: u64,
    /// The next kept chunk this copy sends.
    next: usize,
    trailers_sent: bool,
    hint: SizeHint,
}

impl http_body::Body for ReplayCopy {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut shared = this.shared.lock().unwrap_or_else(|p| p.into_inner());
        // First what was kept.
        if let Some(chunk) = shared.chunks.get(this.next) {
            let chunk = chunk.clone();
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(failed) = &shared.failed {
            return Poll::Ready(Some(Err(failed.to_string().into())));
        }
        if shared.ended {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        if shared.overflowed && shared.primary != this.id {
            return Poll::Ready(Some(Err(
                "the request body is too large to send again".into()
            )));
        }
        // Then on from the source, keeping what it gives while there is room.
        let Some(source) = shared.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(source).poll_frame(cx);
        match polled {
            Poll::Pending => {
                if !shared.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                    shared.waiting.push(cx.waker().clone());
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                shared.source = None;
                shared.ended = true;
                this.trailers_sent = true;
                shared.wake_all();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.source = None;
                shared.failed = Some(Arc::from(e.to_string()));
                shared.wake_all();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                shared.wake_all();
                let frame = match frame.into_data() {
                    Ok(data) => {
                        keep(&mut shared, this.id, &mut this.next, &data);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(frame) => frame,
                };
                match frame.into_trailers() {
                    Ok(trailers) => {
                        shared.source = None;
                        shared.ended = true;
                        shared.trailers = Some(trailers.clone());
                        this.trailers_sent = true;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    // Neither data nor trailers: nothing to keep or send.
                    Err(_) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.ended
            && shared.failed.is_none()
            && self.next >= shared.chunks.len()
            && (self.trailers_sent || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Keeps a chunk just read from the source, while there is room. A copy
/// other than the primary keeps it even past the cap (once), so that the
/// primary, which may be behind it, never misses a byte.
fn keep(shared: &mut Shared, id: u64, next: &mut usize, data: &Bytes) {
    if shared.overflowed {
        return;
    }
    let fits = shared.kept + data.len() <= shared.cap;
    if !fits {
        shared.overflowed = true;
        if shared.primary == id {
            // Nobody else will need what follows: keep nothing more.
            return;
        }
    }
    shared.kept += data.len();
    shared.chunks.push(data.clone());
    *next = shared.chunks.len();
}

impl Drop for ReplayCopy {
    fn drop(&mut self) {
        // The source may hold this copy's waker: let the others poll it.
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wake_all();
    }
}

/// A response body that counts the data bytes it hands on, and calls
/// `done` once with the count when it ends, fails or is dropped before its
/// end (the client went away). Only bodies a logger measures are wrapped.
pub(crate) struct Counted<F: FnOnce(u64) + Send + 'static> {
    inner: Body,
    sent: u64,
    done: Option<F>,
}

/// `body`, counted; `done` gets the data bytes sent.
pub(crate) fn counted<F: FnOnce(u64) + Send + 'static>(body: Body, done: F) -> Body {
    Counted {
        inner: body,
        sent: 0,
        done: Some(done),
    }
    .boxed_unsync()
}

impl<F: FnOnce(u64) + Send + 'static> Counted<F> {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.sent);
        }
    }
}

impl<F: FnOnce(u64) + Send + 'static> Unpin for Counted<F> {}

impl<F: FnOnce(u64) + Send + 'static> http_body::Body for Counted<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_)) | None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(u64) + Send + 'static> Drop for Counted<F> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Frames with no length announced, like chunked HTTP/1 or gRPC over
    /// HTTP/2; `None` entries are a pending poll (the client is slow).
    struct Frames(VecDeque<Option<Frame<Bytes>>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.pop_front() {
                Some(Some(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }
    }

    /// `data` as frames of ten bytes.
    fn in_tens(data: &[u8]) -> Body {
        Frames(
            data.chunks(10)
                .map(|c| Some(Frame::data(Bytes::copy_from_slice(c))))
                .collect(),
        )
        .boxed_unsync()
    }

    fn chunked(chunks: &[&'static [u8]], trailers: Option<HeaderMap>) -> Body {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .flat_map(|c| [None, Some(Frame::data(Bytes::from_static(c)))])
            .collect();
        if let Some(t) = trailers {
            frames.push_back(Some(Frame::trailers(t)));
        }
        Frames(frames).boxed_unsync()
    }

    #[tokio::test]
    async fn every_attempt_sends_the_same_bytes_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let replay = Replay::new(chunked(&[b"hel", b"lo"], Some(trailers)), 1024);
        for _ in 0..3 {
            let collected = replay
                .attempt()
                .expect("replayable")
                .collect()
                .await
                .unwrap();
            assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
            assert_eq!(collected.to_bytes(), "hello");
        }
    }

    #[tokio::test]
    async fn the_first_attempt_streams_before_the_body_ends() {
        let (mut tx, rx) = futures_channel_body();
        let replay = Replay::new(rx, 1024);
        let mut first = replay.attempt().expect("first");
        tx.send(Bytes::from_static(b"part one")).await;
        let frame = first.frame().await.expect("a frame").expect("ok");
        assert_eq!(
            frame.into_data().unwrap(),
            "part one",
            "sent before the end"
        );
        // A retry made mid-stream replays what was sent, then reads on.
        drop(first);
        let mut retry = replay.attempt().expect("still replayable");
        let frame = retry.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "part one");
        tx.send(Bytes::from_static(b"part two")).await;
        drop(tx);
        let rest = retry.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "part two");
    }

    #[tokio::test]
    async fn a_body_past_the_cap_streams_whole_once_and_cannot_be_replayed() {
        let big = vec![7u8; 100];
        let replay = Replay::new(in_tens(&big), 25);
        let first = replay.attempt().expect("first");
        assert!(replay.is_replayable(), "nothing read yet");
        assert_eq!(first.collect().await.unwrap().to_bytes(), big);
        assert!(!replay.is_replayable());
        assert!(replay.attempt().is_none(), "no retry past the cap");
        assert!(replay.mirror().is_none());
    }

    #[tokio::test]
    async fn a_mirror_ahead_of_the_attempt_never_costs_it_a_byte() {
        let data: Vec<u8> = (0..60).collect();
        let replay = Replay::new(in_tens(&data), 25);
        let first = replay.attempt().expect("first");
        let mirror = replay.mirror().expect("mirror");
        // The mirror reads first and hits the cap: it fails, the attempt
        // still gets every byte.
        let mirrored = mirror.collect().await;
        assert!(mirrored.is_err(), "the mirror gives up at the cap");
        assert_eq!(first.collect().await.unwrap().to_bytes(), data);
    }

    #[tokio::test]
    async fn a_known_length_is_kept_on_every_copy() {
        let replay = Replay::new(full(Bytes::from_static(b"12345")), 1024);
        let copy = replay.attempt().unwrap();
        assert_eq!(copy.size_hint().exact(), Some(5));
        assert_eq!(copy.collect().await.unwrap().to_bytes(), "12345");
        let copy = replay.attempt().unwrap();
        assert_eq!(copy.size_hint().exact(), Some(5));
        assert_eq!(copy.collect().await.unwrap().to_bytes(), "12345");
        assert!(!Replay::new(full(Bytes::from_static(b"x")), 5).exceeds_cap());
        assert!(Replay::new(full(Bytes::from(vec![0u8; 10])), 5).exceeds_cap());
    }

    #[tokio::test]
    async fn an_empty_body_replays_empty() {
        let replay = Replay::new(empty(), 1024);
        assert!(replay.is_empty());
        assert!(replay.attempt().unwrap().is_end_stream());
    }

    /// What a counted body reported, and how many times.
    fn counter() -> (Arc<Mutex<Vec<u64>>>, impl FnOnce(u64) + Send + 'static) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        (calls, move |n| seen.lock().expect("lock").push(n))
    }

    #[tokio::test]
    async fn a_counted_body_reports_every_data_byte_once() {
        let data: Vec<u8> = (0..57).collect();
        let (calls, done) = counter();
        let body = counted(in_tens(&data), done);
        assert_eq!(body.collect().await.expect("whole").to_bytes(), data);
        assert_eq!(*calls.lock().expect("lock"), vec![57], "6 frames, once");
    }

    #[tokio::test]
    async fn a_counted_body_dropped_midway_reports_what_was_sent_once() {
        let (mut feeder, source) = futures_channel_body();
        let (calls, done) = counter();
        let mut body = counted(source, done);
        feeder.send(Bytes::from_static(b"0123456789")).await;
        feeder.send(Bytes::from_static(b"abc")).await;
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "0123456789");
        let second = body.frame().await.expect("a frame").expect("data");
        assert_eq!(second.into_data().expect("data"), "abc");
        assert!(calls.lock().expect("lock").is_empty(), "not over yet");
        drop(body);
        assert_eq!(*calls.lock().expect("lock"), vec![13]);
    }

    #[tokio::test]
    async fn an_empty_counted_body_reports_zero_even_unread() {
        let (calls, done) = counter();
        let body = counted(empty(), done);
        assert!(body.is_end_stream());
        assert_eq!(body.collect().await.expect("empty").to_bytes(), "");
        assert_eq!(*calls.lock().expect("lock"), vec![0]);
        // A HEAD response's body is dropped unread.
        let (calls, done) = counter();
        drop(counted(full(Bytes::from_static(b"never sent")), done));
        assert_eq!(*calls.lock().expect("lock"), vec![0]);
    }

    /// A body fed by hand, chunk by chunk.
    fn futures_channel_body() -> (Feeder, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        (Feeder(tx), ChannelBody(rx).boxed_unsync())
    }

    struct Feeder(tokio::sync::mpsc::Sender<Bytes>);

    impl Feeder {
        async fn send(&mut self, bytes: Bytes) {
            self.0.send(bytes).await.expect("body alive");
        }
    }

    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for ChannelBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }
}
