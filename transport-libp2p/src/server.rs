//! The serving side: an accept loop per served node, a task per call.
//!
//! A caller that goes away resets its substream, which reads here as its end: after the request
//! of a unary call (or the end frame of an aggregate call's requests) nothing more may arrive, so
//! the end of the substream at that point is the caller cancelling.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use averager_core::transport::frame::{
    FirstRequest, IoStream, Request, read_request, read_unary, refuse, respond,
};
use averager_core::transport::{AveragingData, AveragingService, CallContext, MessageStream};
use averager_core::{Error, Result};
use averager_dht::{PeerId, Stream};
use averager_proto::{DownloadRequest, JoinRequest};
use futures::AsyncReadExt;
use futures::io::ReadHalf;
use tokio::sync::{mpsc, oneshot, watch};

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
            let (requests_tx, requests_rx) = mpsc::channel(1);
            let (failed_tx, failed_rx) = oneshot::channel();
            let failed = Report(Arc::new(Mutex::new(Some(failed_tx))));
            let (gone_tx, gone_rx) = oneshot::channel();
            let reader = Reader { recv, limit, peer: caller.clone(), first };
            let reading = tokio::spawn(reader.run(requests_tx, failed.clone(), gone_tx));
            // A request error is reported to the caller when the handler reads it, so the handler
            // hears of it before the call ends with it.
            let reported = failed;
            let requests: MessageStream<AveragingData> =
                Box::pin(futures::stream::unfold(requests_rx, move |mut rx| {
                    let reported = reported.clone();
                    async move {
                        let item = rx.recv().await?;
                        if let Err(e) = &item {
                            reported.send(e.clone());
                        }
                        Some((item, rx))
                    }
                }));
            let gone = async move {
                // Resolves only when the reader saw the caller go; a reader that ended for
                // another reason leaves the call to its replies.
                if gone_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let call = service.rpc_aggregate_part(context, requests);
            respond(send, call, limit, gone, Some(failed_rx), &caller).await;
            reading.abort();
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

/// Where an aggregate call's request error goes, once: to the reply loop, which ends the call
/// with it (taken by whichever of the reader and the handler's request stream reports first).
#[derive(Clone)]
struct Report(Arc<Mutex<Option<oneshot::Sender<Error>>>>);

impl Report {
    fn send(&self, error: Error) {
        if let Some(tx) = self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = tx.send(error);
        }
    }
}

/// The reading half of an aggregate call.
struct Reader {
    recv: IoStream<ReadHalf<Stream>>,
    limit: usize,
    peer: String,
    /// When the first request must have arrived.
    first: FirstRequest,
}

impl Reader {
    /// Feeds the handler's request stream until the caller's end frame, then watches for the
    /// caller going away. An oversize, undecodable or late request ends the request stream with
    /// that error and is reported on `failed` (when the handler reads it, or at once if the
    /// handler is not reading), so the caller's reply stream ends with it; a
    /// substream that closes before the end frame is the caller cancelling (`gone`).
    async fn run(
        mut self,
        requests: mpsc::Sender<Result<AveragingData>>,
        failed: Report,
        gone: oneshot::Sender<()>,
    ) {
        let mut first = Some(self.first);
        let error = loop {
            match read_request(&mut self.recv, self.limit, &mut first, &self.peer).await {
                Request::Message(message) => {
                    if requests.send(Ok(message)).await.is_err() {
                        // The handler stopped reading; its replies decide the rest.
                        break None;
                    }
                }
                Request::End => {
                    drop(requests);
                    caller_gone(self.recv.0, self.peer).await;
                    let _ = gone.send(());
                    return;
                }
                Request::Closed => {
                    let _ = requests.try_send(Err(Error::Cancelled(format!("{} went away", self.peer))));
                    let _ = gone.send(());
                    return;
                }
                Request::Refused(e) => break Some(e),
                Request::Lost(e) => {
                    let _ = requests.try_send(Err(e));
                    let _ = gone.send(());
                    return;
                }
            }
        };
        if let Some(error) = error
            && requests.try_send(Err(error.clone())).is_err()
        {
            failed.send(error);
        }
    }
}
