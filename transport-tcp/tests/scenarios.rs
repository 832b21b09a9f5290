//! End-to-end averaging scenarios (protocol 10.2) over TCP: every peer serves on its own
//! 127.0.0.1 port, with one MemoryDht for matchmaking. A few of the suite's scenarios (the whole
//! list is the QUIC and gRPC crates' job; these cover the all-reduce with clients and auxiliary
//! peers, state download and cancellation over this transport's connections).

use std::sync::Arc;

use averager_conformance::scenarios::{self, memory_dhts, network};
use averager_core::Transport;
use averager_transport_tcp::TcpTransport;

fn tcp_network() -> impl scenarios::NetworkFactory {
    network(memory_dhts, |_| async { Arc::new(TcpTransport::default()) as Arc<dyn Transport> })
}

#[test]
fn allreduce_once_0_clients_0_aux() {
    averager_conformance::run_case("allreduce_once_0_clients_0_aux", async {
        scenarios::allreduce_once_0_clients_0_aux(&tcp_network()).await
    });
}

#[test]
fn allreduce_once_1_clients_1_aux() {
    averager_conformance::run_case("allreduce_once_1_clients_1_aux", async {
        scenarios::allreduce_once_1_clients_1_aux(&tcp_network()).await
    });
}

#[test]
fn load_state_from_peers() {
    averager_conformance::run_case("load_state_from_peers", async {
        scenarios::load_state_from_peers(&tcp_network()).await
    });
}

#[test]
fn averaging_cancel_with_target_2() {
    averager_conformance::run_case("averaging_cancel_with_target_2", async {
        scenarios::averaging_cancel_with_target_2(&tcp_network()).await
    });
}
