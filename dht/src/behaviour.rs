//! The libp2p side of a node: transports (TCP and QUIC, noise, yamux) and its protocols: Kademlia
//! over the merging store, identify, and raw substreams for other crates ([`crate::streams`]).
//!
//! Kademlia is pinned to server mode: its automatic mode only turns server once the node has a
//! confirmed external address, which peers on one host (or a private network) never get, and a
//! client-mode node answers nobody's queries. Identify tells each side the other's listen
//! addresses, which the node feeds into Kademlia's routing table: a connection alone gives only
//! the ephemeral address of an inbound dialer, which nobody can dial back. [`Unreachable`] keeps
//! queries from waiting on peers that have just failed to answer a dial.
//!
//! NAT traversal: every node serves as a circuit relay (v2) for others, with limits raised for
//! tensor traffic (see [`KadSettings::relay_max_circuit_duration`]), is a relay client (so it can
//! listen through a relay and dial `/p2p-circuit` addresses), runs AutoNAT (v1) to learn whether
//! it is reachable, and DCUtR to upgrade relayed connections to direct ones by hole punching.
//! The relay server is always on: libp2p would advertise it only once the node has a confirmed
//! external address, but a node on a private network (or in a test) that others name with
//! `--relay` should serve them all the same; only peers that can reach it use it anyway.

use std::num::NonZeroU8;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, Swarm, SwarmBuilder, autonat, dcutr, identify, kad, noise, relay, tcp, yamux};

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
    pub(crate) relay: Toggle<relay::Behaviour>,
    pub(crate) relay_client: relay::client::Behaviour,
    /// The relay server, AutoNAT and DCUtR are off on a node that listens on loopback only
    /// (see [`traverses_nats`]).
    pub(crate) autonat: Toggle<autonat::Behaviour>,
    pub(crate) dcutr: Toggle<dcutr::Behaviour>,
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
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Config(format!("kad: cannot set up the relay client: {e}")))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
            kad.set_mode(Some(kad::Mode::Server));
            let nat = traverses_nats(settings);
            // Pushed as they change: a NATed node's relayed address appears after it connected
            // to the relay, and must reach the others' tables before they dial it.
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                    .with_push_listen_addr_updates(nat),
            );
            let relay = nat
                .then(|| {
                    let mut relay = relay::Behaviour::new(peer_id, relay_config(settings));
                    relay.set_status(Some(relay::Status::Enable));
                    relay
                })
                .into();
            let autonat = nat.then(|| autonat::Behaviour::new(peer_id, autonat_config())).into();
            let dcutr = nat.then(|| dcutr::Behaviour::new(peer_id)).into();
            Behaviour {
                kad,
                identify,
                unreachable: Unreachable::default(),
                streams,
                relay,
                relay_client,
                autonat,
                dcutr,
            }
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

/// The relay server's limits: libp2p's defaults (2 min, 128 KiB a circuit) are for signalling
/// before a hole punch, and would cut an all-reduce that has to go through the relay.
fn relay_config(settings: &KadSettings) -> relay::Config {
    relay::Config {
        max_circuit_duration: settings.relay_max_circuit_duration,
        max_circuit_bytes: settings.relay_max_circuit_bytes,
        // A group's peers open one circuit per pair; libp2p's 16 would refuse the 17th peer.
        max_circuits: RELAY_MAX_CIRCUITS,
        max_circuits_per_peer: RELAY_MAX_CIRCUITS_PER_PEER,
        ..relay::Config::default()
    }
}

/// The most circuits a relay carries at once.
const RELAY_MAX_CIRCUITS: usize = 256;

/// The most circuits one peer may hold through a relay at once.
const RELAY_MAX_CIRCUITS_PER_PEER: usize = 16;

/// Whether the node runs the relay server, AutoNAT and DCUtR: not when it listens on loopback
/// only (and has no relay), as every node of a test on one host does. There they have nothing to
/// do, and measurably slowed the DHT scenario suites (AutoNAT's dial-backs open second
/// connections between peers).
fn traverses_nats(settings: &KadSettings) -> bool {
    let loopback = |addr: &libp2p::Multiaddr| match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    };
    !settings.relays.is_empty() || !settings.listen.iter().all(loopback)
}

/// AutoNAT v1, probing sooner than libp2p's defaults (15 s, then every 90 s) so a node reports
/// its reachability within seconds of joining; peers on private networks count as servers (the
/// default takes only peers seen at public IPs, which a private deployment has none of).
fn autonat_config() -> autonat::Config {
    autonat::Config {
        boot_delay: std::time::Duration::from_secs(2),
        retry_interval: std::time::Duration::from_secs(20),
        throttle_server_period: std::time::Duration::from_secs(10),
        only_global_ips: false,
        ..autonat::Config::default()
    }
}
