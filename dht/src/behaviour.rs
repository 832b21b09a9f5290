//! The libp2p side of a node: transports (TCP and QUIC, noise, yamux) and its protocols: Kademlia
//! over the merging store, identify, and raw substreams for other crates ([`crate::streams`]).
//!
//! Kademlia is pinned to server mode: its automatic mode only turns server once the node has a
//! confirmed external address, which peers on one host (or a private network) never get, and a
//! client-mode node answers nobody's queries. Identify tells each side the other's listen
//! addresses, which the node feeds into Kademlia's routing table: a connection alone gives only
//! the ephemeral address of an inbound dialer, which nobody can dial back. [`Unreachable`] keeps
//! queries from waiting on peers that have just failed to answer a dial.

use std::num::NonZeroU8;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, SwarmBuilder, identify, kad, noise, tcp, yamux};

use averager_core::{Error, Result};

use crate::settings::{KadSettings, MESSAGE_OVERHEAD_BYTES};
use crate::store::MergingStore;
use crate::streams::StreamBehaviour;
use crate::unreachable::Unreachable;

/// The Kademlia protocol of averager DHTs: a swarm of its own, apart from the IPFS DHT.
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/averager/kad/1.0.0");

/// What identify reports as this node's protocol family.
const IDENTIFY_VERSION: &str = "/averager/id/1.0.0";

/// The protocols every node runs.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) kad: kad::Behaviour<MergingStore>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) unreachable: Unreachable,
    pub(crate) streams: StreamBehaviour,
}

/// A swarm for `keypair` with `settings`, not yet listening.
pub(crate) fn build_swarm(
    keypair: Keypair,
    settings: &KadSettings,
    store: MergingStore,
    streams: StreamBehaviour,
) -> Result<Swarm<Behaviour>> {
    let kad_config = kad_config(settings);
    let idle = settings.idle_connection_timeout;
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Config(format!("kad: cannot set up noise encryption: {e}")))?
        .with_quic()
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
            kad.set_mode(Some(kad::Mode::Server));
            let identify =
                identify::Behaviour::new(identify::Config::new(IDENTIFY_VERSION.into(), key.public()));
            Behaviour { kad, identify, unreachable: Unreachable::default(), streams }
        })
        .map_err(|e| Error::Config(format!("kad: cannot build the node's protocols: {e}")))?
        .with_swarm_config(|config| {
            // One address at a time: racing a peer's TCP and QUIC addresses opens a second
            // connection that is closed as soon as the first wins, and a Kademlia request sent
            // on it in between is lost without an error (the query waits out its timeout).
            config.with_idle_connection_timeout(idle).with_dial_concurrency_factor(NonZeroU8::MIN)
        })
        .build();
    Ok(swarm)
}

fn kad_config(settings: &KadSettings) -> kad::Config {
    let mut config = kad::Config::new(KAD_PROTOCOL);
    config
        .set_query_timeout(settings.query_timeout)
        .set_replication_factor(settings.replication)
        // Entries carry their own expirations; Kademlia's record TTL would drop whole
        // dictionaries on a clock of its own.
        .set_record_ttl(None)
        .set_provider_record_ttl(None)
        // Inbound records reach the node as events, so it knows which peer sent each and can
        // hold it to its share of the store.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_replication_interval(settings.replication_interval)
        // Owners re-declare their entries themselves (protocol 3.2); a merged dictionary has no
        // single publisher to republish it.
        .set_publication_interval(None)
        .set_provider_publication_interval(None)
        // Reads ask every replica anyway; caching would only send more copies around.
        .set_caching(kad::Caching::Disabled)
        .set_max_packet_size(settings.max_record_bytes + MESSAGE_OVERHEAD_BYTES);
    config
}
