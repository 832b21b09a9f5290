//! protocol 2.2: the Transport trait, which moves the three RPCs of `DecentralizedAveraging`.
//!
//! A transport knows nothing of matchmaking or all-reduce. It serves an [`AveragingService`]
//! (the local protocol handler) at an endpoint, and dials other endpoints, returning an
//! [`AveragingClient`]. Streams carry proto messages; dropping either end of a stream cancels the
//! call, and the other end observes that promptly.

mod faults;
pub mod frame;
mod memory;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use averager_proto::{AveragingData, DownloadData, DownloadRequest, JoinRequest, MessageFromLeader};
use futures::Stream;

pub use faults::{Fault, FaultPlan, FaultRule, FaultyTransport, Rpc, RuleId};
pub use memory::{MemoryNetwork, MemorySettings, MemoryTransport};

use crate::error::Result;

/// A stream of messages received from the other side; an `Err` item ends it with a failure.
pub type MessageStream<T> = Pin<Box<dyn Stream<Item = Result<T>> + Send + 'static>>;

/// A stream of messages a caller sends; its end is the end of the caller's input.
pub type RequestStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// The default cap on one encoded message, in bytes, for every transport that has no other setting.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The default time a dial may take before it fails.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the transport knows about the caller of a served RPC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext {
    /// The caller's identity as authenticated by the transport (a certificate fingerprint, a peer
    /// id), when the transport authenticates; the core can check the caller's claimed endpoint
    /// against it.
    pub authenticated_peer: Option<String>,
    /// The caller's network address as seen by the transport, for logs.
    pub remote_address: Option<String>,
}

/// The three RPCs, as served by the local protocol handler.
///
/// # Behavior
/// An `Err` from a method means the call could not start (the transport reports it to the caller
/// as an error); protocol refusals are messages with a [`MessageCode`](averager_proto::MessageCode)
/// instead. Returned streams must stop promptly when dropped.
#[async_trait]
pub trait AveragingService: Send + Sync + 'static {
    /// `rpc_join_group`: a follower asks to join this peer's group (protocol 3.5).
    async fn rpc_join_group(
        &self,
        call: CallContext,
        request: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>>;

    /// `rpc_aggregate_part`: a sender streams its parts, this peer streams back averaged parts
    /// (protocol 4.5).
    async fn rpc_aggregate_part(
        &self,
        call: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>>;

    /// `rpc_download_state`: stream this peer's state to a newcomer (protocol 6.2).
    async fn rpc_download_state(
        &self,
        call: CallContext,
        request: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>>;
}

/// The three RPCs, as called on a remote peer.
///
/// # Behavior
/// Messages over the transport's `max_message_bytes` fail the call with
/// [`Error::MessageTooLarge`](crate::Error::MessageTooLarge) (on the call or as an item of the
/// response stream). Dropping the response stream cancels the call on the remote side.
#[async_trait]
pub trait AveragingClient: Send + Sync + 'static {
    /// Calls `rpc_join_group`.
    async fn rpc_join_group(&self, request: JoinRequest) -> Result<MessageStream<MessageFromLeader>>;

    /// Calls `rpc_aggregate_part`, streaming `requests` while replies stream back.
    async fn rpc_aggregate_part(
        &self,
        requests: RequestStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>>;

    /// Calls `rpc_download_state`.
    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>>;
}

/// What a transport offers, so the conformance suite tests what it honestly promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportCapabilities {
    /// The largest encoded message it carries, in bytes.
    pub max_message_bytes: usize,
    /// Whether [`CallContext::authenticated_peer`] is filled in for served calls.
    pub authenticated: bool,
}

/// Moves the `DecentralizedAveraging` RPCs between peers.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The endpoint scheme this transport serves and dials (`"mem"`, `"grpc"`, `"quic"`).
    fn scheme(&self) -> &str;

    /// What the transport offers.
    fn capabilities(&self) -> TransportCapabilities;

    /// **\[averager\]** A hint before each all-reduce: no single `rpc_aggregate_part` stream
    /// (a part stream this peer calls, or a reply stream it serves) should send faster than this
    /// many bytes per second; `None` lifts the limit. Transports that cannot pace a stream ignore
    /// it (the default).
    ///
    /// Why: on a rate-limited uplink shared by several TCP connections, one connection can be
    /// starved for seconds while the others take the link, and the reducer waiting for it
    /// leaves other links idle (`bench/README.md`). A cap well above each stream's fair share
    /// keeps any one connection from taking most of the link.
    fn set_stream_rate_limit(&self, bytes_per_second: Option<u64>) {
        let _ = bytes_per_second;
    }

    /// Starts serving `service`.
    ///
    /// # Behavior
    /// Returns once the endpoint accepts calls; the handle's [`ServerHandle::endpoint`] is the
    /// address other peers dial. Dropping the handle (or calling
    /// [`ServerHandle::shutdown`]) stops accepting calls.
    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle>;

    /// A client for the peer at `endpoint`.
    ///
    /// # Behavior
    /// A malformed endpoint, or one of another scheme, is an error at once. Connecting may be lazy,
    /// but an unreachable endpoint makes `connect` or the first call fail with
    /// [`Error::Unreachable`](crate::Error::Unreachable) within the connect timeout, never hang.
    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>>;
}

/// A running server: its endpoint, and a guard that stops it when dropped.
pub struct ServerHandle {
    endpoint: String,
    stop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl ServerHandle {
    /// A handle for a server reachable at `endpoint`, stopped by calling `stop`.
    pub fn new(endpoint: impl Into<String>, stop: impl FnOnce() + Send + Sync + 'static) -> Self {
        ServerHandle { endpoint: endpoint.into(), stop: Some(Box::new(stop)) }
    }

    /// The endpoint other peers dial.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Stops accepting calls (calls under way are cancelled).
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle").field("endpoint", &self.endpoint).finish()
    }
}

/// Splits `scheme://rest` into its scheme and the rest.
///
/// # Errors
/// [`Error::Config`](crate::Error::Config) when there is no `://`.
pub fn split_endpoint(endpoint: &str) -> Result<(&str, &str)> {
    endpoint
        .split_once("://")
        .filter(|(scheme, _)| !scheme.is_empty())
        .ok_or_else(|| crate::Error::Config(format!("endpoint {endpoint:?} has no scheme://")))
}
