//! The end-to-end averaging scenarios (SPEC 10.2, including 4 and 6) over libp2p: every peer has
//! one node on 127.0.0.1 that carries both its Kademlia DHT and its RPCs, as in production.

mod common;

use averager_conformance::scenario_suite;
use averager_conformance::scenarios::network;

scenario_suite!(kad_libp2p, {
    let nodes = common::SharedNodes::default();
    let for_transports = nodes.clone();
    network(
        move |n| {
            let nodes = nodes.clone();
            async move { nodes.dhts(n).await }
        },
        move |i| {
            let nodes = for_transports.clone();
            async move { nodes.transport(i) }
        },
    )
});
