//! A short memory of peers that could not be dialled, so Kademlia's queries skip them at once.
//!
//! When a node leaves, the peers that never dialled it keep it in their routing tables and
//! keep naming it to others in their answers. Every query that hears of it would dial it and,
//! since Kademlia waits for the closest peers it has heard of, wait for that dial to fail: seconds
//! for a QUIC dial to a dead address, per query. This behaviour remembers, for
//! [`UNREACHABLE_BACKOFF`], each peer all of whose addresses just failed, and refuses further
//! dials to it at once, so a query counts it as failed without waiting. Any connection with the
//! peer (it dialled us, or another dial got through) clears the memory, and so does a lookup
//! of the peer (`Libp2pNode::find_peer`), which must be free to dial it where it learns to. A dial that names an
//! address not among those that failed goes ahead: a peer behind a NAT is first heard of with
//! its private addresses only, and its relayed address, learned a moment later, must not wait
//! out the backoff.

use std::collections::HashMap;
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, DialError, DialFailure, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// How long a peer whose dial failed is not dialled again.
pub(crate) const UNREACHABLE_BACKOFF: Duration = Duration::from_secs(60);

/// The refusal a dial to a recently unreachable peer gets.
#[derive(Debug, thiserror::Error)]
#[error("peer was unreachable less than {UNREACHABLE_BACKOFF:?} ago")]
struct RecentlyUnreachable;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Unreachable {
    /// Until when each peer is not dialled, and the addresses that failed (without `/p2p`).
    until: HashMap<PeerId, (Instant, Vec<Multiaddr>)>,
}

/// The most failed addresses remembered per peer: a hostile peer may advertise many.
const MAX_FAILED_ADDRESSES: usize = 32;

impl Unreachable {
    fn mark(&mut self, peer: PeerId, now: Instant, failed: impl IntoIterator<Item = Multiaddr>) {
        // Dropping lapsed entries here keeps the map as small as the recent failures.
        self.until.retain(|_, (until, _)| *until > now);
        let (until, addresses) = self.until.entry(peer).or_insert_with(|| (now, Vec::new()));
        *until = now + UNREACHABLE_BACKOFF;
        for addr in failed.into_iter().map(without_p2p) {
            if !addresses.contains(&addr) && addresses.len() < MAX_FAILED_ADDRESSES {
                addresses.push(addr);
            }
        }
    }

    /// Forgets that `peer` was unreachable: its next dial goes ahead whatever its addresses.
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.until.remove(peer);
    }

    fn is_marked(&self, peer: &PeerId, now: Instant) -> bool {
        self.until.get(peer).is_some_and(|(until, _)| *until > now)
    }

    /// Whether a dial of a marked `peer` at `addresses` only repeats what failed.
    fn only_failed(&self, peer: &PeerId, addresses: &[Multiaddr]) -> bool {
        let failed = self.until.get(peer).map(|(_, failed)| failed.as_slice()).unwrap_or_default();
        addresses.iter().all(|addr| failed.contains(&without_p2p(addr.clone())))
    }
}

fn without_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

impl NetworkBehaviour for Unreachable {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        match maybe_peer {
            Some(peer) if self.is_marked(&peer, Instant::now()) && self.only_failed(&peer, addresses) => {
                Err(ConnectionDenied::new(RecentlyUnreachable))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(established) => {
                self.until.remove(&established.peer_id);
            }
            // Only a dial that tried every address and failed: a refusal by this behaviour (or
            // another) says nothing new about the peer.
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error: DialError::Transport(failures),
                ..
            }) => {
                self.mark(peer, Instant::now(), failures.iter().map(|(addr, _)| addr.clone()));
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_peer_is_refused_until_the_backoff_lapses() {
        let mut memory = Unreachable::default();
        let (dead, alive) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let failed: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().unwrap();
        memory.mark(dead, now, [failed.clone().with(libp2p::multiaddr::Protocol::P2p(dead))]);
        assert!(memory.is_marked(&dead, now));
        assert!(!memory.is_marked(&alive, now));
        assert!(!memory.is_marked(&dead, now + UNREACHABLE_BACKOFF));
        assert!(
            memory
                .handle_pending_outbound_connection(
                    ConnectionId::new_unchecked(1),
                    Some(dead),
                    &[],
                    Endpoint::Dialer
                )
                .is_err()
        );
        assert!(
            memory
                .handle_pending_outbound_connection(
                    ConnectionId::new_unchecked(2),
                    Some(alive),
                    &[],
                    Endpoint::Dialer
                )
                .is_ok()
        );
        // Only the failed address again: refused; a new one: tried.
        let relayed: Multiaddr = "/ip4/10.0.0.2/tcp/1/p2p-circuit".parse().unwrap();
        let dial = |memory: &mut Unreachable, addrs: &[Multiaddr]| {
            memory.handle_pending_outbound_connection(
                ConnectionId::new_unchecked(3),
                Some(dead),
                addrs,
                Endpoint::Dialer,
            )
        };
        assert!(dial(&mut memory, std::slice::from_ref(&failed)).is_err());
        assert!(dial(&mut memory, &[failed, relayed]).is_ok());
        memory.forget(&dead);
        assert!(dial(&mut memory, &[]).is_ok(), "a forgotten peer is dialled again");
        // Marking another peer later drops the lapsed entry.
        memory.mark(alive, now + UNREACHABLE_BACKOFF, []);
        assert_eq!(memory.until.len(), 1);
    }
}
