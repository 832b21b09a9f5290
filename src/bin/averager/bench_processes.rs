//! `bench --processes`: every peer of the benchmark in its own OS process (the hidden `worker`
//! subcommand, as `demo --processes` runs them), so that peers share no allocator, runtime or
//! address space, as gloo's and hivemind's peers do in `bench/run.sh`. Peers find each other
//! through Kademlia from a bootstrap node in this process. After the rounds, each worker's peak
//! resident memory is read from `/proc/<pid>/status` (`VmHWM`).

use std::time::{Duration, Instant};

use crate::Result;
use crate::backends::{DhtKind, Dhts};
use crate::cli::BenchArgs;
use crate::processes::{Worker, launch, peer_round, stop, worker_command};
use crate::swarm::RoundStats;

/// How long a worker may take to start (generate its tensor, bootstrap, serve).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The prefix of the benchmark's keys, as in-process.
const PREFIX: &str = "bench";

/// The benchmark's peers as worker processes.
pub(crate) struct ProcessPeers {
    workers: Vec<Worker>,
    dhts: Dhts,
    round: u64,
    /// How long a round's report may take: the step's timeout plus a margin.
    limit: Duration,
}

impl ProcessPeers {
    /// Starts `args.peers` workers with `floats` values each and waits until all serve.
    ///
    /// # Errors
    /// When the bootstrap node or a worker cannot start, or a worker is not ready in time.
    pub(crate) async fn start(args: &BenchArgs, floats: usize, timeout: Duration) -> Result<Self> {
        let mut dhts = Dhts::new(DhtKind::Kad, &[])?;
        // The bootstrap node holds no averager: it only introduces the workers to each other.
        dhts.node().await?;
        let bootstrap = dhts.bootstrap_addrs();
        let mut workers = Vec::with_capacity(args.peers);
        for index in 0..args.peers {
            let mut command = worker_command()?;
            command
                .args(["--index", &index.to_string()])
                .args(["--floats", &floats.to_string()])
                // Seed 0, as the in-process benchmark: the same tensors either way.
                .args(["--seed", "0"])
                .args(["--group-size", &args.peers.to_string()])
                .args(["--prefix", PREFIX])
                .args(["--transport", args.transport.name()])
                .args(["--compression", &args.compression])
                .args(["--timeout", &timeout.as_secs_f64().to_string()]);
            for addr in &bootstrap {
                command.args(["--bootstrap", addr]);
            }
            workers.push(launch(command, None)?);
        }
        let mut peers = ProcessPeers { workers, dhts, round: 0, limit: timeout + Duration::from_secs(30) };
        for worker in &mut peers.workers {
            if let Err(e) = worker.expect("ready", START_TIMEOUT).await {
                peers.shutdown().await;
                return Err(e);
            }
        }
        Ok(peers)
    }

    /// One step on every worker; the stats of each worker's report, in worker order.
    ///
    /// # Errors
    /// When a worker stops answering (a failed step is a report with an error instead).
    pub(crate) async fn round(&mut self) -> Result<RoundStats> {
        self.round += 1;
        let start = Instant::now();
        for worker in &mut self.workers {
            worker.send(&format!("round {}", self.round)).await?;
        }
        let mut peers = Vec::with_capacity(self.workers.len());
        for worker in &mut self.workers {
            peers.push(peer_round(&worker.expect("round", self.limit).await?));
        }
        Ok(RoundStats { peers, wall: start.elapsed() })
    }

    /// Each worker's peak resident set in bytes, `None` where `/proc` does not tell.
    pub(crate) fn peak_rss(&self) -> Vec<Option<u64>> {
        self.workers.iter().map(|w| w.pid().and_then(peak_rss_bytes)).collect()
    }

    /// Stops the workers and the bootstrap node.
    pub(crate) async fn shutdown(self) {
        stop(self.workers).await;
        self.dhts.shutdown().await;
    }
}

/// The `VmHWM` (peak resident set) of process `pid`, in bytes.
fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

/// The `VmHWM:   1234 kB` line of a `/proc/<pid>/status` text, in bytes.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kb: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\taverager\nVmPeak:\t  900 kB\nVmHWM:\t  123456 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(123_456 * 1024));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\tlots kB\n"), None);
    }
}
