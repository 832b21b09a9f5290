#![doc = include_str!("../README.md")]

mod behaviour;
mod driver;
mod error;
mod node;
mod rebootstrap;
mod record;
mod settings;
mod store;
mod unreachable;

use std::sync::Arc;

pub use libp2p::{Multiaddr, PeerId};
pub use node::KadDht;
pub use settings::KadSettings;

averager_core::register_dht!(
    KadDht::NAME,
    "libp2p Kademlia (TCP and QUIC) holding protocol 2.3 dictionaries, merged per subkey on every replica",
    |config| Box::pin(async move {
        let settings: KadSettings = config.parse()?;
        Ok(Arc::new(KadDht::start(settings).await?) as Arc<dyn averager_core::Dht>)
    })
);
