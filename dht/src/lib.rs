#![doc = include_str!("../README.md")]

mod behaviour;
mod driver;
mod entries;
mod error;
mod identity;
mod kad;
mod node;
mod reachability;
mod rebootstrap;
mod record;
mod settings;
mod signed;
#[cfg(test)]
mod signed_tests;
mod store;
pub mod streams;
mod unreachable;

use std::sync::Arc;

pub use entries::RELAYED_ADDRS_TTL;
pub use identity::load_or_create_identity;
pub use kad::KadDht;
pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId};
pub use libp2p::{Stream, StreamProtocol};
pub use node::Libp2pNode;
pub use reachability::{NatReport, Reachability};
pub use settings::{DEFAULT_RELAY_CIRCUIT_BYTES, DEFAULT_RELAY_CIRCUIT_DURATION, KadSettings};

averager_core::register_dht!(
    KadDht::NAME,
    "libp2p Kademlia (TCP and QUIC) holding protocol 2.3 dictionaries, merged per subkey on every replica",
    |config| Box::pin(async move {
        let settings: KadSettings = config.parse()?;
        Ok(Arc::new(KadDht::start(settings).await?) as Arc<dyn averager_core::Dht>)
    })
);
