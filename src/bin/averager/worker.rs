//! The hidden `worker` subcommand: one peer of `demo --processes`, in its own OS process.
//!
//! Protocol with the demo, one line each way: the worker prints `{"event":"ready",...}` on
//! stdout once its averager serves and its DHT node has bootstrapped; then for every `round N`
//! line on stdin it steps once, writes its tensor to the `--dump` file, and prints
//! `{"event":"round","round":N,...}`, after `{"event":"allreduce","round":N}` the moment its
//! all-reduce begins (so a test can kill it mid-all-reduce). `quit` or the end of stdin shuts it
//! down cleanly. stdout carries nothing else (logs go to stderr). The `--dump` file, when given,
//! holds the initial tensor from the ready line on.

use std::net::SocketAddr;
use std::process::ExitCode;

use averager::{Averager, Tensor};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::Result;
use crate::backends::{DhtKind, Dhts, Transports};
use crate::bench::seconds;
use crate::cli::WorkerArgs;
use crate::demo::demo_config;
use crate::failure::{Context, Failure};
use crate::swarm::timed_step_reporting;
use crate::tensors::{peer_values, write_f32_file};

/// Runs one worker until `quit` or the end of stdin.
///
/// # Errors
/// When the peer cannot start; a failed step is reported in its round line instead.
pub(crate) async fn run(args: WorkerArgs) -> Result<ExitCode> {
    let timeout = seconds("--timeout", args.timeout)?;
    let transports = Transports::new(args.transport)?;
    let mut dhts = Dhts::new(DhtKind::Kad, &args.bootstrap)?;
    let dht = dhts.node_at(&format!("/ip4/{}/tcp/0", args.host)).await?;
    let listen = SocketAddr::from((args.host, 0));
    let transport = transports.build(args.index, listen, dhts.last_node())?;
    let mut config = demo_config(&args.prefix, args.group_size, &args.compression);
    config.initial_group_bits = args.bits.clone();
    config.sender_timeout = args.sender_timeout.map(|s| seconds("--sender-timeout", s)).transpose()?;
    config.reducer_timeout = args.reducer_timeout.map(|s| seconds("--reducer-timeout", s)).transpose()?;
    config.bandwidth = args.bandwidth;
    if let Some(part_size) = args.part_size {
        config.part_size_bytes = part_size;
    }
    config.validate()?;
    let values = peer_values(args.seed, args.index, args.floats);
    if let Some(dump) = &args.dump {
        write_f32_file(dump, &values)?;
    }
    let tensors = vec![Tensor::from_f32(vec![args.floats], values)?];
    let averager = Averager::new(tensors, dht, transport, config).await?;
    say(json!({
        "event": "ready",
        "index": args.index,
        "endpoint": averager.endpoint(),
        "dht": dhts.bootstrap_addrs(),
    }));

    let outcome = serve_rounds(&averager, &args, timeout).await;
    if let Err(e) = averager.shutdown().await {
        tracing::warn!(error = %e, "worker did not shut down cleanly");
    }
    drop(averager);
    dhts.shutdown().await;
    outcome.map(|()| ExitCode::SUCCESS)
}

/// Answers `round N` lines until `quit` or the end of stdin.
async fn serve_rounds(averager: &Averager, args: &WorkerArgs, timeout: std::time::Duration) -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading commands on stdin")? {
        let line = line.trim();
        if line == "quit" {
            break;
        }
        let Some(round) = line.strip_prefix("round ").and_then(|n| n.trim().parse::<u64>().ok()) else {
            return Err(Failure::new(format!("unknown worker command {line:?}")));
        };
        let step = timed_step_reporting(averager, timeout, |began| {
            if began {
                say(json!({"event": "allreduce", "round": round}));
            }
        })
        .await;
        if let Some(dump) = &args.dump {
            let tensors = averager.tensors().await;
            let values = tensors.first().ok_or("the worker holds no tensor")?.as_f32()?;
            write_f32_file(dump, values)?;
        }
        say(json!({
            "event": "round",
            "round": round,
            "matchmaking_s": step.matchmaking.map(|d| d.as_secs_f64()),
            "allreduce_s": step.allreduce.map(|d| d.as_secs_f64()),
            "group": step.group,
            "error": step.error,
            "bandwidth_estimate": averager.estimated_bandwidth(),
        }));
    }
    Ok(())
}

/// One report line on stdout (line-buffered, also into a pipe).
fn say(value: serde_json::Value) {
    use std::io::Write;
    // If the demo went away nobody reads this, and the end of stdin stops the worker: no panic.
    let _ = writeln!(std::io::stdout().lock(), "{value}");
}
