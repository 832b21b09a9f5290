//! `averager node`: one long-running networked peer. It serves its averaging transport and a
//! Kademlia node, shares its state with newcomers, averages its tensors every `--every` seconds,
//! and stops cleanly on Ctrl+C (SIGINT) or SIGTERM.
//!
//! stdout carries the lines other programs need, each once: `peer id <peer id>` (the Kademlia
//! node's libp2p identity, kept across restarts with `--identity FILE`), `averaging endpoint
//! <endpoint>` (`libp2p://<peer id>` with `--transport libp2p`, which serves on the DHT node's
//! own port), `dht address <multiaddr>` per address (bootstrap other peers from any of them; a node
//! listening on `0.0.0.0` prints those of interfaces found after `ready` when it finds them, and a
//! relayed address when the relay grants it),
//! `metrics address <addr>` with `--metrics`, `ready`, and `stopped`; after each successful step,
//! `averaged step <n> group <size>`. With the Kademlia DHT it also prints `reachability <how>`
//! (`direct`, `hole-punched`, `relayed` or `private`) each time that changes, and `hole punched
//! <peer id>` for each peer a hole punch connected it to directly (`--relay` makes a NATed node
//! reachable through a relay; `--external-addr` declares a public address). Step progress is
//! logged to stderr, one line per step: `averaged` with the group size, the all-reduce's seconds
//! and MB/s, and how far this peer's values moved (`moved`, the rms change: its distance to its
//! group's mean, which shrinks as the swarm agrees; the spread across all peers is not known to
//! one node), or `step failed` with the error.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use averager::{Averager, AveragerConfig, Dht, StepOptions, Tensor};
use rand::Rng;

use crate::Result;
use crate::backends::{self, DhtKind, Dhts, TransportKind, Transports};
use crate::bench::seconds;
use crate::cli::NodeArgs;
use crate::failure::{Context, Failure};
use crate::metrics::{Metrics, secs};
use crate::tensors::{read_f32_file, write_f32_file};

/// Default tensor size of a node without `--tensors`: 1 Mi f32 (4 MiB).
const NODE_FLOATS: usize = 1 << 20;

/// How long a state download at start may take.
const LOAD_STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the node until Ctrl+C, SIGTERM, or `--steps` steps.
///
/// # Errors
/// Bad flags or config, a tensor file that cannot be read, or backends that cannot start.
pub(crate) async fn run(args: NodeArgs) -> Result<ExitCode> {
    let every = seconds("--every", args.every)?;
    let config = config(&args)?;
    if args.transport == TransportKind::Memory {
        return Err(Failure::new(
            "a node talks to other processes: use --transport grpc, quic, tcp or libp2p",
        ));
    }
    let tensors = initial_tensors(&args)?;
    let transports = Transports::new(args.transport)?;
    let mut dhts = Dhts::new(DhtKind::Kad, &args.bootstrap)?;
    if let Some(path) = &args.identity {
        dhts.use_identity(path)?;
    }
    dhts.use_nat(&args.relay, &args.external_addr)?;
    let dht = dhts.node_at(&args.dht_listen).await?;
    // At once, before the averager exists: a NATed node's first verdicts (relay reservation)
    // arrive while it starts.
    if let Some(peer) = dhts.peer_id() {
        say(&format!("peer id {peer}"));
    }
    let transport = match transports.build(0, args.listen, dhts.last_node()) {
        Ok(transport) => transport,
        Err(e) => {
            dhts.shutdown().await;
            return Err(e);
        }
    };
    let watchers = [dhts.print_reachability(), dhts.print_addrs_as_found()];
    let outcome = serve(&args, config, tensors, transport, dht, &dhts, every).await;
    for task in watchers.into_iter().flatten() {
        task.abort();
    }
    dhts.shutdown().await;
    if outcome.is_ok() {
        say("stopped");
    }
    outcome
}

/// The averager's configuration: the TOML file's (or the defaults), then the flags on top.
fn config(args: &NodeArgs) -> Result<AveragerConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).context(format!("reading {}", path.display()))?;
            AveragerConfig::from_toml(&text).context(format!("{}", path.display()))?
        }
        None => AveragerConfig::default(),
    };
    if let Some(prefix) = &args.prefix {
        config.prefix = prefix.clone();
    }
    if let Some(size) = args.group_size {
        config.target_group_size = Some(size);
    }
    if let Some(codec) = &args.compression {
        config.compression = codec.as_str().into();
    }
    config.validate().context("configuration")?;
    backends::codec(config.compression.name())?;
    Ok(config)
}

/// The tensors to average: the file's, or random values.
fn initial_tensors(args: &NodeArgs) -> Result<Vec<Tensor>> {
    let values = match &args.tensors {
        Some(path) => read_f32_file(path)?,
        None => {
            let floats = args.size.floats(NODE_FLOATS);
            if floats == 0 {
                return Err(Failure::new("--floats must be at least 1"));
            }
            let mut rng = rand::rng();
            (0..floats).map(|_| rng.random_range(-1.0f32..1.0)).collect()
        }
    };
    Ok(vec![Tensor::from_f32(vec![values.len()], values)?])
}

async fn serve(
    args: &NodeArgs,
    config: AveragerConfig,
    tensors: Vec<Tensor>,
    transport: Arc<dyn averager::Transport>,
    dht: Arc<dyn Dht>,
    dhts: &Dhts,
    every: Duration,
) -> Result<ExitCode> {
    let prefix = config.prefix.clone();
    let averager = Averager::new(tensors, dht, transport, config).await?;
    averager.set_allow_state_sharing(true)?;
    say(&format!("averaging endpoint {}", averager.endpoint()));
    dhts.print_new_addrs();
    let metrics = Metrics::new();
    let exporter = match args.metrics {
        Some(addr) => {
            let (bound, task) = crate::metrics::serve(addr, metrics.clone()).await?;
            say(&format!("metrics address {bound}"));
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    tracing::info!(%prefix, "node running; Ctrl+C stops it");
    say("ready");
    let shutdown = crate::signals::shutdown_signal();
    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        outcome = work(args, &averager, every, &metrics) => outcome,
        () = &mut shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    let stopped = averager.shutdown().await;
    drop(exporter);
    outcome?;
    stopped.context("shutting the averager down")?;
    Ok(ExitCode::SUCCESS)
}

/// Loads state if asked, then steps every `every` until `--steps` steps (or forever).
async fn work(args: &NodeArgs, averager: &Averager, every: Duration, metrics: &Metrics) -> Result<()> {
    if args.load_state {
        let loaded = load_state(averager).await;
        metrics.state_download(match &loaded {
            Ok(true) => "loaded",
            Ok(false) => "none",
            Err(_) => "failed",
        });
        loaded?;
    }
    // A step may outlive the period (matchmaking waits for others); it just delays the next.
    let timeout = every.max(Duration::from_secs(30));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut step = 0u64;
    while args.steps.is_none_or(|n| step < n) {
        ticks.tick().await;
        step += 1;
        let before = first_tensor(averager).await;
        let start = Instant::now();
        match averager.step(StepOptions::default().timeout(timeout)).await {
            Ok(gathered) => {
                let report = gathered.report();
                metrics.step_succeeded(report);
                let after = first_tensor(averager).await;
                // MB of this peer's tensor averaged per second of all-reduce (the demo's algbw).
                let mb = (after.len() * 4) as f64 / 1e6;
                let allreduce = report.all_reduce.as_secs_f64();
                let mb_per_s = if allreduce > 0.0 { mb / allreduce } else { 0.0 };
                say(&format!("averaged step {step} group {}", gathered.len()));
                // `seconds` stays the last field: the soak test reads it.
                tracing::info!(
                    step,
                    group = gathered.len(),
                    allreduce_secs = secs(report.all_reduce),
                    mb_per_s = (mb_per_s * 10.0).round() / 10.0,
                    moved = %format_args!("{:.3e}", rms_change(&before, &after)),
                    sent_kb = report.bytes_sent / 1000,
                    received_kb = report.bytes_received / 1000,
                    seconds = start.elapsed().as_secs_f64(),
                    "averaged"
                );
                if args.write_back
                    && let Some(path) = &args.tensors
                {
                    let tensors = averager.tensors().await;
                    let values = tensors.first().ok_or("the node holds no tensor")?.as_f32()?;
                    write_f32_file(path, values)?;
                }
            }
            // Being alone, or a group that fell apart, is normal for a long-running peer.
            Err(e) => {
                metrics.step_failed(&e);
                tracing::warn!(step, error = %e, "step failed");
            }
        }
    }
    Ok(())
}

/// A copy of the node's (one, f32) tensor.
async fn first_tensor(averager: &Averager) -> Vec<f32> {
    let tensors = averager.tensors().await;
    tensors.first().and_then(|t| t.as_f32().ok()).map(<[f32]>::to_vec).unwrap_or_default()
}

/// Root-mean-square difference of two equally long vectors (0 for empty or unequal ones).
fn rms_change(before: &[f32], after: &[f32]) -> f64 {
    if before.is_empty() || before.len() != after.len() {
        return 0.0;
    }
    let sum: f64 = before.iter().zip(after).map(|(a, b)| f64::from(b - a).powi(2)).sum();
    (sum / before.len() as f64).sqrt()
}

/// Aborts the metrics endpoint's task when the node stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Replaces the tensors with a donor's, when one answers and its tensors fit; whether it did.
async fn load_state(averager: &Averager) -> Result<bool> {
    let Some(state) = averager.load_state_from_peers(Some(LOAD_STATE_TIMEOUT)).await? else {
        tracing::warn!("no peer shared its state; starting from the local tensors");
        return Ok(false);
    };
    let mut tensors = averager.tensors().await;
    let fits = state.tensors.len() == tensors.len()
        && state
            .tensors
            .iter()
            .zip(tensors.iter())
            .all(|(a, b)| a.shape() == b.shape() && a.dtype() == b.dtype());
    if !fits {
        tracing::warn!("the downloaded state has other tensor shapes; keeping the local tensors");
        return Ok(false);
    }
    for (mine, theirs) in tensors.iter_mut().zip(state.tensors) {
        *mine = theirs;
    }
    tracing::info!("loaded the state of a peer");
    Ok(true)
}

/// One line on stdout (Rust's stdout is line-buffered, also into a pipe, so a reader sees it at
/// once; a closed stdout is ignored).
fn say(line: &str) {
    crate::out!("{line}");
}
