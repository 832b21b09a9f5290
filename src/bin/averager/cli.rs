//! The command line: subcommands and flags (clap derive). Checks that need more than one flag
//! live with the command that runs them, so every bad input becomes a message, never a panic.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::backends::{DhtKind, TransportKind};

/// Default tensor size per peer: 16 Mi f32 (64 MiB), the size the benchmarks compare at.
pub(crate) const DEFAULT_FLOATS: usize = 16 << 20;

/// Decentralized tensor averaging: local demos, benchmarks and long-running peers.
#[derive(Debug, Parser)]
#[command(name = "averager", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// A local Moshpit swarm averaging random tensors until every peer holds the global mean.
    Demo(DemoArgs),
    /// All-reduce throughput of one full group of in-process peers.
    Bench(BenchArgs),
    /// One long-running peer that averages its tensors with the swarm every few seconds.
    Node(NodeArgs),
    /// Prints who reduces which span of an all-reduce, the bytes each peer moves, and the
    /// predicted time, without running anything.
    Plan(PlanArgs),
    /// Many in-process peers (1,024 by default) running Moshpit rounds, with churn and failures.
    Sim(crate::sim::SimArgs),
    /// One peer of `demo --processes` (started by the demo itself, not by hand).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

impl Command {
    /// The log filter when `RUST_LOG` is not set: this tool's progress, and only warnings from
    /// the library (whose info logs are per message, too many for a terminal).
    pub(crate) fn default_log_filter(&self) -> &'static str {
        match self {
            // A worker's stderr is the demo's stderr: only what needs attention.
            Command::Worker(_) => "warn",
            // Target filters match by prefix, so `averager` alone would also let the library
            // crates' (`averager_core`, `averager_dht`, ...) info logs through.
            _ => {
                "warn,averager=info,averager_core=warn,averager_dht=warn,averager_transport_grpc=warn,\
                 averager_transport_quic=warn,averager_transport_tcp=warn,averager_transport_libp2p=warn,averager_compression=warn,libp2p_kad=error"
            }
        }
    }
}

/// The tensor size per peer, as an element count or a byte size.
#[derive(Debug, Clone, Args)]
pub(crate) struct SizeArgs {
    /// f32 elements per peer [default: 16777216 for demo and bench, 1048576 for node].
    #[arg(long, value_name = "N", conflicts_with = "size")]
    pub(crate) floats: Option<usize>,
    /// Bytes of f32 per peer, with an optional unit: 64MB, 64MiB, 500k, 1G (MB = 10^6 B).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub(crate) size: Option<usize>,
}

impl SizeArgs {
    /// The element count asked for, or `default`.
    pub(crate) fn floats(&self, default: usize) -> usize {
        self.floats.or(self.size.map(|bytes| bytes / 4)).unwrap_or(default)
    }
}

/// Flags of `averager plan`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PlanArgs {
    /// Peers in the group.
    #[arg(long, default_value_t = 4)]
    pub(crate) peers: usize,
    /// f32 elements per peer; K, M and G multiply by 2^10, 2^20 and 2^30 (16M = 16777216).
    #[arg(long, value_name = "N", default_value = "16M", value_parser = parse_count)]
    pub(crate) floats: usize,
    /// Each peer's download bandwidth in bytes per second, comma-separated in group order
    /// [default: none declared, equal shares].
    #[arg(long, value_name = "B/S,...", value_delimiter = ',')]
    pub(crate) bandwidths: Vec<f64>,
    /// The codec parts are sent with (its size estimate sets the bytes per element).
    #[arg(long, default_value = "none")]
    pub(crate) compression: String,
    /// Bytes per part on the wire.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 19)]
    pub(crate) part_size: usize,
    /// Peers whose share would be under this many elements get none.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub(crate) min_vector_size: usize,
}

/// Flags of `averager demo`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Peers in the swarm.
    #[arg(long, default_value_t = 8)]
    pub(crate) peers: usize,
    #[command(flatten)]
    pub(crate) size: SizeArgs,
    /// The most Moshpit rounds to run; the demo stops earlier once every peer holds the mean.
    #[arg(long, default_value_t = 10)]
    pub(crate) rounds: usize,
    /// Target group size (a power of two).
    #[arg(long, default_value_t = 2)]
    pub(crate) group_size: usize,
    /// Group bits [default: log2(peers / group-size), 2 for 8 peers in groups of 2, when the
    /// peers are group-size x 2^k; exact convergence takes bits / log2(group-size) + 1 rounds.
    /// Other peer counts form one group of every peer. Bits that leave a bucket without a whole
    /// number of full groups are refused].
    #[arg(long)]
    pub(crate) bits: Option<usize>,
    /// How peers reach each other.
    #[arg(long, value_enum, default_value_t = TransportKind::Grpc)]
    pub(crate) transport: TransportKind,
    /// Where peers find each other [default: kad when compiled in, else memory].
    #[arg(long, value_enum)]
    pub(crate) dht: Option<DhtKind>,
    /// Codec for all-reduce parts (a registry name: none, float16, uniform8, ...).
    #[arg(long, default_value = "none")]
    pub(crate) compression: String,
    /// Run every peer as its own OS process (needs --dht kad and a networked transport).
    #[arg(long)]
    pub(crate) processes: bool,
    /// Draw the spread per round to this SVG file (log scale).
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
    /// Largest allowed |peer - exact mean| on any element [default: 1e-4 for lossless codecs; a
    /// lossy codec is judged by the root-mean-square deviation, against 1e-4 plus 6 x sqrt(rounds)
    /// x its rms round-trip error on the demo's values].
    #[arg(long)]
    pub(crate) tolerance: Option<f64>,
    /// Seconds one step (matchmaking + all-reduce, retries included) may take.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) timeout: f64,
    /// Seed of the random tensors.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

/// Flags of `averager bench`.
#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Peers in the group (all of them form one group).
    #[arg(long, default_value_t = 4)]
    pub(crate) peers: usize,
    #[command(flatten)]
    pub(crate) size: SizeArgs,
    /// How peers reach each other.
    #[arg(long, value_enum, default_value_t = TransportKind::Grpc)]
    pub(crate) transport: TransportKind,
    /// Where peers find each other.
    #[arg(long, value_enum, default_value_t = DhtKind::Memory)]
    pub(crate) dht: DhtKind,
    /// Codec for all-reduce parts (a registry name).
    #[arg(long, default_value = "none")]
    pub(crate) compression: String,
    /// Measured rounds.
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: usize,
    /// Unmeasured rounds before them (connections, allocations).
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: usize,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Seconds one step may take.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) timeout: f64,
    /// Every peer in its own OS process, as the other systems' benchmarks run, and each one's peak
    /// resident memory in the report (peers find each other through Kademlia; --dht is ignored).
    #[arg(long)]
    pub(crate) processes: bool,
}

/// Flags of `averager node`.
#[derive(Debug, Clone, Args)]
pub(crate) struct NodeArgs {
    /// Address a grpc, quic or tcp averaging transport serves on (port 0: any free port); libp2p
    /// serves on --dht-listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: SocketAddr,
    /// Multiaddr the DHT node listens on (with --transport libp2p, the default, also the
    /// averaging port).
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    pub(crate) dht_listen: String,
    /// File holding the node's ed25519 key, so it keeps its peer id across restarts (created,
    /// mode 0600, when absent; default: a new identity each start).
    #[arg(long, value_name = "FILE")]
    pub(crate) identity: Option<PathBuf>,
    /// Multiaddr of a running peer's DHT node, with /p2p/<peer id> (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) bootstrap: Vec<String>,
    /// Multiaddr of a relay, with /p2p/<relay peer id> (repeatable): the node listens through
    /// it, so peers reach it behind a NAT (any reachable node serves as a relay).
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) relay: Vec<String>,
    /// Multiaddr at which others reach this node directly (a public IP or forwarded port;
    /// repeatable): advertised as confirmed, without AutoNAT's probes.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) external_addr: Vec<String>,
    /// Average every this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) every: f64,
    /// Stop after this many averaging steps (default: run until Ctrl+C).
    #[arg(long)]
    pub(crate) steps: Option<u64>,
    /// Tensor file to average: raw little-endian f32, one flat tensor (default: random values).
    #[arg(long, value_name = "FILE")]
    pub(crate) tensors: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) size: SizeArgs,
    /// Write the averaged tensors back to --tensors after every successful step.
    #[arg(long, requires = "tensors")]
    pub(crate) write_back: bool,
    /// Download the state of a peer before the first step.
    #[arg(long)]
    pub(crate) load_state: bool,
    /// AveragerConfig as TOML (flags below override its keys).
    #[arg(long, value_name = "FILE.toml")]
    pub(crate) config: Option<PathBuf>,
    /// The run's prefix (overrides the config).
    #[arg(long)]
    pub(crate) prefix: Option<String>,
    /// Target group size (overrides the config).
    #[arg(long)]
    pub(crate) group_size: Option<usize>,
    /// Codec for all-reduce parts (overrides the config).
    #[arg(long)]
    pub(crate) compression: Option<String>,
    /// How peers reach each other. libp2p (the default) serves on the DHT node's port with the
    /// node's proven identity and crosses NATs (relays, hole punching); grpc, quic and tcp serve on
    /// --listen and need every peer directly reachable.
    #[arg(long, value_enum, default_value_t = TransportKind::Libp2p)]
    pub(crate) transport: TransportKind,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free port; the bound address
    /// is printed as `metrics address ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
}

/// Flags of the hidden `worker` subcommand: one peer of `demo --processes`. The demo passes
/// everything the peer needs; commands arrive on stdin and reports leave on stdout, one line each.
#[derive(Debug, Clone, Args)]
pub(crate) struct WorkerArgs {
    /// This peer's index in the swarm (picks its tensors and initial bucket).
    #[arg(long)]
    pub(crate) index: usize,
    /// f32 elements of the tensor.
    #[arg(long)]
    pub(crate) floats: usize,
    /// Seed of the random tensors.
    #[arg(long)]
    pub(crate) seed: u64,
    /// Initial group bits.
    #[arg(long, default_value = "")]
    pub(crate) bits: String,
    /// Target group size.
    #[arg(long)]
    pub(crate) group_size: usize,
    /// The run's prefix.
    #[arg(long)]
    pub(crate) prefix: String,
    /// Transport.
    #[arg(long, value_enum)]
    pub(crate) transport: TransportKind,
    /// Codec for all-reduce parts.
    #[arg(long)]
    pub(crate) compression: String,
    /// DHT bootstrap multiaddrs.
    #[arg(long)]
    pub(crate) bootstrap: Vec<String>,
    /// Where to write the tensor (raw little-endian f32) after every round, for the demo to compare
    /// (the benchmark's workers write none).
    #[arg(long)]
    pub(crate) dump: Option<PathBuf>,
    /// Seconds one step may take.
    #[arg(long)]
    pub(crate) timeout: f64,
    /// Seconds a silent sender is waited for (`sender_timeout`; none when absent).
    #[arg(long)]
    pub(crate) sender_timeout: Option<f64>,
    /// Seconds a silent reducer is waited for (`reducer_timeout`; twice the sender's when absent).
    #[arg(long, requires = "sender_timeout")]
    pub(crate) reducer_timeout: Option<f64>,
    /// The address the peer's transport and DHT node listen on (bench/wan.sh puts each peer in a
    /// network namespace of its own).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: std::net::Ipv4Addr,
    /// The bandwidth to declare, in MB/s (default: measured, see `AveragerConfig::bandwidth`).
    #[arg(long)]
    pub(crate) bandwidth: Option<f64>,
    /// Bytes per part on the wire (`part_size_bytes`; every peer of a group must use the same).
    #[arg(long)]
    pub(crate) part_size: Option<usize>,
}

/// Parses a byte size: a number with an optional decimal (k, M, G, kB, MB, GB) or binary (KiB,
/// MiB, GiB) unit, case-insensitive on the prefix letter.
/// An element count: a whole number, optionally followed by K, M or G (powers of 2^10).
fn parse_count(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, scale) = match text.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&text[..text.len() - 1], 1usize << 10),
        Some('M') => (&text[..text.len() - 1], 1 << 20),
        Some('G') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a count such as 1048576, 64K or 16M"))
}

fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a size such as 64MB or 1GiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?} (use B, kB, MB, GB, KiB, MiB or GiB)")),
    };
    let bytes = number * scale;
    if !(bytes.is_finite() && bytes >= 4.0 && bytes <= (usize::MAX / 2) as f64) {
        return Err(format!("{text:?} must be at least 4 bytes (one f32)"));
    }
    Ok(bytes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("64MB"), Ok(64_000_000));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("500k"), Ok(500_000));
        assert_eq!(parse_size("4000"), Ok(4000));
        assert!(parse_size("3").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
