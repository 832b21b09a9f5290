//! The guards: bodies read as gRPC frames (a flag byte, a `u32` big-endian length, the message)
//! before tonic reads them, on the server (request bodies, a tower layer) and on the client (reply
//! bodies, a wrapper of the channel).
//!
//! - tonic reserves a message's announced length as soon as it reads the length prefix, so a peer
//!   that announces 16 MiB and sends 5 bytes would cost the cap in memory, per stream. A guard
//!   holds each message's bytes back until all of them have arrived (tonic cannot decode a message
//!   before that anyway): what tonic reserves is then what the peer actually sent. A length over
//!   the cap fails the call at once, worded as tonic words it; a body that ends inside a message
//!   fails it too, without handing tonic the partial message.
//! - On the server only: tonic waits without a limit for the request of a unary call
//!   (`rpc_join_group`, `rpc_download_state`). The guard fails a call whose first message is not
//!   whole within `first_request_timeout` with `DEADLINE_EXCEEDED`; for `rpc_aggregate_part` the
//!   handler's request stream ends with that error, when the handler reads it. Later messages may
//!   come at any pace, and replies have no deadline (a caller bounds its own waits).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body::Frame;
use tokio::time::{Sleep, sleep};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Channel;

use crate::status::too_large;

/// The gRPC frame header: a compression flag and a `u32` big-endian length.
const HEADER_LEN: usize = 5;

/// Wraps tonic's routes in a [`Guard`] (the server side).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardLayer {
    limit: usize,
    wait: Duration,
}

impl GuardLayer {
    /// Guards messages up to `limit` bytes, the first of which must be whole within `wait`.
    pub(crate) fn new(limit: usize, wait: Duration) -> Self {
        GuardLayer { limit, wait }
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner, layer: *self }
    }
}

/// A service whose requests' bodies are [`Guarded`].
#[derive(Debug, Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

impl<S> tower_service::Service<Request<Body>> for Guard<S>
where
    S: tower_service::Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> S::Future {
        let GuardLayer { limit, wait } = self.layer;
        self.inner.call(request.map(|body| Body::new(Guarded::new(body, limit, Some(wait)))))
    }
}

/// A client channel whose replies' bodies are [`Guarded`], without a deadline.
#[derive(Debug, Clone)]
pub(crate) struct ReplyGuard {
    inner: Channel,
    limit: usize,
}

impl ReplyGuard {
    /// Guards the replies of `inner`, whose messages may be up to `limit` bytes.
    pub(crate) fn new(inner: Channel, limit: usize) -> Self {
        ReplyGuard { inner, limit }
    }
}

impl tower_service::Service<Request<Body>> for ReplyGuard {
    type Response = http::Response<Guarded>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Guarded>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let limit = self.limit;
        let reply = self.inner.call(request);
        Box::pin(async move { Ok(reply.await?.map(|body| Guarded::new(body, limit, None))) })
    }
}

/// Where a body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the peer's frames.
    Open,
    /// The peer's body ended at a message boundary: the trailers, if any, then the end.
    Ended,
    /// The body failed (and said so once): nothing more.
    Failed,
}

/// A body released to tonic one whole gRPC message at a time.
pub(crate) struct Guarded {
    inner: Body,
    limit: usize,
    /// Until the first message is whole, if it has a deadline: when the call fails for want of it.
    deadline: Option<Deadline>,
    /// Data received and not released yet.
    held: VecDeque<Bytes>,
    held_len: usize,
    /// How many bytes at the front of `held` belong to whole messages, ready for tonic.
    ready: usize,
    frames: Framing,
    trailers: Option<HeaderMap>,
    state: State,
}

/// When a body's first message must be whole.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    wait: Duration,
}

impl Guarded {
    fn new(inner: Body, limit: usize, wait: Option<Duration>) -> Self {
        Guarded {
            inner,
            limit,
            deadline: wait.map(|wait| Deadline { sleep: Box::pin(sleep(wait)), wait }),
            held: VecDeque::new(),
            held_len: 0,
            ready: 0,
            frames: Framing::default(),
            trailers: None,
            state: State::Open,
        }
    }

    /// Holds `data`, marking whatever it completes as ready.
    fn receive(&mut self, data: Bytes) -> Result<(), Status> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(end) = self.frames.scan(&data, self.limit)? {
            self.ready = self.held_len + end;
            self.deadline = None;
        }
        self.held_len += data.len();
        self.held.push_back(data);
        Ok(())
    }

    /// The next ready bytes (at most one received chunk); call only when `ready > 0`.
    fn release(&mut self) -> Option<Bytes> {
        let mut chunk = self.held.pop_front()?;
        if chunk.len() > self.ready {
            self.held.push_front(chunk.split_off(self.ready));
        }
        self.ready -= chunk.len();
        self.held_len -= chunk.len();
        Some(chunk)
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.state = State::Failed;
        self.held.clear();
        self.ready = 0;
        Poll::Ready(Some(Err(status)))
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                if let Some(chunk) = this.release() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                this.ready = 0;
            }
            match this.state {
                State::Failed => return Poll::Ready(None),
                State::Ended => return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t)))),
                State::Open => {}
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(status) = this.receive(data) {
                            return this.fail(status);
                        }
                    }
                    Err(frame) => this.trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(status))) => return this.fail(status),
                Poll::Ready(None) if this.held_len > 0 => {
                    // Handing tonic the partial message would make it reserve the whole announced
                    // length just to report the truncation.
                    let held = this.held_len;
                    return this.fail(Status::internal(format!(
                        "the stream ended inside a gRPC message, {held} bytes into it"
                    )));
                }
                Poll::Ready(None) => {
                    this.state = State::Ended;
                    this.deadline = None;
                }
                Poll::Pending => {
                    if let Some(deadline) = &mut this.deadline
                        && deadline.sleep.as_mut().poll(cx).is_ready()
                    {
                        let wait = deadline.wait;
                        return this.fail(Status::deadline_exceeded(format!(
                            "the caller's first request was not whole within {wait:?}"
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Where the gRPC framing of a body stands, across the chunks it arrives in.
#[derive(Debug, Default)]
struct Framing {
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Bytes of the current message still to come; `None` while reading a header.
    body_left: Option<usize>,
}

impl Framing {
    /// Follows `data`; returns the offset just past the last message that `data` completes.
    ///
    /// # Errors
    /// The status tonic gives a message over `limit`, as soon as its header announces it.
    fn scan(&mut self, data: &[u8], limit: usize) -> Result<Option<usize>, Status> {
        let mut at = 0;
        let mut complete = None;
        while at < data.len() {
            if let Some(left) = self.body_left {
                let take = left.min(data.len() - at);
                at += take;
                self.body_left = Some(left - take);
                if left == take {
                    self.body_left = None;
                    complete = Some(at);
                }
                continue;
            }
            let take = (HEADER_LEN - self.header_len).min(data.len() - at);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[at..at + take]);
            self.header_len += take;
            at += take;
            if self.header_len == HEADER_LEN {
                self.header_len = 0;
                let [_, a, b, c, d] = self.header;
                let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
                if len > limit {
                    return Err(too_large(len, limit));
                }
                if len == 0 {
                    complete = Some(at);
                } else {
                    self.body_left = Some(len);
                }
            }
        }
        Ok(complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn framing_finds_message_ends_across_chunks() {
        let mut framing = Framing::default();
        let mut bytes = frame(3, b"abc");
        bytes.extend(frame(0, b""));
        bytes.extend(frame(2, b"x"));
        // Byte by byte: ends after the first message (8) and the empty one (13).
        let ends: Vec<_> = bytes
            .iter()
            .enumerate()
            .filter_map(|(i, b)| framing.scan(&[*b], 100).unwrap().map(|_| i + 1))
            .collect();
        assert_eq!(ends, vec![8, 13]);
        // All at once: the last complete message ends at 13; the third is partial.
        assert_eq!(Framing::default().scan(&bytes, 100).unwrap(), Some(13));
    }

    #[test]
    fn framing_refuses_a_length_over_the_limit_at_its_header() {
        let mut framing = Framing::default();
        assert_eq!(framing.scan(&frame(u32::MAX, b"")[..3], 16).unwrap(), None);
        let status = framing.scan(&frame(u32::MAX, b"")[3..], 16).unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(status.message().contains("found 4294967295 bytes"), "{}", status.message());
    }
}
