//! The calling side: a substream per call, opened on the node shared with the DHT.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use averager_core::transport::frame::{
    FrameWrite, Hold, IoStream, Outgoing, Pump, encode_frame, pump_requests, reply_stream,
};
use averager_core::transport::{AveragingClient, AveragingData, MessageStream, RequestStream};
use averager_core::{Error, Result};
use averager_dht::streams::OpenError;
use averager_dht::{Libp2pNode, Stream};
use averager_proto::{DownloadData, DownloadRequest, JoinRequest, MessageFromLeader};
use futures::AsyncReadExt;
use tokio::sync::oneshot;

use crate::endpoint::Target;
use crate::protocol::Rpc;

/// A client of one peer.
pub(crate) struct Libp2pClient {
    pub(crate) node: Arc<Libp2pNode>,
    pub(crate) endpoint: String,
    pub(crate) target: Target,
    pub(crate) limit: usize,
    pub(crate) connect_timeout: Duration,
}

/// The core's error for a failed open.
pub(crate) fn open_error(endpoint: &str, error: OpenError) -> Error {
    match error {
        OpenError::Stopped => Error::Transport(format!("cannot call {endpoint}: {error}")),
        other => Error::Unreachable { endpoint: endpoint.to_string(), reason: other.to_string() },
    }
}

impl Libp2pClient {
    async fn open(&self, rpc: Rpc) -> Result<Stream> {
        let opening = self.node.open_stream(self.target.peer, rpc.protocol(), self.target.addresses.clone());
        match tokio::time::timeout(self.connect_timeout, opening).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(open_error(&self.endpoint, e)),
            Err(_) => Err(Error::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: format!("no substream within {:?}", self.connect_timeout),
            }),
        }
    }

    /// A unary call: one request frame, then the replies.
    async fn unary<Q: Outgoing, R: prost::Message + Default + 'static>(
        &self,
        rpc: Rpc,
        request: Q,
    ) -> Result<MessageStream<R>> {
        let chunks = encode_frame(request, self.limit)?;
        let (recv, send) = self.open(rpc).await?.split();
        let mut send = IoStream(send);
        send.write_chunks(chunks, &self.endpoint).await?;
        // The write half stays open: closing it would read, on the server, like the caller
        // going away. It is dropped with the reply stream, which resets the substream.
        Ok(reply_stream(IoStream(recv), self.limit, self.endpoint.clone(), Hold::Unary(send), CLOSED))
    }
}

#[async_trait]
impl AveragingClient for Libp2pClient {
    async fn rpc_join_group(&self, request: JoinRequest) -> Result<MessageStream<MessageFromLeader>> {
        self.unary(Rpc::Join, request).await
    }

    async fn rpc_aggregate_part(
        &self,
        requests: RequestStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let (recv, send) = self.open(Rpc::Aggregate).await?.split();
        let (cancel, cancelled) = oneshot::channel();
        let (failed_tx, failed) = oneshot::channel();
        tokio::spawn(pump_requests(
            IoStream(send),
            requests,
            self.limit,
            self.endpoint.clone(),
            cancelled,
            failed_tx,
        ));
        let pump = Pump::new(cancel, failed);
        Ok(reply_stream(IoStream(recv), self.limit, self.endpoint.clone(), Hold::<()>::Pump(pump), CLOSED))
    }

    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>> {
        self.unary(Rpc::Download, request).await
    }
}

/// What a reply stream's error says when the stream closes before the call ended.
const CLOSED: &str =
    "the substream closed before the call ended (the peer stopped serving or the connection was lost)";
