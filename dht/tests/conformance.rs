//! The whole Dht conformance suite over Kademlia: one node, a five-node swarm on 127.0.0.1, and a
//! three-node swarm with tight limits (so the subkey-limit and over-limit-value cases run).

mod common;

use averager_dht::KadSettings;

averager_conformance::dht_suite!(kad_single, || common::dyn_swarm(1, KadSettings::default()), lacks: [small_subkey_limit]);

averager_conformance::dht_suite!(kad_swarm, || common::dyn_swarm(5, KadSettings::default()), lacks: [small_subkey_limit]);

averager_conformance::dht_suite!(kad_limited, || common::dyn_swarm(
    3,
    KadSettings { max_value_bytes: 4096, max_subkeys_per_key: 64, ..KadSettings::default() }
));
