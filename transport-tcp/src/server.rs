//! The serving side: an accept loop per endpoint and a task per connection, which is one call.
//!
//! A TCP peer that closes looks the same whether it finished or went away, so the caller's side
//! says its end with an end frame (aggregate) or by its one request (join, download), and keeps
//! the connection open until it drops its reply stream: a close after that point is the caller
//! cancelling, as on libp2p.

use std::sync::Arc;
use std::time::Duration;

use averager_core::Error;
use averager_core::transport::frame::{
    FirstRequest, ReadBudget, read_unary, refuse, respond, serve_aggregate,
};
use averager_core::transport::{AveragingService, CallContext};
use averager_proto::{DownloadRequest, JoinRequest};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout_at;

use crate::io::{METHOD_AGGREGATE, METHOD_DOWNLOAD, METHOD_JOIN, Recv, Send, read_method};

/// How long the accept loop pauses after a failed accept (out of file descriptors, say), so that
/// it does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What every call task of one server shares.
#[derive(Clone)]
pub(crate) struct Serving {
    pub(crate) service: Arc<dyn AveragingService>,
    pub(crate) limit: usize,
    /// How long a call's method byte and first request may take to arrive.
    pub(crate) first_request_timeout: Duration,
    /// Becomes `true` when the server stops; every call task ends then.
    pub(crate) stopped: watch::Receiver<bool>,
    /// The transport's budget for frames read at their announced size.
    pub(crate) budget: ReadBudget,
    /// The transport's cap on each reply stream's rate.
    pub(crate) rate: crate::io::StreamRateLimit,
}

/// Accepts connections until the server stops (the task is aborted).
pub(crate) async fn accept_loop(listener: TcpListener, serving: Serving) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("accepting a TCP connection failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let serving = serving.clone();
        tokio::spawn(async move {
            let mut stopped = serving.stopped.clone();
            tokio::select! {
                biased;
                _ = stopped.wait_for(|stopped| *stopped) => {}
                () = serve_call(stream, remote.to_string(), serving) => {}
            }
        });
    }
}

/// Runs one call: reads the method byte and the request(s), runs the handler, streams its replies.
///
/// The method byte and the first request must arrive within the first-request timeout of the
/// connection's arrival: a silent caller would otherwise hold the call's task (and, for a handler
/// that waits on it, the handler's state) for as long as it keeps the connection open.
async fn serve_call(stream: TcpStream, peer: String, serving: Serving) {
    // Replies are frames whose last bytes (an end frame) must not wait for an acknowledgement.
    let _ = stream.set_nodelay(true);
    crate::io::tune_same_host(&stream);
    let (recv, send) = stream.into_split();
    let context = CallContext { authenticated_peer: None, remote_address: Some(peer.clone()) };
    let Serving { service, limit, first_request_timeout: wait, budget, rate, .. } = serving;
    let (mut recv, send) = (Recv(recv, budget), Send(send));
    let first = FirstRequest::from_now(wait);
    let method = match timeout_at(first.deadline, read_method(&mut recv)).await {
        Ok(Some(method)) => method,
        // A dial that was never used (a client dropped before its first call).
        Ok(None) => return,
        Err(_) => return refuse(send, &Error::timeout("the caller's method byte", wait), &peer).await,
    };
    match method {
        METHOD_JOIN => match read_unary::<JoinRequest, _>(&mut recv, limit, first, &peer).await {
            Ok(request) => {
                let call = service.rpc_join_group(context, request);
                respond(send, call, limit, caller_gone(recv, peer.clone()), None, &peer).await
            }
            Err(e) => refuse(send, &e, &peer).await,
        },
        METHOD_DOWNLOAD => match read_unary::<DownloadRequest, _>(&mut recv, limit, first, &peer).await {
            Ok(request) => {
                let call = service.rpc_download_state(context, request);
                respond(send, call, limit, caller_gone(recv, peer.clone()), None, &peer).await
            }
            Err(e) => refuse(send, &e, &peer).await,
        },
        METHOD_AGGREGATE => {
            rate.apply(send.0.as_ref());
            serve_aggregate(&*service, context, recv, send, limit, first, &peer, caller_gone).await;
        }
        other => refuse(send, &Error::Transport(format!("unknown method byte {other}")), &peer).await,
    }
}

/// Resolves when the caller's side of a call ends after its last request: the caller sends
/// nothing more, so a close, a reset or any further byte ends the call.
async fn caller_gone(mut recv: Recv, caller: String) {
    match recv.0.read_u8().await {
        Err(_) => tracing::debug!(%caller, "the caller went away"),
        Ok(_) => tracing::debug!(%caller, "the caller sent more than its requests; ending the call"),
    }
}
