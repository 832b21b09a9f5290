//! The per-connection side of [`Streams`](super::Streams): negotiates outbound substreams asked
//! for by the behaviour and hands inbound ones to their protocol's acceptor.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use libp2p::core::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{ConnectionHandler, ConnectionHandlerEvent, StreamUpgradeError, SubstreamProtocol};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

use super::{Acceptors, OpenError, accepted_protocols};

/// Where the outcome of one outbound open goes.
pub(crate) type OpenReply = oneshot::Sender<Result<Stream, OpenError>>;

/// What travels with an outbound negotiation: the protocol asked for, and where the outcome goes.
type Pending = (StreamProtocol, OpenReply);

/// A substream the behaviour wants opened on this connection.
#[derive(Debug)]
pub(crate) struct Open {
    pub(crate) protocol: StreamProtocol,
    pub(crate) reply: OpenReply,
}

/// Negotiates any of a list of protocols and yields the raw substream with the one chosen.
#[derive(Debug, Clone)]
pub(crate) struct Protocols(Vec<StreamProtocol>);

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

/// See the module docs.
pub(crate) struct Handler {
    remote: PeerId,
    acceptors: Acceptors,
    /// Opens asked for and not yet handed to the connection.
    queued: VecDeque<Open>,
}

impl Handler {
    pub(crate) fn new(remote: PeerId, acceptors: Acceptors) -> Self {
        Handler { remote, acceptors, queued: VecDeque::new() }
    }

    fn deliver(&self, protocol: StreamProtocol, stream: Stream) {
        let sender =
            self.acceptors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&protocol).cloned();
        let Some(sender) = sender else {
            tracing::debug!(%protocol, peer = %self.remote, "no acceptor; resetting an inbound substream");
            return;
        };
        if let Err(e) = sender.try_send((self.remote, stream)) {
            // Dropping the substream resets it: the opener sees its call fail rather than wait.
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the queue is full",
                mpsc::error::TrySendError::Closed(_) => "the acceptor is gone",
            };
            tracing::debug!(%protocol, peer = %self.remote, "resetting an inbound substream: {why}");
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Open;
    type ToBehaviour = Infallible;
    type InboundProtocol = Protocols;
    type OutboundProtocol = Protocols;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Pending;

    fn listen_protocol(&self) -> SubstreamProtocol<Protocols, ()> {
        SubstreamProtocol::new(Protocols(accepted_protocols(&self.acceptors)), ())
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Protocols, Pending, Infallible>> {
        match self.queued.pop_front() {
            Some(Open { protocol, reply }) => Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(Protocols(vec![protocol.clone()]), (protocol, reply)),
            }),
            None => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, open: Open) {
        self.queued.push_back(open);
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<'_, Protocols, Protocols, (), Pending>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => self.deliver(protocol, stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info: (_, reply),
            }) => {
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: (protocol, reply), error }) => {
                let peer = self.remote;
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => {
                        OpenError::Unsupported { peer, protocol: protocol.to_string() }
                    }
                    StreamUpgradeError::Timeout => {
                        OpenError::Io { peer, reason: "substream negotiation timed out".into() }
                    }
                    StreamUpgradeError::Io(e) => OpenError::Io { peer, reason: e.to_string() },
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}
