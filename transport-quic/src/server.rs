//! The serving side: an accept loop per endpoint, a task per connection, a task per call.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use averager_core::transport::{AveragingData, AveragingService, CallContext, MessageStream};
use averager_core::{Error, Result};
use averager_proto::{DownloadRequest, JoinRequest};
use futures::StreamExt;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, timeout_at};

use crate::frame::{
    self, CODE_CANCELLED, Frame, METHOD_AGGREGATE, METHOD_DOWNLOAD, METHOD_JOIN, Outgoing, decode,
    encode_frame, read_frame, write_error_frame, write_frame,
};

/// What every call task of one server shares.
#[derive(Clone)]
pub(crate) struct Serving {
    pub(crate) service: Arc<dyn AveragingService>,
    pub(crate) limit: usize,
    /// How long a call's method byte and first request may take to arrive.
    pub(crate) first_request_timeout: Duration,
    /// Becomes `true` when the server stops; every call task ends then.
    pub(crate) stopped: watch::Receiver<bool>,
}

/// Accepts connections until the endpoint closes.
pub(crate) async fn accept_loop(endpoint: Endpoint, serving: Serving) {
    while let Some(incoming) = endpoint.accept().await {
        let serving = serving.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => serve_connection(connection, serving).await,
                Err(e) => tracing::debug!("QUIC handshake failed: {e}"),
            }
        });
    }
}

async fn serve_connection(connection: Connection, serving: Serving) {
    let remote = connection.remote_address().to_string();
    while let Ok((send, recv)) = connection.accept_bi().await {
        let serving = serving.clone();
        let context = CallContext { authenticated_peer: None, remote_address: Some(remote.clone()) };
        tokio::spawn(async move {
            let mut stopped = serving.stopped.clone();
            tokio::select! {
                biased;
                _ = stopped.wait_for(|stopped| *stopped) => {}
                () = serve_call(send, recv, serving, context) => {}
            }
        });
    }
}

/// Runs one call: reads the method byte and the request(s), runs the handler, streams its replies.
///
/// The method byte and the first request must arrive within the first-request timeout of the
/// stream's arrival: a silent caller would otherwise hold the call's task (and, for a handler
/// that waits on it, the handler's state) for as long as it keeps the connection alive.
async fn serve_call(send: SendStream, mut recv: RecvStream, serving: Serving, context: CallContext) {
    let peer = context.remote_address.clone().unwrap_or_default();
    let Serving { service, limit, first_request_timeout: wait, .. } = serving;
    let deadline = Instant::now() + wait;
    let method = match timeout_at(deadline, frame::read_method(&mut recv)).await {
        Ok(Some(method)) => method,
        Ok(None) => return,
        Err(_) => {
            let e = Error::timeout("the caller's method byte", wait);
            let _ = recv.stop(CODE_CANCELLED);
            return fail(send, &e, &peer).await;
        }
    };
    match method {
        METHOD_JOIN => match read_one::<JoinRequest>(&mut recv, limit, deadline, wait, &peer).await {
            Ok(request) => respond(send, service.rpc_join_group(context, request), limit, None, &peer).await,
            Err(e) => fail(send, &e, &peer).await,
        },
        METHOD_DOWNLOAD => match read_one::<DownloadRequest>(&mut recv, limit, deadline, wait, &peer).await {
            Ok(request) => {
                respond(send, service.rpc_download_state(context, request), limit, None, &peer).await
            }
            Err(e) => fail(send, &e, &peer).await,
        },
        METHOD_AGGREGATE => {
            let (failed_tx, failed_rx) = oneshot::channel();
            let first = FirstRequest { deadline, wait };
            let requests = request_stream(recv, limit, peer.clone(), first, failed_tx);
            respond(send, service.rpc_aggregate_part(context, requests), limit, Some(failed_rx), &peer).await;
        }
        other => {
            let e = Error::Transport(format!("unknown method byte {other}"));
            let _ = recv.stop(CODE_CANCELLED);
            fail(send, &e, &peer).await;
        }
    }
}

/// The error a call whose first request did not come within `wait` ends with.
fn first_request_timed_out(wait: Duration) -> Error {
    Error::timeout("the caller's first request", wait)
}

/// Reads the single request of a unary call, by `deadline`.
async fn read_one<T: prost::Message + Default>(
    recv: &mut RecvStream,
    limit: usize,
    deadline: Instant,
    wait: Duration,
    peer: &str,
) -> Result<T> {
    let Ok(read) = timeout_at(deadline, read_frame(recv, limit, false, peer)).await else {
        let _ = recv.stop(CODE_CANCELLED);
        return Err(first_request_timed_out(wait));
    };
    match read? {
        Frame::Message(bytes) => decode(bytes, peer),
        Frame::End | Frame::Failure(_) => Err(Error::Transport(format!("{peer} sent no request"))),
    }
}

/// Sends an error frame and finishes the stream.
async fn fail(mut send: SendStream, error: &Error, peer: &str) {
    let _ = write_error_frame(&mut send, error, peer).await;
    let _ = send.finish();
}

/// When the first request of a stream must have arrived.
struct FirstRequest {
    deadline: Instant,
    wait: Duration,
}

/// The handler's request stream of `rpc_aggregate_part`: frames read from `recv` until the caller
/// finishes (clean end) or fails. The first frame must be there by `first.deadline`. An oversize,
/// undecodable or late request is also reported on `failed`, so the caller's reply stream ends
/// with it.
fn request_stream(
    recv: RecvStream,
    limit: usize,
    peer: String,
    first: FirstRequest,
    failed: oneshot::Sender<Error>,
) -> MessageStream<AveragingData> {
    struct State {
        recv: RecvStream,
        limit: usize,
        peer: String,
        first: Option<FirstRequest>,
        failed: Option<oneshot::Sender<Error>>,
    }
    let state = State { recv, limit, peer, first: Some(first), failed: Some(failed) };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        let reading = read_frame(&mut state.recv, state.limit, false, &state.peer);
        let read = match state.first.take() {
            None => reading.await,
            Some(first) => match timeout_at(first.deadline, reading).await {
                Ok(read) => read,
                Err(_) => {
                    let _ = state.recv.stop(CODE_CANCELLED);
                    Err(first_request_timed_out(first.wait))
                }
            },
        };
        let error = match read {
            Ok(Frame::End) => return None,
            Ok(Frame::Message(bytes)) => match decode::<AveragingData>(bytes, &state.peer) {
                Ok(message) => return Some((Ok(message), Some(state))),
                Err(e) => e,
            },
            Ok(Frame::Failure(e)) => e,
            Err(e @ (Error::MessageTooLarge { .. } | Error::Timeout { .. })) => e,
            // A reset or a lost connection: the caller is gone, nobody to report to.
            Err(e) => return Some((Err(e), None)),
        };
        if let Some(failed) = state.failed.take() {
            let _ = failed.send(error.clone());
        }
        Some((Err(error), None))
    }))
}

/// Resolves with the request stream's failure, if it reports one; never resolves otherwise.
async fn request_failure(slot: &mut Option<oneshot::Receiver<Error>>) -> Error {
    if let Some(rx) = slot.as_mut() {
        let received = rx.await;
        *slot = None;
        if let Ok(e) = received {
            return e;
        }
    }
    std::future::pending().await
}

/// Starts the handler and streams its replies until it ends, fails, or the caller cancels (stops
/// reading its side, or loses the connection); the handler's stream is dropped before the caller
/// sees the end.
async fn respond<T: Outgoing>(
    mut send: SendStream,
    start: impl Future<Output = Result<MessageStream<T>>>,
    limit: usize,
    mut request_failed: Option<oneshot::Receiver<Error>>,
    peer: &str,
) {
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let outcome = tokio::select! {
        biased;
        _ = &mut stopped => return,
        outcome = start => outcome,
    };
    let mut responses = match outcome {
        Ok(responses) => responses,
        Err(e) => return fail(send, &e, peer).await,
    };
    let last = loop {
        let next = tokio::select! {
            biased;
            _ = &mut stopped => {
                drop(responses);
                let _ = send.reset(CODE_CANCELLED);
                return;
            }
            e = request_failure(&mut request_failed) => Some(Err(e)),
            next = responses.next() => next,
        };
        let message = match next {
            None => break None,
            Some(Err(e)) => break Some(e),
            Some(Ok(message)) => message,
        };
        let chunks = match encode_frame(message, limit) {
            Ok(chunks) => chunks,
            Err(e) => break Some(e),
        };
        if write_frame(&mut send, chunks, peer).await.is_err() {
            // The caller stopped reading or the connection is gone: the call is over.
            return;
        }
    };
    drop(responses);
    if let Some(e) = last {
        let _ = write_error_frame(&mut send, &e, peer).await;
    }
    let _ = send.finish();
}
