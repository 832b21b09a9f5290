//! The calling side: a substream per call, opened on the node shared with the DHT.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use averager_core::transport::frame::{
    Frame, FrameWrite, IoStream, Outgoing, decode, encode_frame, pump_requests, read_frame,
};
use averager_core::transport::{AveragingClient, AveragingData, MessageStream, RequestStream};
use averager_core::{Error, Result};
use averager_dht::streams::OpenError;
use averager_dht::{Libp2pNode, Stream};
use averager_proto::{DownloadData, DownloadRequest, JoinRequest, MessageFromLeader};
use futures::AsyncReadExt;
use futures::io::{ReadHalf, WriteHalf};
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
        Ok(response_stream(recv, self.limit, self.endpoint.clone(), Hold::Unary { _send: send }))
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
        let pump = Pump { _cancel: cancel, failed: Some(failed) };
        Ok(response_stream(recv, self.limit, self.endpoint.clone(), Hold::Pump(pump)))
    }

    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>> {
        self.unary(Rpc::Download, request).await
    }
}

/// What a reply stream keeps alive besides its read half.
enum Hold {
    /// A unary call's write half, held only to keep the caller's side open.
    Unary { _send: IoStream<WriteHalf<Stream>> },
    /// The task sending an aggregate call's requests.
    Pump(Pump),
}

/// The link from a reply stream to its request pump.
struct Pump {
    /// Dropped with the reply stream (or at its end): the pump drops the caller's request stream
    /// and its write half.
    _cancel: oneshot::Sender<()>,
    /// The pump's report of a request over the cap.
    failed: Option<oneshot::Receiver<Error>>,
}

/// The caller's reply stream: frames read from `recv` until the server's end frame, an error
/// frame, or a failure. Dropping it resets the substream (the server drops the handler) and
/// cancels the request pump.
fn response_stream<R: prost::Message + Default + 'static>(
    recv: ReadHalf<Stream>,
    limit: usize,
    peer: String,
    hold: Hold,
) -> MessageStream<R> {
    struct State {
        recv: IoStream<ReadHalf<Stream>>,
        limit: usize,
        peer: String,
        hold: Hold,
    }
    async fn pump_failure(hold: &mut Hold) -> Error {
        if let Hold::Pump(pump) = hold
            && let Some(rx) = pump.failed.as_mut()
        {
            let received = rx.await;
            pump.failed = None;
            if let Ok(e) = received {
                return e;
            }
        }
        std::future::pending().await
    }
    let state = State { recv: IoStream(recv), limit, peer, hold };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        let read = tokio::select! {
            biased;
            e = pump_failure(&mut state.hold) => Err(e),
            read = read_frame(&mut state.recv, state.limit, true, &state.peer) => read,
        };
        match read {
            Ok(Frame::Message(bytes)) => match decode::<R>(bytes, &state.peer) {
                Ok(message) => Some((Ok(message), Some(state))),
                Err(e) => Some((Err(e), None)),
            },
            Ok(Frame::End) => None,
            Ok(Frame::Closed) => Some((
                Err(Error::Unreachable {
                    endpoint: state.peer.clone(),
                    reason: "the substream closed before the call ended (the peer stopped serving \
                             or the connection was lost)"
                        .into(),
                }),
                None,
            )),
            Ok(Frame::Failure(e)) | Err(e) => Some((Err(e), None)),
        }
    }))
}
