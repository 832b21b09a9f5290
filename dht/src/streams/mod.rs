//! Raw substreams on the node's connections, for protocols of other crates (the averager's
//! libp2p transport): [`Streams::open`] opens one to a peer on a protocol, dialling the peer when
//! no connection exists, and [`Streams::accept`] hands over every inbound substream of a
//! protocol.
//!
//! Unlike a request-response behaviour, the caller owns the substream and frames it as it likes.
//! Every outbound open carries its own reply channel through the connection handler, so opens to
//! one peer run concurrently; inbound substreams wait in a bounded queue per protocol (a full
//! queue resets the newest substream rather than growing).

mod behaviour;
mod handler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

pub(crate) use behaviour::StreamBehaviour;

/// How many inbound substreams of one protocol wait for their acceptor before new ones are reset.
pub const INBOUND_QUEUE: usize = 1024;

/// An inbound substream and the peer (proven by the connection's noise handshake) that opened it.
pub type Inbound = (PeerId, Stream);

/// Why a substream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Neither the caller, the routing table nor identify knows an address of the peer.
    #[error("no known address of {0}")]
    NoAddresses(PeerId),
    /// Dialling the peer failed.
    #[error("cannot dial {peer}: {reason}")]
    Dial {
        /// The peer dialled.
        peer: PeerId,
        /// Why the dial failed.
        reason: String,
    },
    /// The peer does not serve the protocol (or no longer does).
    #[error("{peer} does not serve {protocol}")]
    Unsupported {
        /// The peer asked.
        peer: PeerId,
        /// The protocol it refused.
        protocol: String,
    },
    /// The connection failed while the substream was being opened.
    #[error("opening a substream to {peer} failed: {reason}")]
    Io {
        /// The peer asked.
        peer: PeerId,
        /// What failed.
        reason: String,
    },
    /// The node has shut down.
    #[error("the libp2p node has shut down")]
    Stopped,
}

impl OpenError {
    /// Whether no connection to the peer could be made (so other addresses may do better).
    pub fn is_dial_failure(&self) -> bool {
        matches!(self, OpenError::NoAddresses(_) | OpenError::Dial { .. })
    }
}

/// What a [`Streams`] handle asks of a peer.
pub(crate) enum Want {
    /// A substream on a protocol.
    Stream(StreamProtocol, oneshot::Sender<Result<Stream, OpenError>>),
    /// Only a connection.
    Connection(oneshot::Sender<Result<(), OpenError>>),
}

/// A request from a [`Streams`] handle to the swarm's task.
pub(crate) struct OpenRequest {
    pub(crate) peer: PeerId,
    /// Addresses to dial when no connection exists, besides those the node already knows.
    pub(crate) addresses: Vec<Multiaddr>,
    pub(crate) want: Want,
}

/// The acceptors registered per protocol; shared with every connection handler, which reads it
/// for each inbound substream.
pub(crate) type Acceptors = Arc<Mutex<HashMap<StreamProtocol, mpsc::Sender<Inbound>>>>;

/// The protocols that have a live acceptor.
pub(crate) fn accepted_protocols(acceptors: &Acceptors) -> Vec<StreamProtocol> {
    let mut map = acceptors.lock().unwrap_or_else(PoisonError::into_inner);
    map.retain(|_, sender| !sender.is_closed());
    map.keys().cloned().collect()
}

/// Opens and accepts substreams on a node's swarm; cheap to clone.
#[derive(Clone)]
pub struct Streams {
    acceptors: Acceptors,
    opens: mpsc::UnboundedSender<OpenRequest>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").field("accepted", &accepted_protocols(&self.acceptors)).finish()
    }
}

impl Streams {
    /// A handle and the behaviour it talks to.
    pub(crate) fn new() -> (Streams, StreamBehaviour) {
        let acceptors: Acceptors = Arc::default();
        let (opens, requests) = mpsc::unbounded_channel();
        let behaviour = StreamBehaviour::new(Arc::clone(&acceptors), requests);
        (Streams { acceptors, opens }, behaviour)
    }

    /// Opens a substream to `peer` on `protocol`, dialling it first when there is no connection
    /// (with `addresses` and whatever addresses the node has learned of it). Waits without a
    /// bound of its own; callers wrap it in their connect timeout.
    ///
    /// # Errors
    /// An [`OpenError`] saying which step failed.
    pub async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        addresses: Vec<Multiaddr>,
    ) -> Result<Stream, OpenError> {
        let (reply, answer) = oneshot::channel();
        let want = Want::Stream(protocol, reply);
        self.opens.send(OpenRequest { peer, addresses, want }).map_err(|_| OpenError::Stopped)?;
        // The reply is dropped unanswered when the connection it was routed to closes first.
        answer.await.map_err(|_| OpenError::Io { peer, reason: "the connection closed".into() })?
    }

    /// Makes sure a connection to `peer` exists, dialling it as [`Streams::open`] would.
    ///
    /// # Errors
    /// An [`OpenError`] saying which step failed.
    pub async fn connect(&self, peer: PeerId, addresses: Vec<Multiaddr>) -> Result<(), OpenError> {
        let (reply, answer) = oneshot::channel();
        let want = Want::Connection(reply);
        self.opens.send(OpenRequest { peer, addresses, want }).map_err(|_| OpenError::Stopped)?;
        answer.await.map_err(|_| OpenError::Stopped)?
    }

    /// Takes every inbound substream of `protocol` from now on, until the returned receiver is
    /// dropped (then peers opening one get "unsupported protocol"). At most [`INBOUND_QUEUE`]
    /// wait unaccepted.
    ///
    /// # Errors
    /// [`averager_core::Error::Config`] when a live acceptor of `protocol` exists already.
    pub fn accept(&self, protocol: StreamProtocol) -> averager_core::Result<mpsc::Receiver<Inbound>> {
        let mut map = self.acceptors.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&protocol).is_some_and(|sender| !sender.is_closed()) {
            return Err(averager_core::Error::Config(format!(
                "libp2p: {protocol} is already served on this node"
            )));
        }
        let (sender, receiver) = mpsc::channel(INBOUND_QUEUE);
        map.insert(protocol, sender);
        Ok(receiver)
    }
}
