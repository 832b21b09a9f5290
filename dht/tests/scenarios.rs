//! The end-to-end averaging scenarios (protocol 10.2, including 4 and 6) with real Kademlia nodes for
//! matchmaking and the gRPC transport: every peer has its own DHT node and its own gRPC port on
//! 127.0.0.1, as peers on different machines would.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use averager_conformance::scenario_suite;
use averager_conformance::scenarios::network;
use averager_core::Transport;
use averager_dht::KadSettings;
use averager_transport_grpc::GrpcTransport;

scenario_suite!(
    kad_grpc,
    network(
        |n| common::dyn_swarm(n, KadSettings::default()),
        |_| async {
            Arc::new(GrpcTransport::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))) as Arc<dyn Transport>
        }
    )
);
