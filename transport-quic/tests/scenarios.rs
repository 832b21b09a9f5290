//! The end-to-end averaging scenarios (protocol 10.2) over QUIC: every peer serves on its own
//! 127.0.0.1 port, with one MemoryDht for matchmaking.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use averager_conformance::scenario_suite;
use averager_conformance::scenarios::{memory_dhts, network};
use averager_core::Transport;
use averager_transport_quic::{QuicSettings, QuicTransport};

scenario_suite!(
    quic,
    network(memory_dhts, |_| async {
        let settings =
            QuicSettings { listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), ..QuicSettings::default() };
        Arc::new(QuicTransport::with_settings(settings).expect("loopback settings are valid"))
            as Arc<dyn Transport>
    })
);
