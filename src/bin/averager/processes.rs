//! `demo --processes`: every peer in its own OS process (this binary's hidden `worker`
//! subcommand), finding the others through Kademlia from a bootstrap node this process runs.
//!
//! The demo drives rounds over the workers' stdin/stdout (see [`crate::worker`]) and compares
//! their tensors through the files they write after each round, so the per-round lines are the
//! same as in-process.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::Result;
use crate::backends::Dhts;
use crate::demo::{DemoPlan, PREFIX, RoundLog, finish};
use crate::failure::{Context, Failure};
use crate::progress::Progress;
use crate::swarm::{PeerRound, RoundStats};
use crate::tensors::{AgreementMeter, ExactMean, peer_values, read_f32_file};

/// How long a worker may take to start (generate its tensors, bootstrap, serve).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// One worker process and its pipes.
pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// The file the worker writes its tensor to (`--dump`), if it was given one.
    dump: Option<PathBuf>,
}

impl Worker {
    /// The worker's process id (`None` once it has been waited for).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends one command line.
    pub(crate) async fn send(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.context("writing to a worker")?;
        self.stdin.flush().await.context("writing to a worker")
    }

    /// The next report line with `event`, within `limit`.
    pub(crate) async fn expect(&mut self, event: &str, limit: Duration) -> Result<Value> {
        let read = async {
            loop {
                let Some(line) = self.stdout.next_line().await.context("reading a worker's reports")? else {
                    return Err(Failure::new(format!("a worker exited before its {event} report")));
                };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v["event"] == event => return Ok(v),
                    _ => tracing::debug!(%line, "ignoring a worker line"),
                }
            }
        };
        tokio::time::timeout(limit, read).await.unwrap_or_else(|_| {
            Err(Failure::new(format!("no {event} report from a worker within {limit:?}")))
        })
    }
}

/// Runs the demo with one process per peer.
///
/// # Errors
/// When the bootstrap node or a worker cannot start, or a worker stops answering.
pub(crate) async fn run(plan: DemoPlan) -> Result<ExitCode> {
    let started = Instant::now();
    crate::out!("{}", plan.header());
    let mut dhts = Dhts::new(plan.dht, &[])?;
    // The bootstrap node holds no averager: it only introduces the workers to each other.
    let _bootstrap = dhts.node().await?;
    let bootstrap = dhts.bootstrap_addrs();
    tracing::info!(?bootstrap, "bootstrap DHT node");
    let dir = std::env::temp_dir().join(format!("averager-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context(format!("creating {}", dir.display()))?;
    // On Ctrl+C the workers are killed (dropping them does) and the files still removed.
    let outcome = tokio::select! {
        outcome = drive(&plan, &bootstrap, &dir, started) => outcome,
        () = crate::signals::ctrl_c() => Err(Failure::new("interrupted")),
    };
    let _ = std::fs::remove_dir_all(&dir);
    dhts.shutdown().await;
    outcome
}

async fn drive(
    plan: &DemoPlan,
    bootstrap: &[String],
    dir: &std::path::Path,
    started: Instant,
) -> Result<ExitCode> {
    let mut workers = Vec::with_capacity(plan.args.peers);
    for index in 0..plan.args.peers {
        workers.push(spawn(plan, index, bootstrap, dir.join(format!("peer{index}.f32")))?);
    }
    let outcome = rounds(plan, &mut workers, started).await;
    stop(workers).await;
    outcome
}

/// This binary's hidden `worker` subcommand, to which the caller adds the worker's flags.
pub(crate) fn worker_command() -> Result<Command> {
    let exe = std::env::current_exe().context("finding this program to start workers")?;
    let mut command = Command::new(exe);
    command.arg("worker");
    Ok(command)
}

/// Starts worker `index` (this binary again, with the hidden subcommand).
fn spawn(plan: &DemoPlan, index: usize, bootstrap: &[String], dump: PathBuf) -> Result<Worker> {
    let mut command = worker_command()?;
    command
        .args(["--index", &index.to_string()])
        .args(["--floats", &plan.floats.to_string()])
        .args(["--seed", &plan.args.seed.to_string()])
        .args(["--bits", &plan.initial_bits(index)])
        .args(["--group-size", &plan.group_size.to_string()])
        .args(["--prefix", PREFIX])
        .args(["--transport", plan.args.transport.name()])
        .args(["--compression", &plan.args.compression])
        .args(["--timeout", &plan.args.timeout.to_string()])
        .arg("--dump")
        .arg(&dump);
    for addr in bootstrap {
        command.args(["--bootstrap", addr]);
    }
    launch(command, Some(dump))
}

/// Starts a worker from its full command; `dump` is the file it was told to write its tensor to.
pub(crate) fn launch(mut command: Command, dump: Option<PathBuf>) -> Result<Worker> {
    // A demo that dies must not leave peers behind.
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    let mut child = command.spawn().context("starting a worker process")?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(Failure::new("a worker process has no pipes"));
    };
    Ok(Worker { child, stdin, stdout: BufReader::new(stdout).lines(), dump })
}

/// Waits for every worker, computes the exact mean meanwhile, and runs the rounds.
async fn rounds(plan: &DemoPlan, workers: &mut [Worker], started: Instant) -> Result<ExitCode> {
    // The workers generate their tensors in parallel with this; same seeds, same values.
    let mut exact = ExactMean::new(plan.floats);
    for index in 0..plan.args.peers {
        exact.add(&peer_values(plan.args.seed, index, plan.floats));
    }
    let mean = exact.finish();
    let progress = Progress::bar("starting worker processes", workers.len());
    for worker in workers.iter_mut() {
        worker.expect("ready", START_TIMEOUT).await?;
        progress.inc();
    }
    progress.finish();
    let mut meter = AgreementMeter::new(&mean);
    for index in 0..plan.args.peers {
        meter.add(&peer_values(plan.args.seed, index, plan.floats))?;
    }
    let mut log = RoundLog::new(meter.finish());
    // A step may retry until its timeout; give the report a little more.
    let limit = plan.timeout + Duration::from_secs(30);
    for round in 1..=plan.args.rounds {
        let progress = Progress::bar(&format!("round {round}"), workers.len());
        let start = Instant::now();
        for worker in workers.iter_mut() {
            worker.send(&format!("round {round}")).await?;
        }
        let mut peers = Vec::with_capacity(workers.len());
        for worker in workers.iter_mut() {
            peers.push(peer_round(&worker.expect("round", limit).await?));
            progress.inc();
        }
        progress.finish();
        let stats = RoundStats { peers, wall: start.elapsed() };
        let mut meter = AgreementMeter::new(&mean);
        for worker in workers.iter() {
            let dump = worker.dump.as_deref().ok_or("a demo worker has no --dump file")?;
            meter.add(&read_f32_file(dump)?)?;
        }
        let agreement = meter.finish();
        crate::out!("{}", log.record(round, &stats, agreement, plan.floats));
        if plan.agrees(&agreement, round) {
            break;
        }
    }
    finish(plan, &log, started)
}

/// A worker's round report as a [`PeerRound`].
pub(crate) fn peer_round(report: &Value) -> PeerRound {
    let seconds = |key: &str| report[key].as_f64().map(Duration::from_secs_f64);
    PeerRound {
        matchmaking: seconds("matchmaking_s"),
        allreduce: seconds("allreduce_s"),
        group: report["group"]
            .as_array()
            .map(|members| members.iter().filter_map(|m| m.as_str().map(str::to_string)).collect()),
        error: report["error"].as_str().map(str::to_string),
    }
}

/// Asks every worker to quit, then waits for them all; one that hangs is killed.
pub(crate) async fn stop(workers: Vec<Worker>) {
    let mut children = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let _ = worker.send("quit").await;
        // Closing stdin is the second way to say quit, for a worker that missed the line.
        drop(worker.stdin);
        children.push(worker.child);
    }
    for mut child in children {
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => tracing::warn!(%status, "a worker exited with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not wait for a worker"),
            Err(_) => {
                tracing::warn!("a worker did not stop within 15 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
}
