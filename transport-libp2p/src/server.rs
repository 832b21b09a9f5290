//! The serving side: an accept loop per served node, a task per call.
//!
//! A caller that goes away resets its substream, which reads here as its end: after the request
//! of a unary call (or the end frame of an aggregate call's requests) nothing more may arrive, so
//! the end of the substream at that point is the caller cancelling.

use std::sync::Arc;
use std::time::Duration;

use averager_core::transport::frame::{FirstRequest, IoStream, read_unary, refuse, respond, serve_aggregate};
use averager_core::transport::{AveragingService, CallContext};
use averager_dht::{PeerId, Stream};
use averager_proto::{DownloadRequest, JoinRequest};
use futures::AsyncReadExt;
use futures::io::ReadHalf;
use tokio::sync::{mpsc, watch};

use crate::endpoint::endpoint_of;
use crate::protocol::Rpc;

/// What every call task of one server shares.
#[derive(Clone)]
pub(crate) struct Serving {
    pub(crate) service: Arc<dyn AveragingService>,
    pub(crate) limit: usize,
    /// How long a call's request (or first request) may take to arrive.
    pub(crate) first_request_timeout: Duration,
    /// Becomes `true` when the server stops; every call task ends then.
    pub(crate) stopped: watch::Receiver<bool>,
}

/// The inbound substreams of the three RPCs.
pub(crate) struct Inbound {
    pub(crate) join: mpsc::Receiver<(PeerId, Stream)>,
    pub(crate) aggregate: mpsc::Receiver<(PeerId, Stream)>,
    pub(crate) download: mpsc::Receiver<(PeerId, Stream)>,
}

/// Accepts calls until the server stops.
pub(crate) async fn accept_loop(mut inbound: Inbound, serving: Serving) {
    let mut stopped = serving.stopped.clone();
    loop {
        let (rpc, (peer, stream)) = tokio::select! {
            biased;
            _ = stopped.wait_for(|stopped| *stopped) => return,
            Some(call) = inbound.join.recv() => (Rpc::Join, call),
            Some(call) = inbound.aggregate.recv() => (Rpc::Aggregate, call),
            Some(call) = inbound.download.recv() => (Rpc::Download, call),
            else => return,
        };
        let serving = serving.clone();
        tokio::spawn(async move {
            let mut stopped = serving.stopped.clone();
            tokio::select! {
                biased;
                _ = stopped.wait_for(|stopped| *stopped) => {}
                () = serve_call(rpc, peer, stream, serving) => {}
            }
        });
    }
}

/// Runs one call: reads the request(s), runs the handler, streams its replies.
async fn serve_call(rpc: Rpc, peer: PeerId, stream: Stream, serving: Serving) {
    let (recv, send) = stream.split();
    let (mut recv, send) = (IoStream(recv), IoStream(send));
    let caller = endpoint_of(&peer);
    // The noise handshake proved the peer id of the connection the substream came on.
    let context =
        CallContext { authenticated_peer: Some(caller.clone()), remote_address: Some(peer.to_string()) };
    let Serving { service, limit, first_request_timeout: wait, .. } = serving;
    let first = FirstRequest::from_now(wait);
    match rpc {
        Rpc::Join => match read_unary::<JoinRequest, _>(&mut recv, limit, first, &caller).await {
            Ok(request) => {
                let call = service.rpc_join_group(context, request);
                respond(send, call, limit, caller_gone(recv.0, caller.clone()), None, &caller).await
            }
            Err(e) => refuse(send, &e, &caller).await,
        },
        Rpc::Download => match read_unary::<DownloadRequest, _>(&mut recv, limit, first, &caller).await {
            Ok(request) => {
                let call = service.rpc_download_state(context, request);
                respond(send, call, limit, caller_gone(recv.0, caller.clone()), None, &caller).await
            }
            Err(e) => refuse(send, &e, &caller).await,
        },
        Rpc::Aggregate => {
            serve_aggregate(
                &*service,
                context,
                recv,
                send,
                limit,
                first,
                &caller,
                |recv: IoStream<ReadHalf<Stream>>, caller| caller_gone(recv.0, caller),
            )
            .await;
        }
    }
}

/// Resolves when the caller's side of a unary call ends: after its one request the caller sends
/// nothing, so any end (a reset, a lost connection) or any further byte ends the call.
async fn caller_gone(mut recv: ReadHalf<Stream>, caller: String) {
    let mut byte = [0u8; 1];
    match recv.read(&mut byte).await {
        Ok(0) | Err(_) => tracing::debug!(%caller, "the caller went away"),
        Ok(_) => tracing::debug!(%caller, "the caller sent more than its one request; ending the call"),
    }
}
