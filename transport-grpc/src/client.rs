//! The client half: tonic's generated client behind the averager's [`AveragingClient`].

use std::future::Future;

use async_trait::async_trait;
use averager_core::transport::{
    AveragingClient, AveragingData, DownloadData, DownloadRequest, JoinRequest, MessageFromLeader,
    MessageStream, RequestStream,
};
use averager_core::{Error, Result};
use averager_proto::client::DecentralizedAveragingClient;
use futures::{StreamExt, stream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Response, Status, Streaming};

use crate::guard::ReplyGuard;
use crate::status::to_error;

/// How many requests of one `rpc_aggregate_part` wait between the caller's stream and HTTP/2.
const REQUEST_BUFFER: usize = 4;

/// A client of one `grpc://` endpoint, over the transport's shared channel.
pub(crate) struct GrpcClient {
    endpoint: String,
    inner: DecentralizedAveragingClient<ReplyGuard>,
    limit: usize,
}

impl GrpcClient {
    pub(crate) fn new(endpoint: &str, channel: Channel, limit: usize) -> Self {
        let inner = DecentralizedAveragingClient::new(ReplyGuard::new(channel, limit))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        GrpcClient { endpoint: endpoint.to_string(), inner, limit }
    }

    fn check_size(&self, message: &impl prost::Message) -> Result<()> {
        let size = message.encoded_len();
        if size > self.limit {
            return Err(Error::MessageTooLarge { size, limit: self.limit });
        }
        Ok(())
    }

    /// Awaits the call's response headers, or the request pump's failure if it comes first.
    async fn started<T>(
        &self,
        call: impl Future<Output = Result<Response<Streaming<T>>, Status>>,
        failed: &mut Option<oneshot::Receiver<Error>>,
    ) -> Result<Streaming<T>> {
        tokio::select! {
            biased;
            e = request_failure(failed) => Err(e),
            response = call => response.map(Response::into_inner).map_err(|s| to_error(&s, &self.endpoint, self.limit)),
        }
    }

    /// The call's replies as a [`MessageStream`]: ends at the first error or the request pump's
    /// failure, and stops the pump (dropping the caller's request stream) when the call ends.
    fn replies<T: Send + 'static>(
        &self,
        replies: Streaming<T>,
        failed: Option<oneshot::Receiver<Error>>,
        pump: Option<AbortOnDrop>,
    ) -> MessageStream<T> {
        let state =
            Reply { replies, failed, _pump: pump, endpoint: self.endpoint.clone(), limit: self.limit };
        Box::pin(stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            let next = tokio::select! {
                biased;
                e = request_failure(&mut state.failed) => return Some((Err(e), None)),
                next = state.replies.message() => next,
            };
            match next {
                Ok(Some(message)) => Some((Ok(message), Some(state))),
                Ok(None) => None,
                Err(status) => Some((Err(to_error(&status, &state.endpoint, state.limit)), None)),
            }
        }))
    }
}

/// The state of one call's reply stream.
struct Reply<T> {
    replies: Streaming<T>,
    failed: Option<oneshot::Receiver<Error>>,
    _pump: Option<AbortOnDrop>,
    endpoint: String,
    limit: usize,
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves with the request pump's failure, if it reports one; never resolves otherwise.
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

/// Moves the caller's requests into the HTTP/2 request body, refusing any over `limit`: then it
/// reports the failure and holds the body open, so the call is reset rather than ended cleanly.
async fn pump_requests(
    mut requests: RequestStream<AveragingData>,
    tx: mpsc::Sender<AveragingData>,
    limit: usize,
    failed: oneshot::Sender<Error>,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = tx.closed() => return,
            next = requests.next() => next,
        };
        let Some(message) = next else { return };
        let size = prost::Message::encoded_len(&message);
        if size > limit {
            drop(requests);
            let _ = failed.send(Error::MessageTooLarge { size, limit });
            tx.closed().await;
            return;
        }
        if tx.send(message).await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl AveragingClient for GrpcClient {
    async fn rpc_join_group(&self, request: JoinRequest) -> Result<MessageStream<MessageFromLeader>> {
        self.check_size(&request)?;
        let mut inner = self.inner.clone();
        let replies = self.started(inner.rpc_join_group(request), &mut None).await?;
        Ok(self.replies(replies, None, None))
    }

    async fn rpc_aggregate_part(
        &self,
        requests: RequestStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
        let (failed_tx, failed_rx) = oneshot::channel();
        let pump = AbortOnDrop(tokio::spawn(pump_requests(requests, tx, self.limit, failed_tx)));
        let mut failed = Some(failed_rx);
        let mut inner = self.inner.clone();
        let replies = self.started(inner.rpc_aggregate_part(ReceiverStream::new(rx)), &mut failed).await?;
        Ok(self.replies(replies, failed, Some(pump)))
    }

    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>> {
        self.check_size(&request)?;
        let mut inner = self.inner.clone();
        let replies = self.started(inner.rpc_download_state(request), &mut None).await?;
        Ok(self.replies(replies, None, None))
    }
}
