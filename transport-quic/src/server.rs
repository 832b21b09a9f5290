//! The serving side: an accept loop per endpoint, a task per connection, a task per call.

use std::sync::Arc;
use std::time::Duration;

use averager_core::transport::frame::{FirstRequest, Request, read_request, read_unary, refuse, respond};
use averager_core::transport::{AveragingData, AveragingService, CallContext, MessageStream};
use averager_core::{Error, Result};
use averager_proto::{DownloadRequest, JoinRequest};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::{oneshot, watch};
use tokio::time::timeout_at;

use crate::frame::{self, CODE_CANCELLED, METHOD_AGGREGATE, METHOD_DOWNLOAD, METHOD_JOIN, Recv, Send};

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
async fn serve_call(send: SendStream, recv: RecvStream, serving: Serving, context: CallContext) {
    let peer = context.remote_address.clone().unwrap_or_default();
    let Serving { service, limit, first_request_timeout: wait, .. } = serving;
    let first = FirstRequest::from_now(wait);
    // The caller cancels by stopping its side of the stream (or losing the connection).
    let stopped = send.stopped();
    let gone = async move {
        let _ = stopped.await;
    };
    let (send, mut recv) = (Send(send), Recv(recv));
    let method = match timeout_at(first.deadline, frame::read_method(&mut recv.0)).await {
        Ok(Some(method)) => method,
        Ok(None) => return,
        Err(_) => {
            let e = Error::timeout("the caller's method byte", wait);
            let _ = recv.0.stop(CODE_CANCELLED);
            return refuse(send, &e, &peer).await;
        }
    };
    match method {
        METHOD_JOIN => match unary::<JoinRequest>(&mut recv, limit, first, &peer).await {
            Ok(request) => {
                respond(send, service.rpc_join_group(context, request), limit, gone, None, &peer).await
            }
            Err(e) => refuse(send, &e, &peer).await,
        },
        METHOD_DOWNLOAD => match unary::<DownloadRequest>(&mut recv, limit, first, &peer).await {
            Ok(request) => {
                respond(send, service.rpc_download_state(context, request), limit, gone, None, &peer).await
            }
            Err(e) => refuse(send, &e, &peer).await,
        },
        METHOD_AGGREGATE => {
            let (failed_tx, failed_rx) = oneshot::channel();
            let requests = request_stream(recv, limit, peer.clone(), first, failed_tx);
            let call = service.rpc_aggregate_part(context, requests);
            respond(send, call, limit, gone, Some(failed_rx), &peer).await;
        }
        other => {
            let e = Error::Transport(format!("unknown method byte {other}"));
            let _ = recv.0.stop(CODE_CANCELLED);
            refuse(send, &e, &peer).await;
        }
    }
}

/// Reads the single request of a unary call; a late one also stops the caller's side.
async fn unary<T: prost::Message + Default>(
    recv: &mut Recv,
    limit: usize,
    first: FirstRequest,
    peer: &str,
) -> Result<T> {
    let read = read_unary(recv, limit, first, peer).await;
    if let Err(Error::Timeout { .. }) = &read {
        let _ = recv.0.stop(CODE_CANCELLED);
    }
    read
}

/// The handler's request stream of `rpc_aggregate_part`: frames read from `recv` until the caller
/// finishes (clean end) or fails. The first frame must be there by `first.deadline`. An oversize,
/// undecodable or late request is also reported on `failed`, so the caller's reply stream ends
/// with it.
fn request_stream(
    recv: Recv,
    limit: usize,
    peer: String,
    first: FirstRequest,
    failed: oneshot::Sender<Error>,
) -> MessageStream<AveragingData> {
    struct State {
        recv: Recv,
        limit: usize,
        peer: String,
        first: Option<FirstRequest>,
        failed: Option<oneshot::Sender<Error>>,
    }
    let state = State { recv, limit, peer, first: Some(first), failed: Some(failed) };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        let error = match read_request(&mut state.recv, state.limit, &mut state.first, &state.peer).await {
            Request::Message(message) => return Some((Ok(message), Some(state))),
            // QUIC tells a finish from a reset, so a stream that ends is the caller's end.
            Request::End | Request::Closed => return None,
            Request::Refused(e) => e,
            // A reset or a lost connection: the caller is gone, nobody to report to.
            Request::Lost(e) => return Some((Err(e), None)),
        };
        if let Error::Timeout { .. } = error {
            let _ = state.recv.0.stop(CODE_CANCELLED);
        }
        if let Some(failed) = state.failed.take() {
            let _ = failed.send(error.clone());
        }
        Some((Err(error), None))
    }))
}
