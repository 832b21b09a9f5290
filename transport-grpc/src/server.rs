//! The server half: the averager's [`AveragingService`] behind tonic's generated service.
//!
//! Every call watches the server's stop token: stopping the server fails the calls under way with
//! `Unavailable` (the caller sees `Error::Unreachable`) and drops the handler's streams, so
//! tonic's graceful shutdown never waits on an endless stream.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use averager_core::transport::{
    AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest, JoinRequest,
    MessageFromLeader, MessageStream, ServerHandle,
};
use averager_core::{Error, Result};
use averager_proto::server::{DecentralizedAveraging, DecentralizedAveragingServer};
use futures::{Stream, StreamExt, stream};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::connections::PeerInfo;
use crate::guard::GuardLayer;
use crate::status::{request_error, to_status, too_large};
use crate::{GrpcSettings, connections};

/// A response stream as tonic sends it.
type Outgoing<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Binds the listener, starts tonic on it (over TLS with `tls`) and returns once it accepts calls.
pub(crate) async fn serve(
    settings: &GrpcSettings,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: Arc<dyn AveragingService>,
) -> Result<ServerHandle> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| Error::Transport(format!("cannot listen on {}: {e}", settings.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Transport(format!("the listener on {} has no address: {e}", settings.listen)))?;
    let limit = settings.max_message_bytes;
    let wait = settings.first_request_timeout;
    let stop = CancellationToken::new();
    let adapter = Adapter { service, limit, wait, stop: stop.clone() };
    let grpc = DecentralizedAveragingServer::new(adapter)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(crate::STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(crate::CONNECTION_WINDOW_BYTES))
        .max_frame_size(Some(crate::MAX_FRAME_BYTES));
    if let Some(interval) = settings.keep_alive {
        builder = builder.http2_keepalive_interval(Some(interval)).http2_keepalive_timeout(Some(interval));
    }
    let connections = connections::accept(listener, tls, wait, stop.clone());
    let shutdown = stop.clone().cancelled_owned();
    let server = builder
        .layer(GuardLayer::new(limit, wait))
        .add_service(grpc)
        .serve_with_incoming_shutdown(connections, shutdown);
    tokio::spawn(async move {
        if let Err(e) = server.await {
            log_server_failure(&local, &e);
        }
    });
    Ok(ServerHandle::new(format!("grpc://{}", advertised(local)), move || stop.cancel()))
}

/// Where an unspecified listen address is reached from this host.
fn advertised(local: SocketAddr) -> SocketAddr {
    match local {
        SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, a.port())),
        SocketAddr::V6(a) if a.ip().is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, a.port())),
        other => other,
    }
}

/// The server task ended with an error: nobody awaits it, so the error goes to stderr.
fn log_server_failure(local: &SocketAddr, error: &tonic::transport::Error) {
    eprintln!("averager-transport-grpc: the server on {local} failed: {}", crate::status::chain(error));
}

/// The generated service, forwarding to the averager's handler.
struct Adapter {
    service: Arc<dyn AveragingService>,
    limit: usize,
    /// The first-request timeout, for the error a late request stream ends with.
    wait: Duration,
    stop: CancellationToken,
}

impl Adapter {
    /// What the connection's accept learned of the caller (tonic's `remote_addr` knows only its
    /// own connection types, not [`PeerInfo`]).
    fn context<T>(request: &Request<T>) -> CallContext {
        let Some(peer) = request.extensions().get::<PeerInfo>() else {
            return CallContext::default();
        };
        CallContext {
            authenticated_peer: peer.authenticated_peer.clone(),
            remote_address: peer.tcp.remote_addr().map(|a| a.to_string()),
        }
    }

    /// Runs the handler's start, unless the server stops first, and adapts its stream.
    async fn start<T, F>(&self, start: F) -> Result<Response<Outgoing<T>>, Status>
    where
        T: prost::Message + Send + 'static,
        F: Future<Output = Result<MessageStream<T>>> + Send,
    {
        if self.stop.is_cancelled() {
            return Err(stopped());
        }
        let responses = tokio::select! {
            biased;
            () = self.stop.cancelled() => return Err(stopped()),
            started = start => started.map_err(to_status)?,
        };
        Ok(Response::new(outgoing(responses, self.limit, self.stop.clone())))
    }
}

fn stopped() -> Status {
    Status::unavailable("the peer stopped serving")
}

/// The handler's stream as tonic's: checks each message against `limit`, ends with the first
/// error, and fails with `Unavailable` when the server stops. The handler's stream is dropped
/// before the last item goes out.
fn outgoing<T>(responses: MessageStream<T>, limit: usize, stop: CancellationToken) -> Outgoing<T>
where
    T: prost::Message + Send + 'static,
{
    Box::pin(stream::unfold(Some(responses), move |state| {
        let stop = stop.clone();
        async move {
            let mut responses = state?;
            let next = tokio::select! {
                biased;
                () = stop.cancelled() => return Some((Err(stopped()), None)),
                next = responses.next() => next,
            };
            match next {
                None => None,
                Some(Err(e)) => Some((Err(to_status(e)), None)),
                Some(Ok(message)) => {
                    let size = message.encoded_len();
                    if size > limit {
                        Some((Err(too_large(size, limit)), None))
                    } else {
                        Some((Ok(message), Some(responses)))
                    }
                }
            }
        }
    }))
}

/// The caller's request stream as the handler's: failures become errors, and the stream ends
/// after the first one.
fn incoming(
    requests: tonic::Streaming<AveragingData>,
    limit: usize,
    wait: Duration,
) -> MessageStream<AveragingData> {
    Box::pin(stream::unfold(Some(requests), move |state| async move {
        let mut requests = state?;
        match requests.message().await {
            Ok(Some(message)) => Some((Ok(message), Some(requests))),
            Ok(None) => None,
            Err(status) => Some((Err(request_error(&status, limit, wait)), None)),
        }
    }))
}

#[async_trait::async_trait]
impl DecentralizedAveraging for Adapter {
    type rpc_join_groupStream = Outgoing<MessageFromLeader>;
    type rpc_aggregate_partStream = Outgoing<AveragingData>;
    type rpc_download_stateStream = Outgoing<DownloadData>;

    async fn rpc_join_group(
        &self,
        request: Request<JoinRequest>,
    ) -> Result<Response<Self::rpc_join_groupStream>, Status> {
        let call = Self::context(&request);
        let service = self.service.clone();
        self.start(async move { service.rpc_join_group(call, request.into_inner()).await }).await
    }

    async fn rpc_aggregate_part(
        &self,
        request: Request<tonic::Streaming<AveragingData>>,
    ) -> Result<Response<Self::rpc_aggregate_partStream>, Status> {
        let call = Self::context(&request);
        let requests = incoming(request.into_inner(), self.limit, self.wait);
        let service = self.service.clone();
        self.start(async move { service.rpc_aggregate_part(call, requests).await }).await
    }

    async fn rpc_download_state(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::rpc_download_stateStream>, Status> {
        let call = Self::context(&request);
        let service = self.service.clone();
        self.start(async move { service.rpc_download_state(call, request.into_inner()).await }).await
    }
}
