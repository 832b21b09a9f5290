//! The Transport conformance suite over gRPC, on loopback.

use std::sync::Arc;

use averager_core::Transport;
use averager_transport_grpc::GrpcTransport;

averager_conformance::transport_suite!(grpc, || async {
    Arc::new(GrpcTransport::default()) as Arc<dyn Transport>
}, lacks: [authenticated]);
