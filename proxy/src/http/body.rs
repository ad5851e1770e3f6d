//! Request bodies that must be sent more than once (retries, mirrors):
//! buffered up to a limit, whatever their framing (Content-Length, chunked,
//! HTTP/2 DATA frames, trailers). A larger body is not buffered whole: its
//! first bytes are replayed ahead of the rest, and it is sent once.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

use super::{Body, BoxError, ErrorKind, ProxyError};

/// Bodies up to this size are kept so they can be sent again.
pub(crate) const MAX_REPLAY_BODY: usize = 64 * 1024;

/// A complete request body, kept to be sent again.
#[derive(Debug, Clone, Default)]
pub(crate) struct Replay {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// No bytes and no trailers.
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    /// A fresh body with the same bytes and trailers.
    pub(crate) fn body(&self) -> Body {
        ReplayBody {
            data: Some(self.data.clone()).filter(|d| !d.is_empty()),
            trailers: self.trailers.clone(),
        }
        .boxed_unsync()
    }
}

/// What buffering found.
#[derive(Debug)]
pub(crate) enum Buffered {
    /// The whole body, within the limit.
    Complete(Replay),
    /// Too big: the body to send once, its first bytes included.
    Streamed(Body),
}

/// Reads `body` until its end, or until more than [`MAX_REPLAY_BODY`] bytes
/// have arrived.
pub(crate) async fn buffer(mut body: Body) -> Result<Buffered, ProxyError> {
    let mut data = BytesMut::new();
    if body.is_end_stream() {
        return Ok(Buffered::Complete(Replay::default()));
    }
    loop {
        let frame = match body.frame().await {
            None => {
                return Ok(Buffered::Complete(Replay {
                    data: data.freeze(),
                    trailers: None,
                }))
            }
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                return Err(ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("reading the request body: {e}"),
                ))
            }
        };
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > MAX_REPLAY_BODY {
                    let prefix = data.freeze();
                    return Ok(Buffered::Streamed(
                        Prefixed {
                            prefix: Some(prefix),
                            rest: body,
                        }
                        .boxed_unsync(),
                    ));
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return Ok(Buffered::Complete(Replay {
                        data: data.freeze(),
                        trailers: Some(trailers),
                    }));
                }
            }
        }
    }
}

/// A buffered body sent again: its data, then its trailers.
#[derive(Debug)]
struct ReplayBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.data.as_ref().map_or(0, |d| d.len() as u64);
        match &self.trailers {
            None => SizeHint::with_exact(len),
            Some(_) => {
                let mut hint = SizeHint::new();
                hint.set_lower(len);
                hint
            }
        }
    }
}

/// The bytes already read, then the rest of the body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: Body,
}

impl std::fmt::Debug for Prefixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixed").finish_non_exhaustive()
    }
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::full;

    /// Frames with no length announced, like chunked HTTP/1 or gRPC over
    /// HTTP/2.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn chunked(chunks: Vec<&'static [u8]>, trailers: Option<HeaderMap>) -> Body {
        let mut frames: std::collections::VecDeque<Frame<Bytes>> = chunks
            .into_iter()
            .map(|c| Frame::data(Bytes::from_static(c)))
            .collect();
        if let Some(t) = trailers {
            frames.push_back(Frame::trailers(t));
        }
        Frames(frames).boxed_unsync()
    }

    #[tokio::test]
    async fn a_body_without_length_is_buffered_with_its_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = chunked(vec![b"hel", b"lo"], Some(trailers));
        let Buffered::Complete(replay) = buffer(body).await.unwrap() else {
            panic!("a small body is kept");
        };
        for _ in 0..2 {
            let collected = replay.body().collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
            assert_eq!(collected.to_bytes(), "hello");
        }
    }

    #[tokio::test]
    async fn a_big_body_streams_once_with_nothing_lost() {
        let big = vec![7u8; MAX_REPLAY_BODY + 10];
        let body = full(Bytes::from(big.clone()));
        let Buffered::Streamed(body) = buffer(body).await.unwrap() else {
            panic!("a big body is not kept");
        };
        assert_eq!(body.collect().await.unwrap().to_bytes(), big);
    }

    #[tokio::test]
    async fn an_empty_body_replays_empty() {
        let Buffered::Complete(replay) = buffer(crate::http::empty()).await.unwrap() else {
            panic!("empty is complete");
        };
        assert!(replay.body().is_end_stream());
    }
}
