//! The end-to-end averaging scenarios (protocol 10.2) over gRPC: every peer serves on its own
//! 127.0.0.1 port, with one MemoryDht for matchmaking.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use averager_conformance::scenario_suite;
use averager_conformance::scenarios::{memory_dhts, network};
use averager_core::Transport;
use averager_transport_grpc::GrpcTransport;

scenario_suite!(
    grpc,
    network(memory_dhts, |_| async {
        Arc::new(GrpcTransport::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))) as Arc<dyn Transport>
    })
);
