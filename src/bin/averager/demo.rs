//! `averager demo`: a local Moshpit swarm (SPEC 3.9). Peers start with different random tensors,
//! form groups of `--group-size` under `--bits` group bits, and average round after round until
//! every peer holds the exact global mean (or `--rounds` is used up). One line per round; the last
//! line says whether every peer holds the mean.
//!
//! The peers run in this process, or with `--processes` each in its own OS process (see
//! [`crate::processes`]).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use averager::AveragerConfig;

use crate::Result;
use crate::backends::{self, DhtKind, TransportKind};
use crate::bench::seconds;
use crate::cli::{DEFAULT_FLOATS, DemoArgs};
use crate::failure::Failure;
use crate::plot;
use crate::report::{algbw_mb_s, secs, tensor_bytes};
use crate::swarm::{RoundStats, Swarm, SwarmSpec};
use crate::tensors::{Agreement, ExactMean, peer_values};

/// Everything a demo run needs, checked and with defaults filled in.
#[derive(Debug, Clone)]
pub(crate) struct DemoPlan {
    /// The flags as given.
    pub(crate) args: DemoArgs,
    /// f32 elements per peer.
    pub(crate) floats: usize,
    /// Group bits per peer key.
    pub(crate) bits: usize,
    /// The DHT peers use.
    pub(crate) dht: DhtKind,
    /// Largest allowed |value - mean|.
    pub(crate) tolerance: Option<f64>,
    /// Whether the codec is lossless (picks the default tolerance).
    pub(crate) lossless: bool,
    /// Bound on one step.
    pub(crate) timeout: Duration,
}

impl DemoPlan {
    /// Checks the flags and fills in the defaults.
    ///
    /// # Errors
    /// For flags that cannot work together or values out of range.
    pub(crate) fn new(args: DemoArgs) -> Result<Self> {
        let floats = args.size.floats(DEFAULT_FLOATS);
        if args.peers < 2 {
            return Err(Failure::new(format!("--peers {}: averaging needs at least 2 peers", args.peers)));
        }
        if floats == 0 {
            return Err(Failure::new("--floats must be at least 1"));
        }
        if args.rounds == 0 {
            return Err(Failure::new("--rounds must be at least 1"));
        }
        if args.group_size < 2 || !args.group_size.is_power_of_two() {
            return Err(Failure::new(format!(
                "--group-size {}: must be a power of two >= 2 (Moshpit moves each member to its own bucket)",
                args.group_size
            )));
        }
        let bits = args.bits.unwrap_or_else(|| default_bits(args.peers, args.group_size));
        if bits > 20 {
            return Err(Failure::new(format!("--bits {bits}: at most 20")));
        }
        if let Some(t) = args.tolerance
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(Failure::new(format!("--tolerance {t}: must be a finite number >= 0")));
        }
        let full = default_bits(args.peers, args.group_size);
        if bits > full {
            tracing::warn!(
                "with {} peers in groups of {} and {bits} group bits, buckets hold fewer than 2 peers after the \
                 first round and groups cannot form; --bits {full} fills every bucket",
                args.peers,
                args.group_size
            );
        }
        let dht = args.dht.unwrap_or_else(DhtKind::demo_default);
        if args.processes {
            if args.transport == TransportKind::Memory {
                return Err(Failure::new(
                    "--processes needs a networked transport (grpc, quic or libp2p), not memory",
                ));
            }
            if dht == DhtKind::Memory {
                return Err(Failure::new(
                    "--processes needs --dht kad: an in-process DHT cannot span processes",
                ));
            }
        }
        let lossless = backends::codec(&args.compression)?.capabilities().lossless;
        let timeout = seconds("--timeout", args.timeout)?;
        Ok(DemoPlan { floats, bits, dht, tolerance: args.tolerance, lossless, timeout, args })
    }

    /// The averager configuration every peer shares (bits are per peer).
    pub(crate) fn config(&self) -> AveragerConfig {
        demo_config(PREFIX, self.args.group_size, &self.args.compression)
    }

    /// Peer `index`'s initial bits: `group-size` peers per bucket, buckets in order.
    pub(crate) fn initial_bits(&self, index: usize) -> String {
        if self.bits == 0 {
            return String::new();
        }
        let bucket = (index / self.args.group_size) % (1 << self.bits);
        format!("{bucket:0width$b}", width = self.bits)
    }

    /// The tolerance: given, or 1e-4 for lossless codecs and 2% of the largest |mean| (at least
    /// 0.02) for lossy ones, whose every pass rounds the values.
    pub(crate) fn tolerance(&self, mean: &[f64]) -> f64 {
        self.tolerance.unwrap_or_else(|| {
            if self.lossless { 1e-4 } else { 0.02 * mean.iter().fold(1.0f64, |m, v| m.max(v.abs())) }
        })
    }

    /// A one-line title for the plot.
    pub(crate) fn title(&self) -> String {
        format!(
            "{} peers x {} f32 ({:.1} MB), groups of {}, {} bits, {} + {} DHT, compression {}",
            self.args.peers,
            self.floats,
            tensor_bytes(self.floats) / 1e6,
            self.args.group_size,
            self.bits,
            self.args.transport.name(),
            self.dht.name(),
            self.args.compression
        )
    }

    /// The header line.
    pub(crate) fn header(&self) -> String {
        let exact = self.bits.div_ceil(self.args.group_size.trailing_zeros() as usize) + 1;
        format!(
            "averager demo: {} peers{}, {} f32 each ({:.1} MB), groups of {}, {} group bits (exact mean after {} \
             rounds when every group is full), transport {}, dht {}, compression {}",
            self.args.peers,
            if self.args.processes { " (one OS process each)" } else { "" },
            self.floats,
            tensor_bytes(self.floats) / 1e6,
            self.args.group_size,
            self.bits,
            exact,
            self.args.transport.name(),
            self.dht.name(),
            self.args.compression,
        )
    }
}

/// The prefix of the demo's group keys.
pub(crate) const PREFIX: &str = "demo";

/// The configuration of a demo peer, in this process or in a worker process.
pub(crate) fn demo_config(prefix: &str, group_size: usize, compression: &str) -> AveragerConfig {
    AveragerConfig {
        prefix: prefix.into(),
        target_group_size: Some(group_size),
        // A leader whose bucket is not full assembles what it has after this long.
        min_matchmaking_time: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
        compression: compression.into(),
        ..AveragerConfig::default()
    }
}

/// The fewest bits that leave every bucket a full group: log2(peers / group size), rounded up.
fn default_bits(peers: usize, group_size: usize) -> usize {
    peers.div_ceil(group_size).next_power_of_two().trailing_zeros() as usize
}

/// Runs the demo.
///
/// # Errors
/// Bad flags, or peers that cannot start. Peers that do not reach the mean are not an error but
/// a non-zero exit after the report.
pub(crate) async fn run(args: DemoArgs) -> Result<ExitCode> {
    let plan = DemoPlan::new(args)?;
    if plan.args.processes {
        return crate::processes::run(plan).await;
    }
    let started = Instant::now();
    crate::out!("{}", plan.header());
    let spec = SwarmSpec {
        transport: plan.args.transport,
        dht: plan.dht,
        config: plan.config(),
        bits: (0..plan.args.peers).map(|i| plan.initial_bits(i)).collect(),
    };
    let mut exact = ExactMean::new(plan.floats);
    let swarm = Swarm::start(&spec, |i| {
        let values = peer_values(plan.args.seed, i, plan.floats);
        exact.add(&values);
        values
    })
    .await?;
    let mean = exact.finish();
    let tolerance = plan.tolerance(&mean);
    let mut log = RoundLog::new(swarm.agreement(&mean).await?);
    for round in 1..=plan.args.rounds {
        let stats = swarm.round(plan.timeout, &format!("round {round}")).await;
        let agreement = swarm.agreement(&mean).await?;
        crate::out!("{}", log.record(round, &stats, agreement, plan.floats));
        if agreement.deviation <= tolerance {
            break;
        }
    }
    swarm.shutdown().await;
    finish(&plan, &log, tolerance, started)
}

/// The spread after every round, for the lines and the plot.
pub(crate) struct RoundLog {
    /// Spread before round 1, then after each round.
    pub(crate) spreads: Vec<f64>,
    /// The latest agreement.
    pub(crate) last: Agreement,
}

impl RoundLog {
    /// A log that starts at the initial agreement, and prints it.
    pub(crate) fn new(initial: Agreement) -> Self {
        crate::out!("round 0: spread {:.3e} (max over elements of max - min across peers)", initial.spread);
        RoundLog { spreads: vec![initial.spread], last: initial }
    }

    /// Records a round and returns its line.
    pub(crate) fn record(
        &mut self,
        round: usize,
        stats: &RoundStats,
        agreement: Agreement,
        floats: usize,
    ) -> String {
        self.spreads.push(agreement.spread);
        self.last = agreement;
        let (failed, reason) = stats.failures();
        let allreduce = stats.allreduce().map_or("-".to_string(), |d| format!("{:.3} s", secs(d)));
        let algbw = stats
            .allreduce()
            .map_or("-".to_string(), |d| format!("{:.1} MB/s", algbw_mb_s(tensor_bytes(floats), secs(d))));
        let matchmaking = stats.matchmaking().map_or("-".to_string(), |d| format!("{:.2} s", secs(d)));
        let mut line = format!(
            "round {round}: {} groups, all-reduce {allreduce}, algbw {algbw} per peer, spread {:.3e} \
             (matchmaking {matchmaking}, round {:.2} s)",
            stats.groups(),
            agreement.spread,
            secs(stats.wall),
        );
        if failed > 0 {
            line += &format!(" ({failed} peers failed: {})", reason.unwrap_or("?"));
        }
        line
    }
}

/// Plots, prints the verdict line, and picks the exit status.
pub(crate) fn finish(plan: &DemoPlan, log: &RoundLog, tolerance: f64, started: Instant) -> Result<ExitCode> {
    if let Some(path) = &plan.args.plot {
        plot::spread_svg(path, &log.spreads, &plan.title())?;
        tracing::info!(path = %path.display(), "wrote the spread plot");
    }
    tracing::info!("demo took {:.1} s", started.elapsed().as_secs_f64());
    let agree = log.last.deviation <= tolerance;
    crate::out!(
        "every peer holds the global mean: {} (largest |peer - exact f64 mean| {:.2e}, tolerance {:.1e}, after {} \
         rounds)",
        if agree { "yes" } else { "NO" },
        log.last.deviation,
        tolerance,
        log.spreads.len() - 1
    );
    Ok(if agree { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_bits_fill_every_bucket() {
        assert_eq!(default_bits(8, 2), 2);
        assert_eq!(default_bits(4, 2), 1);
        assert_eq!(default_bits(2, 2), 0);
        assert_eq!(default_bits(16, 4), 2);
        assert_eq!(default_bits(6, 2), 2);
    }
}
