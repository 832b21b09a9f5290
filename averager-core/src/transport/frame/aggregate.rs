//! The server side of an `rpc_aggregate_part` call on a stream transport (TCP, libp2p): a reader
//! task feeds the handler's requests while the reply loop streams its answers, and a request the
//! caller must not send, or the caller going away, ends the call.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use super::{FirstRequest, FrameRead, ReplySink, Request, read_request, respond};
use crate::error::{Error, Result};
use crate::transport::{AveragingData, AveragingService, CallContext, MessageStream};

/// Serves one `rpc_aggregate_part` call whose requests arrive on `recv` and whose replies go to
/// `send`, until the handler's replies end, a request is refused (the caller hears its error), or
/// the caller goes away.
///
/// `caller_gone` is how the transport tells, once the caller sent its end frame, that it went
/// away: it resolves when the caller's side ends (a close, a reset, or any further byte).
// One argument per thing a transport's call task holds; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn serve_aggregate<R, S, G, F>(
    service: &dyn AveragingService,
    context: CallContext,
    recv: R,
    send: S,
    limit: usize,
    first: FirstRequest,
    peer: &str,
    caller_gone: G,
) where
    R: FrameRead + 'static,
    S: ReplySink,
    G: FnOnce(R, String) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let (requests_tx, requests_rx) = mpsc::channel(1);
    let (failed_tx, failed_rx) = oneshot::channel();
    let failed = Report(Arc::new(Mutex::new(Some(failed_tx))));
    let (gone_tx, gone_rx) = oneshot::channel();
    let reader = Reader { recv, limit, peer: peer.to_string(), first };
    let reading = tokio::spawn(reader.run(requests_tx, failed.clone(), gone_tx, caller_gone));
    // A request error is reported to the caller when the handler reads it, so the handler hears
    // of it before the call ends with it.
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
        // Resolves only when the reader saw the caller go; a reader that ended for another
        // reason leaves the call to its replies.
        if gone_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let call = service.rpc_aggregate_part(context, requests);
    respond(send, call, limit, gone, Some(failed_rx), peer).await;
    reading.abort();
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
struct Reader<R> {
    recv: R,
    limit: usize,
    peer: String,
    /// When the first request must have arrived.
    first: FirstRequest,
}

impl<R: FrameRead + 'static> Reader<R> {
    /// Feeds the handler's request stream until the caller's end frame, then watches for the
    /// caller going away. An oversize, undecodable or late request ends the request stream with
    /// that error and is reported on `failed` (when the handler reads it, or at once if the
    /// handler is not reading), so the caller's reply stream ends with it; a stream that closes
    /// before the end frame is the caller cancelling (`gone`).
    async fn run<G, F>(
        mut self,
        requests: mpsc::Sender<Result<AveragingData>>,
        failed: Report,
        gone: oneshot::Sender<()>,
        caller_gone: G,
    ) where
        G: FnOnce(R, String) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
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
