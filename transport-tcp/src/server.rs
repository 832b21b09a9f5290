//! The serving side: an accept loop per endpoint and a task per connection, which is one call.
//!
//! A TCP peer that closes looks the same whether it finished or went away, so the caller's side
//! says its end with an end frame (aggregate) or by its one request (join, download), and keeps
//! the connection open until it drops its reply stream: a close after that point is the caller
//! cancelling, as on libp2p.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use averager_core::transport::frame::{
    FirstRequest, ReadBudget, Request, read_request, read_unary, refuse, respond,
};
use averager_core::transport::{AveragingData, AveragingService, CallContext, MessageStream};
use averager_core::{Error, Result};
use averager_proto::{DownloadRequest, JoinRequest};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
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
    let (recv, send) = stream.into_split();
    let context = CallContext { authenticated_peer: None, remote_address: Some(peer.clone()) };
    let Serving { service, limit, first_request_timeout: wait, budget, .. } = serving;
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
            let (requests_tx, requests_rx) = mpsc::channel(1);
            let (failed_tx, failed_rx) = oneshot::channel();
            let failed = Report(Arc::new(Mutex::new(Some(failed_tx))));
            let (gone_tx, gone_rx) = oneshot::channel();
            let reader = Reader { recv, limit, peer: peer.clone(), first };
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
            respond(send, call, limit, gone, Some(failed_rx), &peer).await;
            reading.abort();
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
    recv: Recv,
    limit: usize,
    peer: String,
    /// When the first request must have arrived.
    first: FirstRequest,
}

impl Reader {
    /// Feeds the handler's request stream until the caller's end frame, then watches for the
    /// caller going away. An oversize, undecodable or late request ends the request stream with
    /// that error and is reported on `failed` (when the handler reads it, or at once if the
    /// handler is not reading), so the caller's reply stream ends with it; a connection that
    /// closes before the end frame is the caller cancelling (`gone`).
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
                    caller_gone(self.recv, self.peer).await;
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
