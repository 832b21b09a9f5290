//! The swarm side of [`Streams`](super::Streams): routes each open to a connection with its peer,
//! dialling the peer first when there is none, and fails the opens a failed dial leaves behind.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, DialError, DialFailure, FromSwarm, NetworkBehaviour,
    NotifyHandler, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use super::handler::{Handler, Open};
use super::{Acceptors, OpenError, OpenRequest, Want};

/// See the module docs.
pub(crate) struct StreamBehaviour {
    acceptors: Acceptors,
    requests: mpsc::UnboundedReceiver<OpenRequest>,
    /// Established connections per peer.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Opens waiting for a connection to their peer.
    waiting: HashMap<PeerId, Vec<Want>>,
    events: VecDeque<ToSwarm<Infallible, Open>>,
}

impl StreamBehaviour {
    pub(crate) fn new(acceptors: Acceptors, requests: mpsc::UnboundedReceiver<OpenRequest>) -> Self {
        StreamBehaviour {
            acceptors,
            requests,
            connections: HashMap::new(),
            waiting: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    fn on_request(&mut self, OpenRequest { peer, addresses, want }: OpenRequest) {
        if let Some(&connection) = self.connections.get(&peer).and_then(|c| c.last()) {
            self.serve(peer, connection, want);
            return;
        }
        let waiting = self.waiting.entry(peer).or_default();
        let first = waiting.is_empty();
        waiting.push(want);
        if first || !addresses.is_empty() {
            // A dial while one is under way is refused by its condition; the opens wait for the
            // first dial's outcome either way.
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(addresses)
                .extend_addresses_through_behaviour()
                .build();
            self.events.push_back(ToSwarm::Dial { opts });
        }
    }

    /// Answers `want` on an established `connection` with `peer`.
    fn serve(&mut self, peer: PeerId, connection: ConnectionId, want: Want) {
        match want {
            Want::Stream(protocol, reply) => self.events.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(connection),
                event: Open { protocol, reply },
            }),
            Want::Connection(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn fail_waiting(&mut self, peer: PeerId, error: &OpenError) {
        for want in self.waiting.remove(&peer).unwrap_or_default() {
            match want {
                Want::Stream(_, reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Want::Connection(reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

impl NetworkBehaviour for StreamBehaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(peer, self.acceptors.clone()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(peer, self.acceptors.clone()))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { peer_id, connection_id, .. }) => {
                self.connections.entry(peer_id).or_default().push(connection_id);
                for want in self.waiting.remove(&peer_id).unwrap_or_default() {
                    self.serve(peer_id, connection_id, want);
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { peer_id, connection_id, .. }) => {
                if let Some(connections) = self.connections.get_mut(&peer_id) {
                    connections.retain(|c| *c != connection_id);
                    if connections.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            FromSwarm::DialFailure(DialFailure { peer_id: Some(peer), error, .. }) => {
                if self.connections.contains_key(&peer) {
                    return;
                }
                let error = match error {
                    // Another dial to the peer is under way; its outcome settles the opens.
                    DialError::DialPeerConditionFalse(_) => return,
                    DialError::NoAddresses => OpenError::NoAddresses(peer),
                    // Its Display says only "Dial error"; the cause says which behaviour refused.
                    DialError::Denied { cause } => {
                        let why =
                            std::error::Error::source(&cause).map_or(cause.to_string(), |c| c.to_string());
                        OpenError::Dial { peer, reason: format!("refused: {why}") }
                    }
                    other => OpenError::Dial { peer, reason: other.to_string() },
                };
                self.fail_waiting(peer, &error);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some(request)) = self.requests.poll_recv(cx) {
            self.on_request(request);
        }
        match self.events.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}
