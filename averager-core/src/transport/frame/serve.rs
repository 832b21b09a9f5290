//! What the servers of the stream transports do alike: read a call's request(s) by the
//! first-request deadline, refuse what a caller must not send (a message over the cap, garbage, a
//! late or missing request) with an error frame, and stream the handler's replies until they end,
//! fail, or the caller goes away.

use std::future::Future;
use std::time::Duration;

use averager_proto::AveragingData;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};

use super::{FrameRead, FrameWrite, Outgoing, decode, encode_frame, read_frame};
use crate::error::{Error, Result};
use crate::transport::MessageStream;

/// When a served call's first request must have arrived: a silent caller would otherwise hold the
/// call's task (and, for a handler that waits on it, the handler's state) as long as it likes.
#[derive(Debug, Clone, Copy)]
pub struct FirstRequest {
    /// The deadline.
    pub deadline: Instant,
    /// The wait it ends, for the error's text.
    pub wait: Duration,
}

impl FirstRequest {
    /// A deadline `wait` from now (the call's arrival).
    pub fn from_now(wait: Duration) -> Self {
        FirstRequest { deadline: Instant::now() + wait, wait }
    }

    /// The error of a call whose first request did not come in time.
    pub fn timed_out(&self) -> Error {
        Error::timeout("the caller's first request", self.wait)
    }
}

/// Reads the single request of a unary call (`rpc_join_group`, `rpc_download_state`) by `first`.
///
/// # Errors
/// [`Error::Timeout`] when it comes late, [`Error::MessageTooLarge`] when it is over `limit`,
/// [`Error::Transport`] when it is garbage or the caller sent none; the stream's own failures.
pub async fn read_unary<T: prost::Message + Default, R: FrameRead>(
    recv: &mut R,
    limit: usize,
    first: FirstRequest,
    peer: &str,
) -> Result<T> {
    let Ok(read) = timeout_at(first.deadline, read_frame(recv, limit, false, peer)).await else {
        return Err(first.timed_out());
    };
    match read? {
        super::Frame::Message(bytes) => decode(bytes, peer),
        _ => Err(Error::Transport(format!("{peer} sent no request"))),
    }
}

/// What the next frame of an `rpc_aggregate_part` call's requests means to the server.
#[derive(Debug)]
pub enum Request {
    /// A request.
    Message(AveragingData),
    /// The caller's end frame.
    End,
    /// The stream ended without an end frame (a finish, or the caller going away: the transport
    /// knows which).
    Closed,
    /// A request the caller must not send (over the cap, garbage, late): the handler's request
    /// stream ends with this error, and so do the caller's replies.
    Refused(Error),
    /// The stream failed (a reset, a lost connection): nobody is left to tell.
    Lost(Error),
}

/// Reads the next request of an `rpc_aggregate_part` call; the first (while `first` is `Some`,
/// which this takes) must come by its deadline.
pub async fn read_request<R: FrameRead>(
    recv: &mut R,
    limit: usize,
    first: &mut Option<FirstRequest>,
    peer: &str,
) -> Request {
    let reading = read_frame(recv, limit, false, peer);
    let read = match first.take() {
        None => reading.await,
        Some(first) => timeout_at(first.deadline, reading).await.unwrap_or_else(|_| Err(first.timed_out())),
    };
    match read {
        Ok(super::Frame::Message(bytes)) => match decode(bytes, peer) {
            Ok(message) => Request::Message(message),
            Err(e) => Request::Refused(e),
        },
        Ok(super::Frame::End) => Request::End,
        Ok(super::Frame::Closed) => Request::Closed,
        // Requests carry no error frames: their marker reads as a length over the cap.
        Ok(super::Frame::Failure(e)) => Request::Refused(e),
        Err(e @ (Error::MessageTooLarge { .. } | Error::Timeout { .. })) => Request::Refused(e),
        Err(e) => Request::Lost(e),
    }
}

/// Resolves with the request stream's failure, if it reports one; never resolves otherwise.
pub async fn request_failure(slot: &mut Option<oneshot::Receiver<Error>>) -> Error {
    if let Some(rx) = slot.as_mut() {
        let received = rx.await;
        *slot = None;
        if let Ok(e) = received {
            return e;
        }
    }
    std::future::pending().await
}

/// The reply side of a served call.
pub trait ReplySink: FrameWrite + Sized {
    /// Whether a write fails by itself once the caller has gone (QUIC: a stopped stream), so the
    /// reply loop need not watch for it while writing; watching costs a poll of the watch on
    /// every wake-up of a write that may move megabytes.
    const WRITES_FAIL_WHEN_GONE: bool = false;

    /// Ends the replies, with an error frame for `error` or cleanly, and closes the stream.
    fn end(self, error: Option<&Error>, peer: &str) -> impl Future<Output = ()> + Send;

    /// Gives the call up: the caller went away mid-reply.
    fn abandon(self);
}

/// Sends an error frame for `error` (best effort) and ends the call: a refusal.
pub async fn refuse<S: ReplySink>(send: S, error: &Error, peer: &str) {
    send.end(Some(error), peer).await;
}

/// Starts the handler and streams its replies until it ends, fails, or the caller goes away
/// (`gone` resolves); the handler's stream is dropped before the caller sees the end. A request
/// the transport refused (`request_failed`) ends the replies with that error.
pub async fn respond<T: Outgoing, S: ReplySink>(
    mut send: S,
    start: impl Future<Output = Result<MessageStream<T>>>,
    limit: usize,
    gone: impl Future<Output = ()>,
    mut request_failed: Option<oneshot::Receiver<Error>>,
    peer: &str,
) {
    tokio::pin!(gone);
    let outcome = tokio::select! {
        biased;
        () = &mut gone => return,
        outcome = start => outcome,
    };
    let mut responses = match outcome {
        Ok(responses) => responses,
        Err(e) => return refuse(send, &e, peer).await,
    };
    let last = loop {
        let next = tokio::select! {
            biased;
            () = &mut gone => {
                drop(responses);
                return send.abandon();
            }
            e = request_failure(&mut request_failed) => Some(Err(e)),
            next = responses.next() => next,
        };
        let message = match next {
            None => break None,
            Some(Err(e)) => break Some(e),
            Some(Ok(message)) => message,
        };
        let chunks: Vec<Bytes> = match encode_frame(message, limit) {
            Ok(chunks) => chunks,
            Err(e) => break Some(e),
        };
        let written = if S::WRITES_FAIL_WHEN_GONE {
            send.write_chunks(chunks, peer).await
        } else {
            tokio::select! {
                biased;
                () = &mut gone => {
                    drop(responses);
                    return send.abandon();
                }
                written = send.write_chunks(chunks, peer) => written,
            }
        };
        if written.is_err() {
            // The caller stopped reading, reset the stream, or the connection is gone.
            return;
        }
    };
    drop(responses);
    send.end(last.as_ref(), peer).await;
}
