//! Transparent retry (gRFC A6 "transparent retries"; grpc-go `stream.go` `csAttempt.shouldRetry`):
//! an RPC the server never processed is sent again, on a new pick, without the caller seeing the
//! first attempt.
//!
//! Two things make it possible: knowing that the server never processed the attempt
//! ([`unprocessed`]) and being able to send the same request again ([`Replay`]: the request's
//! head and a replay buffer of its body, as grpc-go keeps one per RPC).
//!
//! # The replay buffer
//!
//! The body is buffered *as it is sent*, up to [`RETRY_BUFFER`] (256 KiB, grpc-go's default
//! `MaxRetryRPCBufferSize`) per RPC. A body that grows past it is no longer replayable (grpc-go
//! "commits" the RPC at that point): the attempt that read past the limit carries on with the
//! original body and the RPC is not retried. A unary RPC's body is one message; a client stream
//! is buffered message by message as the application produces them, so a stream that has sent
//! less than the limit can be retried too. The buffer is freed with the response future.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use tonic::codegen::Bytes;
use tonic::Status;

use crate::picker::Request;

/// Largest request body, in bytes, kept for a transparent retry (per RPC): grpc-go's default
/// retry buffer (`grpc.MaxRetryRPCBufferSize`, 256 KiB). Past it the RPC is not retried.
pub const RETRY_BUFFER: usize = 256 * 1024;

/// At most this many transparent retries per RPC (so `MAX_RETRIES + 1` attempts).
///
/// gRFC A6 retries an RPC that never left the client without limit and one that reached the
/// server's connection but not its application once. hyper and h2 do not always tell the two
/// apart (a stream opened after a GOAWAY and a stream above its last-stream-id end with the same
/// error), so pickwise bounds both together: a handful is more than a recycling server needs
/// (each retry goes to a different connection) and never loops.
pub const MAX_RETRIES: u32 = 4;

/// Why an attempt was certainly not processed by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unprocessed {
    /// The server refused the stream (`RST_STREAM` with `REFUSED_STREAM`; RFC 9113 §8.7: "the
    /// stream was closed prior to any processing"). The connection is fine.
    Refused,
    /// The connection is going away or gone and the request never reached the server's
    /// application: a GOAWAY whose last-stream-id is below the stream, a stream opened after a
    /// GOAWAY, or a request still queued when the connection closed. The connection takes no new
    /// requests: the next attempt needs another one.
    ConnectionGone,
}

/// Whether `e` (an attempt's error before any response) guarantees that the server did not
/// process the request, and why. Only these are retried:
///
/// - h2 `RST_STREAM(REFUSED_STREAM)` from the peer (grpc-go `http2_client.go` `handleRSTStream`:
///   `if f.ErrCode == http2.ErrCodeRefusedStream { s.unprocessed.Store(true) }`).
/// - h2 GOAWAY from the peer with `NO_ERROR`: h2 (`Streams::recv_go_away`) fails exactly the
///   streams above the last-stream-id with it, and every stream opened afterwards (its
///   connection error); a GOAWAY with an error code is also given by h2 to streams *below* the
///   last-stream-id when the connection ends, so it does not qualify (grpc-go `handleGoAway`:
///   `streamID > id` → `unprocessed`; `NewStream` on a draining transport: `errStreamDrain`,
///   transparent).
/// - hyper `is_canceled()`: for HTTP/2 hyper only cancels a request that never reached h2 (it
///   was queued when the connection task ended, "connection closed", or the connection was not
///   ready, "connection was not ready"); `is_closed()`: `SendRequest::poll_ready` on a closed
///   connection. grpc-go: `NewStream` failing with `ErrConnClosing` (`allowTransparentRetry`).
/// - tonic `ConnectError`: the channel's own reconnect failed, so the request was not sent.
///
/// Not retried: resets with other codes, I/O errors, EOF ("stream closed because of a broken
/// pipe"), timeouts — the server may have processed those.
pub(crate) fn unprocessed(e: &(dyn std::error::Error + 'static)) -> Option<Unprocessed> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<h2::Error>() {
            let reason = h.reason();
            if h.is_remote() && h.is_reset() && reason == Some(h2::Reason::REFUSED_STREAM) {
                return Some(Unprocessed::Refused);
            }
            if h.is_remote() && h.is_go_away() && reason == Some(h2::Reason::NO_ERROR) {
                return Some(Unprocessed::ConnectionGone);
            }
            return None;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_canceled() || h.is_closed() {
                return Some(Unprocessed::ConnectionGone);
            }
        }
        if err.is::<tonic::ConnectError>() {
            return Some(Unprocessed::ConnectionGone);
        }
        source = err.source();
    }
    None
}

/// What a retry needs: the request's head and the shared replay buffer of its body.
pub(crate) struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: HeaderMap,
    extensions: http::Extensions,
    body: Arc<Mutex<Shared>>,
    /// Attempts made so far.
    pub(crate) attempts: u32,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("uri", &self.uri)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// Keeps what a retry needs and returns the first attempt's request, whose body fills the
    /// replay buffer as it is sent.
    pub(crate) fn new(req: Request) -> (Self, Request) {
        let (parts, body) = req.into_parts();
        let shared = Arc::new(Mutex::new(Shared {
            inner: body,
            chunks: Vec::new(),
            buffered: 0,
            ended: false,
            trailers: None,
            spent: None,
            next_id: 1,
        }));
        let replay = Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
            body: shared.clone(),
            attempts: 1,
        };
        let body = ReplayBody {
            shared,
            id: 0,
            pos: 0,
            trailers_sent: false,
        };
        let req = http::Request::from_parts(parts, tonic::body::Body::new(body));
        (replay, req)
    }

    /// Whether the body can still be sent again (never grew past [`RETRY_BUFFER`] or failed).
    pub(crate) fn replayable(&self) -> bool {
        lock(&self.body).spent.is_none()
    }

    /// The request again, its body replayed from the buffer; `None` if it cannot be.
    pub(crate) fn request(&mut self) -> Option<Request> {
        let id = {
            let mut s = lock(&self.body);
            if s.spent.is_some() {
                return None;
            }
            s.next_id += 1;
            s.next_id
        };
        let body = ReplayBody {
            shared: self.body.clone(),
            id,
            pos: 0,
            trailers_sent: false,
        };
        let mut req = http::Request::new(tonic::body::Body::new(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        *req.extensions_mut() = self.extensions.clone();
        self.attempts += 1;
        Some(req)
    }
}

/// The body shared by every attempt of one RPC: the original body, read once, and what has been
/// read of it so far.
struct Shared {
    inner: tonic::body::Body,
    /// Data frames read so far, in order (while not `spent`).
    chunks: Vec<Bytes>,
    buffered: usize,
    /// The original body has ended (its trailers, if any, are in `trailers`).
    ended: bool,
    trailers: Option<HeaderMap>,
    /// The attempt that read past the buffer limit or saw the body fail: only it can go on, and
    /// the RPC is no longer retried.
    spent: Option<u64>,
    next_id: u64,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One attempt's view of the request body: replays the buffer, then reads on from the original
/// body (buffering what it reads). Every attempt sees the same frames in the same order.
///
/// Attempts run one after the other, but a failed attempt's body may still be polled for a
/// moment by its connection; whichever attempt is furthest reads the original body and the
/// others follow from the buffer.
struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    id: u64,
    /// Chunks of the buffer this attempt has sent.
    pos: usize,
    trailers_sent: bool,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let mut s = lock(&this.shared);
        if let Some(chunk) = s.chunks.get(this.pos) {
            let chunk = chunk.clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if s.spent.is_some_and(|owner| owner != this.id) {
            return Poll::Ready(Some(Err(Status::internal(
                "pickwise: request body is no longer replayable",
            ))));
        }
        if s.ended {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(s.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let res = std::task::ready!(Pin::new(&mut s.inner).poll_frame(cx));
        match &res {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if s.spent.is_none() {
                        if s.buffered + data.len() <= RETRY_BUFFER {
                            s.buffered += data.len();
                            s.chunks.push(data.clone());
                            this.pos += 1;
                        } else {
                            // grpc-go commits the RPC when its buffer overflows: no retry.
                            s.spent = Some(this.id);
                            s.chunks = Vec::new();
                            s.buffered = 0;
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.ended = true;
                    this.trailers_sent = true;
                }
            }
            Some(Err(_)) => {
                s.spent = Some(this.id);
                s.chunks = Vec::new();
            }
            None => s.ended = true,
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.shared);
        if self.pos < s.chunks.len() {
            return false;
        }
        if s.ended {
            return self.trailers_sent || s.trailers.is_none();
        }
        s.spent.is_none_or(|owner| owner == self.id) && s.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.shared);
        if self.pos == 0 && s.chunks.is_empty() && !s.ended {
            return s.inner.size_hint();
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn frames(n: usize, size: usize) -> tonic::body::Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(n + 1);
        for i in 0..n {
            tx.try_send(Ok(Frame::data(Bytes::from(vec![i as u8; size]))))
                .unwrap();
        }
        drop(tx);
        tonic::body::Body::new(Frames(rx))
    }

    /// A body of the frames sent on a channel.
    struct Frames(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Status>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            self.0.poll_recv(cx)
        }
    }

    async fn collect(mut body: tonic::body::Body) -> Result<Vec<u8>, Status> {
        let mut out = Vec::new();
        while let Some(f) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Some(d) = f?.data_ref() {
                out.extend_from_slice(d);
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_retry_sends_the_same_body() {
        let req = http::Request::new(frames(3, 10));
        let (mut replay, first) = Replay::new(req);
        // The first attempt sent part of it and failed.
        let mut body = first.into_body();
        let f = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(f.data_ref().unwrap().len(), 10);
        drop(body);
        assert!(replay.replayable());
        let again = replay.request().unwrap();
        let bytes = collect(again.into_body()).await.unwrap();
        assert_eq!(bytes.len(), 30);
        assert_eq!((bytes[0], bytes[10], bytes[29]), (0, 1, 2));
        // And again, all from the buffer.
        let third = collect(replay.request().unwrap().into_body()).await.unwrap();
        assert_eq!(third, bytes);
        assert_eq!(replay.attempts, 3);
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_not_replayed() {
        let size = RETRY_BUFFER / 2 + 1;
        let (mut replay, first) = Replay::new(http::Request::new(frames(3, size)));
        let bytes = collect(first.into_body()).await.unwrap();
        assert_eq!(bytes.len(), 3 * size, "the first attempt still sends all of it");
        assert!(!replay.replayable());
        assert!(replay.request().is_none());
    }

    #[test]
    fn only_unprocessed_errors_are_retried() {
        let refused: h2::Error = h2::Reason::REFUSED_STREAM.into();
        // A reason built locally is not the peer's refusal.
        assert_eq!(unprocessed(&refused), None);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(unprocessed(&io), None);
    }
}
