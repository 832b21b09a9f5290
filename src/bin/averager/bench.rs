//! `averager bench`: the throughput benchmark. N peers in this process form one full group
//! (target size N, no group bits) round after round; each round times matchmaking and the
//! all-reduce per peer, and the round counts its slowest peer (the group is done when the last
//! member has its result). With `--processes` every peer is a process of its own
//! ([`crate::bench_processes`]).

use std::process::ExitCode;
use std::time::Duration;

use averager::AveragerConfig;

use crate::Result;
use crate::backends::{self, DhtKind, Transports};
use crate::bench_processes::ProcessPeers;
use crate::cli::{BenchArgs, DEFAULT_FLOATS};
use crate::failure::Failure;
use crate::report::{BenchSummary, algbw_mb_s, secs, tensor_bytes};
use crate::swarm::{RoundStats, Swarm, SwarmSpec};
use crate::tensors::peer_values;

/// Runs the benchmark and prints the table, or one JSON line with `--json`.
///
/// # Errors
/// Bad flags, or peers that cannot start.
pub(crate) async fn run(args: BenchArgs) -> Result<ExitCode> {
    let floats = args.size.floats(DEFAULT_FLOATS);
    check(&args, floats)?;
    let timeout = seconds("--timeout", args.timeout)?;
    backends::codec(&args.compression)?;
    // Fails early for a transport this binary lacks, before any peer starts.
    Transports::new(args.transport)?;
    let config = AveragerConfig {
        prefix: "bench".into(),
        target_group_size: Some(args.peers),
        // Only full groups: a partial group would measure a different all-reduce.
        min_group_size: args.peers,
        min_matchmaking_time: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
        compression: args.compression.as_str().into(),
        ..AveragerConfig::default()
    };
    let spec =
        SwarmSpec { transport: args.transport, dht: args.dht, config, bits: vec![String::new(); args.peers] };
    tracing::info!(
        peers = args.peers,
        floats,
        transport = args.transport.name(),
        compression = %args.compression,
        processes = args.processes,
        "starting the bench swarm"
    );
    let mut peers = if args.processes {
        Peers::Processes(ProcessPeers::start(&args, floats, timeout).await?)
    } else {
        Peers::InProcess(Swarm::start(&spec, |i| peer_values(0, i, floats)).await?)
    };
    let mut summary = BenchSummary {
        transport: args.transport.name(),
        dht: if args.processes { DhtKind::Kad.name() } else { args.dht.name() },
        compression: args.compression.clone(),
        peers: args.peers,
        floats,
        rounds: 0,
        failed_rounds: 0,
        warmup: args.warmup,
        allreduce_s: Vec::new(),
        matchmaking_ms: Vec::new(),
        processes: args.processes,
        peak_rss_bytes: Vec::new(),
    };
    let measured = measure(&mut peers, &args, timeout, &mut summary).await;
    if let Peers::Processes(workers) = &peers {
        summary.peak_rss_bytes = workers.peak_rss();
    }
    peers.shutdown().await;
    measured?;
    if args.json {
        crate::out!("{}", summary.json());
    } else {
        crate::out!("{}", summary.table());
    }
    if summary.rounds == 0 {
        return Err(Failure::new("no measured round succeeded on every peer (see the warnings above)"));
    }
    Ok(ExitCode::SUCCESS)
}

/// The peers of a run: in this process, or one process each.
enum Peers {
    InProcess(Swarm),
    Processes(ProcessPeers),
}

impl Peers {
    async fn round(&mut self, timeout: Duration, label: &str) -> Result<RoundStats> {
        match self {
            Peers::InProcess(swarm) => Ok(swarm.round(timeout, label).await),
            Peers::Processes(workers) => workers.round().await,
        }
    }

    async fn shutdown(self) {
        match self {
            Peers::InProcess(swarm) => swarm.shutdown().await,
            Peers::Processes(workers) => workers.shutdown().await,
        }
    }
}

/// The warm-up and measured rounds, recorded in `summary`.
///
/// # Errors
/// When a worker process stops answering.
async fn measure(
    peers: &mut Peers,
    args: &BenchArgs,
    timeout: Duration,
    summary: &mut BenchSummary,
) -> Result<()> {
    let total = args.warmup + args.rounds;
    for round in 0..total {
        let warmup = round < args.warmup;
        let label = if warmup {
            format!("warm-up {}", round + 1)
        } else {
            format!("round {}", round + 1 - args.warmup)
        };
        let stats = peers.round(timeout, &label).await?;
        let (failed, reason) = stats.failures();
        let (Some(allreduce), Some(matchmaking), 0) = (stats.allreduce(), stats.matchmaking(), failed) else {
            tracing::warn!(%label, failed, reason = reason.unwrap_or("no group"), "round failed");
            if !warmup {
                summary.failed_rounds += 1;
            }
            continue;
        };
        tracing::info!(
            "{label}: all-reduce {:.3} s ({:.1} MB/s per peer), matchmaking {:.1} ms",
            secs(allreduce),
            algbw_mb_s(tensor_bytes(summary.floats), secs(allreduce)),
            secs(matchmaking) * 1e3
        );
        if !warmup {
            summary.rounds += 1;
            summary.allreduce_s.push(secs(allreduce));
            summary.matchmaking_ms.push(secs(matchmaking) * 1e3);
        }
    }
    Ok(())
}

/// The checks clap cannot make alone.
fn check(args: &BenchArgs, floats: usize) -> Result<()> {
    if args.peers < 2 {
        return Err(Failure::new(format!("--peers {}: a group needs at least 2 peers", args.peers)));
    }
    if floats == 0 {
        return Err(Failure::new("--floats must be at least 1"));
    }
    if args.rounds == 0 {
        return Err(Failure::new("--rounds must be at least 1"));
    }
    Ok(())
}

/// A positive, finite number of seconds from a flag.
pub(crate) fn seconds(flag: &str, value: f64) -> Result<Duration> {
    if value.is_finite() && value > 0.0 && value < 1e9 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(Failure::new(format!("{flag} {value}: must be a positive number of seconds")))
    }
}
