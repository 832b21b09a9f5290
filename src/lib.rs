#![doc = include_str!("../README.md")]
//!
//! # Crate layout
//!
//! This facade re-exports the core ([`averager_core`]) at its root and each backend crate as a
//! module under the Cargo feature that enables it: `grpc` (feature `grpc`, default), `quic`
//! (`quic`), `tcp` (`tcp`), `libp2p` (`libp2p`, with `kad`), `kad` (`kad`, default), `codecs` (`compression`,
//! default; `zstd` and `lz4` add the lossless wrappers), `reducers` (`reducers`, default: the
//! Byzantine-robust reducers). The in-process backends are always there, in [`memory`].
//!
//! Mentioning a backend crate here is also what links its plugin records into a binary, so
//! [`Registry::global`] finds every backend whose feature is on.

pub use averager_core::{
    Averager, AveragerConfig, Compression, CompressionInfo, DType, Dht, Error, ErrorKind, Gathered, PeerMode,
    Reducer, Registry, Result, Stage, StepControl, StepOptions, StepReport, Tensor, TensorRole, TensorView,
    Transport, averager, compression, dht, error, plan, reduce, registry, state, tensor, time, transport,
};
#[doc(inline)]
pub use averager_core::{register_codec, register_dht, register_reducer, register_transport};
pub use averager_proto as proto;

/// The in-process backends: always compiled, for simulation and tests.
pub mod memory {
    pub use averager_core::compression::NoCompression;
    pub use averager_core::dht::MemoryDht;
    pub use averager_core::reduce::MeanReducer;
    pub use averager_core::transport::{
        Fault, FaultPlan, FaultRule, FaultyTransport, MemoryNetwork, MemorySettings, MemoryTransport, Rpc,
    };
}

/// The gRPC transport (feature `grpc`).
#[cfg(feature = "grpc")]
#[doc(inline)]
pub use averager_transport_grpc as grpc;

/// The QUIC transport (feature `quic`).
#[cfg(feature = "quic")]
#[doc(inline)]
pub use averager_transport_quic as quic;

/// The plain TCP transport (feature `tcp`): no encryption or authentication, for trusted
/// networks and benchmarks.
#[cfg(feature = "tcp")]
#[doc(inline)]
pub use averager_transport_tcp as tcp;

/// The libp2p transport (feature `libp2p`), sharing its node with the Kademlia DHT.
#[cfg(feature = "libp2p")]
#[doc(inline)]
pub use averager_transport_libp2p as libp2p;

/// The Kademlia DHT (feature `kad`); the DHT interface itself is [`Dht`].
#[cfg(feature = "kad")]
#[doc(inline)]
pub use averager_dht as kad;

/// The codecs of protocol 7 (feature `compression`); the codec interface itself is [`compression`].
#[cfg(feature = "compression")]
#[doc(inline)]
pub use averager_compression as codecs;

/// The Byzantine-robust reducers (feature `reducers`); the reducer interface itself is [`reduce`].
#[cfg(feature = "reducers")]
#[doc(inline)]
pub use averager_reducers as reducers;

#[cfg(test)]
mod registry_tests;
