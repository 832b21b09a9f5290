//! The driver's NAT traversal side: listening through relays, configured external addresses, and
//! turning relay, AutoNAT and DCUtR events into the node's [`NatReport`].

use std::time::Duration;

use averager_core::{Error, Result};
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, autonat, dcutr, relay};

use super::{Driver, Shared};
use crate::reachability::{Nat, NatReport};

/// How often a relay whose listener failed (a refused reservation, a lost connection to the
/// relay) is asked again.
pub(crate) const RELAY_RETRY: Duration = Duration::from_secs(5);

/// The relays a node listens through, each with its live listener (none after it failed).
///
/// libp2p's relay client drops a listener whose reservation is refused and does not ask again;
/// a relay refuses while it has no confirmed external address of its own (its reservations
/// must name one), which happens while it starts.
#[derive(Debug, Default)]
pub(crate) struct RelayListeners(Vec<(Multiaddr, Option<ListenerId>)>);

impl RelayListeners {
    /// A listener ended: its relay is asked again at the next retry.
    pub(crate) fn closed(&mut self, listener: ListenerId) {
        for (_, live) in &mut self.0 {
            if *live == Some(listener) {
                *live = None;
            }
        }
    }
}

impl Driver {
    /// Listens again through every relay whose listener has ended.
    pub(crate) fn relisten_relays(&mut self) {
        for (circuit, live) in &mut self.relays.0 {
            if live.is_none() {
                match self.swarm.listen_on(circuit.clone()) {
                    Ok(id) => *live = Some(id),
                    Err(e) => tracing::debug!(%circuit, error = %e, "cannot listen through the relay"),
                }
            }
        }
    }

    /// Takes `addrs` as confirmed external addresses: advertised to peers, and the node counts
    /// as directly reachable.
    pub(crate) fn add_external_addrs(&mut self, addrs: &[Multiaddr]) {
        for addr in addrs {
            self.swarm.add_external_address(addr.clone());
        }
        if !addrs.is_empty() {
            edit_report(&self.shared, |r| r.configured_external = true);
        }
    }

    /// Listens on `<relay>/p2p-circuit` for each relay (each ending in `/p2p/<relay id>`) and
    /// waits until every relay has granted a reservation, at most `limit`.
    ///
    /// # Errors
    /// [`Error::Config`] when the swarm refuses such an address; [`Error::Timeout`] when a
    /// relay has not granted a reservation within `limit` (the node keeps asking, every
    /// [`RELAY_RETRY`]).
    pub(crate) async fn listen_through_relays(
        &mut self,
        relays: &[Multiaddr],
        limit: Duration,
    ) -> Result<()> {
        let mut wanted = Vec::new();
        for relay in relays {
            let Some(Protocol::P2p(relay_peer)) = relay.iter().last() else {
                return Err(Error::Config(format!("relay {relay} must end in /p2p/<relay peer id>")));
            };
            let circuit = relay.clone().with(Protocol::P2pCircuit);
            let id = self
                .swarm
                .listen_on(circuit.clone())
                .map_err(|e| Error::Config(format!("cannot listen through relay {circuit}: {e}")))?;
            self.relays.0.push((circuit, Some(id)));
            wanted.push(relay_peer);
        }
        let shared = std::sync::Arc::clone(&self.shared);
        let granted = || {
            let report = shared.nat.borrow();
            wanted.iter().all(|peer| report.relays.contains(peer))
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Error::timeout("a reservation on every relay", limit));
            }
            let waited = self
                .drive_until(RELAY_RETRY.min(left), "a reservation", |_| granted().then_some(Ok(())))
                .await;
            match waited {
                Ok(()) => return Ok(()),
                Err(Error::Timeout { .. }) => self.relisten_relays(),
                Err(e) => return Err(e),
            }
        }
    }
}

/// A relay server event (this node relaying for others): logged only.
pub(super) fn on_relay(event: relay::Event) {
    match event {
        relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
            tracing::debug!(peer = %src_peer_id, "serving as relay for a peer");
        }
        relay::Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
            tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "relaying a connection");
        }
        relay::Event::CircuitClosed { src_peer_id, dst_peer_id, error } => {
            tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "a relayed connection closed");
        }
        other => tracing::debug!(event = ?other, "relay server"),
    }
}

/// A relay client event: a reservation granted makes the node reachable through that relay.
pub(super) fn on_relay_client(shared: &Shared, event: relay::client::Event) {
    match event {
        relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, .. } => {
            if !renewal {
                tracing::info!(relay = %relay_peer_id, "reachable through a relay");
            }
            edit_report(shared, |r| {
                r.relays.insert(relay_peer_id);
            });
        }
        relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
            tracing::debug!(relay = %relay_peer_id, "dialled a peer through a relay");
        }
        relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
            tracing::debug!(peer = %src_peer_id, "a peer connected through a relay");
        }
    }
}

/// AutoNAT's verdict on whether this node is reachable.
pub(super) fn on_autonat(shared: &Shared, event: autonat::Event) {
    if let autonat::Event::StatusChanged { old, new } = event {
        tracing::info!(?old, ?new, "AutoNAT status changed");
        let nat = match new {
            autonat::NatStatus::Public(_) => Nat::Public,
            autonat::NatStatus::Private => Nat::Private,
            autonat::NatStatus::Unknown => Nat::Unknown,
        };
        edit_report(shared, |r| r.nat = nat);
    }
}

/// A hole punch's outcome: on success the peer is reached directly from now on.
pub(super) fn on_dcutr(shared: &Shared, event: dcutr::Event) {
    match event.result {
        Ok(_) => {
            tracing::info!(peer = %event.remote_peer_id, "hole punch succeeded: direct connection");
            edit_report(shared, |r| {
                r.hole_punched.insert(event.remote_peer_id);
            });
        }
        Err(e) => {
            tracing::info!(peer = %event.remote_peer_id, error = %e, "hole punch failed; staying relayed");
        }
    }
}

/// A listen address went away: when it was a relay's circuit address, the reservation is gone.
pub(super) fn on_address_gone(shared: &Shared, address: &Multiaddr) {
    if let Some(relay) = relay_of_circuit(address) {
        tracing::info!(%relay, %address, "no longer listening through the relay");
        edit_report(shared, |r| {
            r.relays.remove(&relay);
        });
    }
}

/// The relay of a `/.../p2p/<relay>/p2p-circuit[/...]` address.
fn relay_of_circuit(address: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for protocol in address.iter() {
        match protocol {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

fn edit_report(shared: &Shared, edit: impl FnOnce(&mut NatReport)) {
    shared.nat.send_if_modified(|report| {
        let before = report.clone();
        edit(report);
        *report != before
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_of_a_circuit_address_is_the_peer_before_p2p_circuit() {
        let relay = PeerId::random();
        let me = PeerId::random();
        let addr: Multiaddr =
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{me}").parse().unwrap();
        assert_eq!(relay_of_circuit(&addr), Some(relay));
        let direct: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}").parse().unwrap();
        assert_eq!(relay_of_circuit(&direct), None);
    }
}
