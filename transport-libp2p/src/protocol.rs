//! One libp2p protocol id per RPC of `DecentralizedAveraging`, so a peer's identify report says
//! which RPCs it serves and a call needs no method byte.

use averager_dht::StreamProtocol;

/// The protocol of `rpc_join_group`.
pub const JOIN_PROTOCOL: StreamProtocol = StreamProtocol::new("/averager/rpc/join_group/1.0.0");
/// The protocol of `rpc_aggregate_part`.
pub const AGGREGATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/averager/rpc/aggregate_part/1.0.0");
/// The protocol of `rpc_download_state`.
pub const DOWNLOAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/averager/rpc/download_state/1.0.0");

/// The three RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rpc {
    Join,
    Aggregate,
    Download,
}

impl Rpc {
    pub(crate) fn protocol(self) -> StreamProtocol {
        match self {
            Rpc::Join => JOIN_PROTOCOL,
            Rpc::Aggregate => AGGREGATE_PROTOCOL,
            Rpc::Download => DOWNLOAD_PROTOCOL,
        }
    }
}
