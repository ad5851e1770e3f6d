//! The request body idle timeout (`http.requestBodyIdleTimeout`): a client
//! that starts a body and then stops sending must not hold an upstream
//! request (and its connection, and a circuit-breaker slot) open for ever.
//!
//! The clock runs only while the proxy waits for the client: it starts
//! when the body is polled and has nothing, and restarts with each frame.
//! A body that an upstream is slow to read is not idle. When it runs out
//! the body fails (aborting the upstream request) and the [`Stall`] fires,
//! so the request handler can answer 408 if no response has started.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::{Body, BoxError};

/// The error a stalled body fails with.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body data for {0:?} (http.requestBodyIdleTimeout)")]
pub(crate) struct BodyIdle(pub(crate) Duration);

/// Fires once when the body it watches stalls.
#[derive(Debug, Default)]
pub(crate) struct Stall {
    notify: Notify,
    fired: AtomicBool,
}

impl Stall {
    /// Resolves when the body has stalled (at once if it already has).
    pub(crate) async fn stalled(&self) {
        if self.has_fired() {
            return;
        }
        self.notify.notified().await;
    }

    /// Whether the body has stalled: an upstream failure seen meanwhile
    /// is this stall's doing.
    pub(crate) fn has_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// Wraps `body` with the idle timeout; `None` when there is no body to
/// wait for.
pub(crate) fn watch(body: Body, timeout: Duration) -> (Body, Option<Arc<Stall>>) {
    if body.is_end_stream() {
        return (body, None);
    }
    let stall = Arc::new(Stall::default());
    let watched = IdleTimeout {
        inner: body,
        timeout,
        sleep: None,
        armed: false,
        stall: stall.clone(),
    };
    (watched.boxed_unsync(), Some(stall))
}

struct IdleTimeout {
    inner: Body,
    timeout: Duration,
    /// Made on the first wait, then reset: one allocation per body.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` counts the current wait.
    armed: bool,
    stall: Arc<Stall>,
}

impl HttpBody for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame);
        }
        let deadline = Instant::now() + this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !this.armed {
            sleep.as_mut().reset(deadline);
            this.armed = true;
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.stall.fire();
                Poll::Ready(Some(Err(BodyIdle(this.timeout).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleTimeout")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    type Sender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

    /// A body fed frame by frame by the test.
    struct Channel(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

    impl HttpBody for Channel {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx)
        }
    }

    fn channel_body() -> (Sender, Body) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Channel(rx).boxed_unsync())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_coming_never_times_out() {
        let (tx, body) = channel_body();
        let (mut body, stall) = watch(body, Duration::from_secs(1));
        let stall = stall.unwrap();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await;
            }
        });
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            frame.unwrap();
            got += 1;
        }
        assert_eq!(got, 5);
        let stalled = tokio::time::timeout(Duration::from_secs(5), stall.stalled()).await;
        assert!(
            stalled.is_err(),
            "a 4.5 s body with 0.9 s gaps did not stall"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout_and_fires_the_stall() {
        let (tx, body) = channel_body();
        let (mut body, stall) = watch(body, Duration::from_secs(2));
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        let start = Instant::now();
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(err.is::<BodyIdle>(), "{err}");
        tokio::time::timeout(Duration::from_millis(1), stall.unwrap().stalled())
            .await
            .expect("the stall fired");
        drop(tx);
    }

    #[test]
    fn an_empty_body_is_not_watched() {
        let (body, stall) = watch(crate::http::empty(), Duration::from_secs(1));
        assert!(stall.is_none());
        assert!(body.is_end_stream());
    }
}
