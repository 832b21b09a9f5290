//! Choosing backends by name on the command line: transports (gRPC, QUIC, TCP, libp2p, in-process), DHTs
//! (Kademlia, in-process) and codecs (any registry name). A backend whose Cargo feature is off
//! is a clear error naming the feature, not a missing flag value.

use std::net::SocketAddr;
use std::sync::Arc;

use averager::memory::{MemoryDht, MemoryNetwork, MemorySettings, MemoryTransport};
use averager::{Compression, Dht, Registry, Transport};
use clap::ValueEnum;

use crate::Result;
use crate::failure::{Context, Failure};

/// How peers reach each other for the all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransportKind {
    /// gRPC over HTTP/2 (TCP).
    Grpc,
    /// QUIC (UDP, TLS 1.3); needs the `quic` feature.
    Quic,
    /// Plain TCP with the stream transports' frames (no encryption or authentication: trusted
    /// networks and benchmarks); needs the `tcp` feature.
    Tcp,
    /// libp2p substreams on the peer's own Kademlia node (one port, noise-authenticated peer
    /// ids); needs the `libp2p` feature and `--dht kad`.
    Libp2p,
    /// In-process channels: only between peers of one process.
    Memory,
}

impl TransportKind {
    /// The name used on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TransportKind::Grpc => "grpc",
            TransportKind::Quic => "quic",
            TransportKind::Tcp => "tcp",
            TransportKind::Libp2p => "libp2p",
            TransportKind::Memory => "memory",
        }
    }
}

/// Where peers find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DhtKind {
    /// Kademlia over libp2p, one node per peer; needs the `kad` feature.
    Kad,
    /// One in-process table shared by the peers of one process.
    Memory,
}

impl DhtKind {
    /// The name used on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DhtKind::Kad => "kad",
            DhtKind::Memory => "memory",
        }
    }

    /// The demo's default: Kademlia when it is compiled in, so the demo shows the real thing.
    pub(crate) fn demo_default() -> Self {
        if kad::AVAILABLE { DhtKind::Kad } else { DhtKind::Memory }
    }
}

/// Makes the transports of the peers in this process.
pub(crate) struct Transports {
    kind: TransportKind,
    /// Shared by every in-process transport, so they can reach each other.
    network: Arc<MemoryNetwork>,
}

impl Transports {
    /// A factory for `kind`.
    ///
    /// # Errors
    /// When `kind` is not compiled into this binary.
    pub(crate) fn new(kind: TransportKind) -> Result<Self> {
        if kind == TransportKind::Quic && !cfg!(feature = "quic") {
            return Err(Failure::new(
                "this binary has no QUIC transport: rebuild with `--features quic` (or `--features full`)",
            ));
        }
        if kind == TransportKind::Tcp && !cfg!(feature = "tcp") {
            return Err(Failure::new(
                "this binary has no TCP transport: rebuild with `--features tcp` (or `--features full`)",
            ));
        }
        if kind == TransportKind::Libp2p && !cfg!(feature = "libp2p") {
            return Err(Failure::new(
                "this binary has no libp2p transport: rebuild with `--features libp2p` (or `--features full`)",
            ));
        }
        if kind == TransportKind::Grpc && !cfg!(feature = "grpc") {
            return Err(Failure::new("this binary has no gRPC transport: rebuild with `--features grpc`"));
        }
        Ok(Transports { kind, network: MemoryNetwork::new() })
    }

    /// The transport of peer `index`, serving on `listen` (ignored by the in-process transport);
    /// libp2p serves on `node`, the peer's Kademlia node, instead.
    ///
    /// # Errors
    /// When the transport rejects its settings, or libp2p has no node to run on.
    pub(crate) fn build(
        &self,
        index: usize,
        listen: SocketAddr,
        node: Option<kad::NodeRef>,
    ) -> Result<Arc<dyn Transport>> {
        let _ = (listen, &node);
        Ok(match self.kind {
            #[cfg(feature = "grpc")]
            TransportKind::Grpc => Arc::new(averager::grpc::GrpcTransport::bind(listen)),
            #[cfg(feature = "quic")]
            TransportKind::Quic => {
                let settings = averager::quic::QuicSettings { listen, ..Default::default() };
                Arc::new(averager::quic::QuicTransport::with_settings(settings)?)
            }
            #[cfg(feature = "tcp")]
            TransportKind::Tcp => {
                let settings = averager::tcp::TcpSettings { listen, ..Default::default() };
                Arc::new(averager::tcp::TcpTransport::with_settings(settings)?)
            }
            #[cfg(feature = "libp2p")]
            TransportKind::Libp2p => {
                let node = node.ok_or("the libp2p transport runs on a Kademlia node: use --dht kad")?;
                let settings = averager::libp2p::StreamSettings::default();
                Arc::new(averager::libp2p::Libp2pTransport::on_node(node, settings)?)
            }
            TransportKind::Memory => {
                let settings = MemorySettings { name: Some(format!("peer{index}")), ..Default::default() };
                Arc::new(MemoryTransport::with_settings(self.network.clone(), settings))
            }
            #[allow(unreachable_patterns)]
            other => return Err(Failure::new(format!("transport {} is not compiled in", other.name()))),
        })
    }
}

/// The codec registered as `name`, with an error that lists the known names.
///
/// # Errors
/// When no codec of that name is linked into this binary.
pub(crate) fn codec(name: &str) -> Result<Arc<dyn Compression>> {
    Registry::global().codec(name).context("--compression")
}

/// The DHT side of peers in one process: one shared in-process table, or one Kademlia node per
/// peer (all bootstrapping from the first, or from the given addresses).
pub(crate) enum Dhts {
    /// Every peer uses the same table.
    Memory(Arc<MemoryDht>),
    /// One node per peer.
    Kad(kad::KadNodes),
}

impl Dhts {
    /// Starts the DHT side for `kind`; `bootstrap` are multiaddrs of running Kademlia nodes
    /// (ignored by the in-process table).
    ///
    /// # Errors
    /// When `kind` is not compiled in, or a bootstrap address does not parse.
    pub(crate) fn new(kind: DhtKind, bootstrap: &[String]) -> Result<Self> {
        match kind {
            DhtKind::Memory => Ok(Dhts::Memory(Arc::new(MemoryDht::new()))),
            DhtKind::Kad => Ok(Dhts::Kad(kad::KadNodes::new(bootstrap)?)),
        }
    }

    /// The DHT handle for one more peer (for Kademlia: a new node, listening on loopback).
    ///
    /// # Errors
    /// When a Kademlia node cannot start.
    pub(crate) async fn node(&mut self) -> Result<Arc<dyn Dht>> {
        match self {
            Dhts::Memory(table) => Ok(Arc::clone(table) as Arc<dyn Dht>),
            Dhts::Kad(nodes) => nodes.start_node("/ip4/127.0.0.1/tcp/0").await,
        }
    }

    /// The DHT handle for a long-running peer, its Kademlia node listening on `listen` (a
    /// multiaddr).
    ///
    /// # Errors
    /// For the in-process table (a node must be reachable from other processes), or when the
    /// node cannot start.
    pub(crate) async fn node_at(&mut self, listen: &str) -> Result<Arc<dyn Dht>> {
        match self {
            Dhts::Memory(_) => Err(Failure::new("a node needs the Kademlia DHT")),
            Dhts::Kad(nodes) => nodes.start_node(listen).await,
        }
    }

    /// Loads (or creates, mode 0600) the identity of the nodes started from now on.
    ///
    /// # Errors
    /// For the in-process table, or a file that cannot be read, created or parsed.
    pub(crate) fn use_identity(&mut self, path: &std::path::Path) -> Result<()> {
        match self {
            Dhts::Memory(_) => Err(Failure::new("--identity needs the Kademlia DHT")),
            Dhts::Kad(nodes) => nodes.use_identity(path),
        }
    }

    /// Relays and external addresses (`--relay`, `--external-addr`) of the nodes started from
    /// now on.
    ///
    /// # Errors
    /// For the in-process table, or an address that does not parse.
    pub(crate) fn use_nat(&mut self, relays: &[String], external_addrs: &[String]) -> Result<()> {
        match self {
            Dhts::Memory(_) if relays.is_empty() && external_addrs.is_empty() => Ok(()),
            Dhts::Memory(_) => Err(Failure::new("--relay and --external-addr need the Kademlia DHT")),
            Dhts::Kad(nodes) => nodes.use_nat(relays, external_addrs),
        }
    }

    /// Prints the first Kademlia node's reachability changes on stdout (see
    /// `KadNodes::print_reachability`), until the returned task is aborted.
    pub(crate) fn print_reachability(&self) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Dhts::Memory(_) => None,
            Dhts::Kad(nodes) => nodes.print_reachability(),
        }
    }

    /// Prints a `dht address` line for each address of the first Kademlia node not printed yet.
    pub(crate) fn print_new_addrs(&self) {
        if let Dhts::Kad(nodes) = self {
            nodes.print_new_addrs();
        }
    }

    /// Prints `dht address` lines as the first Kademlia node learns more of its addresses
    /// (see `KadNodes::print_addrs_as_found`), until the returned task is aborted.
    pub(crate) fn print_addrs_as_found(&self) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Dhts::Memory(_) => None,
            Dhts::Kad(nodes) => nodes.print_addrs_as_found(),
        }
    }

    /// The libp2p peer id of the first Kademlia node (none for the in-process table).
    pub(crate) fn peer_id(&self) -> Option<String> {
        match self {
            Dhts::Memory(_) => None,
            Dhts::Kad(nodes) => nodes.peer_id(),
        }
    }

    /// The libp2p node of the peer started last (none for the in-process table).
    pub(crate) fn last_node(&self) -> Option<kad::NodeRef> {
        match self {
            Dhts::Memory(_) => None,
            Dhts::Kad(nodes) => nodes.last_node(),
        }
    }

    /// The multiaddrs (with `/p2p/<peer id>`) others can bootstrap from: the first node's.
    pub(crate) fn bootstrap_addrs(&self) -> Vec<String> {
        match self {
            Dhts::Memory(_) => Vec::new(),
            Dhts::Kad(nodes) => nodes.first_addrs(),
        }
    }

    /// Stops every Kademlia node this process started.
    pub(crate) async fn shutdown(self) {
        if let Dhts::Kad(nodes) = self {
            nodes.shutdown().await;
        }
    }
}

/// Kademlia (feature `kad`); without it a stand-in whose every use is an error that says so.
#[cfg_attr(feature = "kad", path = "kad.rs")]
#[cfg_attr(not(feature = "kad"), path = "no_kad.rs")]
pub(crate) mod kad;
