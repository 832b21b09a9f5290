//! `averager demo`: a local Moshpit swarm (protocol 3.9). Peers start with different random tensors,
//! form groups of `--group-size` under `--bits` group bits, and average round after round until
//! every peer holds the exact global mean (or `--rounds` is used up). One line per round; the last
//! line says whether every peer holds the mean.
//!
//! The peers run in this process, or with `--processes` each in its own OS process (see
//! [`crate::processes`]).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use averager::{AveragerConfig, Compression, CompressionInfo, Tensor};

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
    /// The target group size peers use: `--group-size`, or every peer when the peers do not
    /// fill Moshpit buckets of that size (see [`layout`]).
    pub(crate) group_size: usize,
    /// Group bits per peer key.
    pub(crate) bits: usize,
    /// The DHT peers use.
    pub(crate) dht: DhtKind,
    /// Largest allowed |value - mean|, if given.
    pub(crate) tolerance: Option<f64>,
    /// The codec's root-mean-square round-trip error on the demo's data (0 for lossless codecs).
    pub(crate) codec_error: f64,
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
        let (group_size, bits) = layout(args.peers, args.group_size, args.bits)?;
        if bits > 20 {
            return Err(Failure::new(format!("--bits {bits}: at most 20")));
        }
        if let Some(t) = args.tolerance
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(Failure::new(format!("--tolerance {t}: must be a finite number >= 0")));
        }
        let dht = args.dht.unwrap_or_else(DhtKind::demo_default);
        if args.processes {
            if args.transport == TransportKind::Memory {
                return Err(Failure::new(
                    "--processes needs a networked transport (grpc, quic, tcp or libp2p), not memory",
                ));
            }
            if dht == DhtKind::Memory {
                return Err(Failure::new(
                    "--processes needs --dht kad: an in-process DHT cannot span processes",
                ));
            }
        }
        let codec = backends::codec(&args.compression)?;
        let codec_error = codec_error(codec.as_ref(), args.seed, args.peers, floats)?;
        let timeout = seconds("--timeout", args.timeout)?;
        Ok(DemoPlan { floats, group_size, bits, dht, tolerance: args.tolerance, codec_error, timeout, args })
    }

    /// The averager configuration every peer shares (bits are per peer).
    pub(crate) fn config(&self) -> AveragerConfig {
        demo_config(PREFIX, self.group_size, &self.args.compression)
    }

    /// Peer `index`'s initial bits: `group-size` peers per bucket, buckets in order.
    pub(crate) fn initial_bits(&self, index: usize) -> String {
        if self.bits == 0 {
            return String::new();
        }
        let bucket = (index / self.group_size) % (1 << self.bits);
        format!("{bucket:0width$b}", width = self.bits)
    }

    /// Whether the peers hold the mean after `rounds` rounds, by [`DemoPlan::judged`] and
    /// [`DemoPlan::tolerance`].
    pub(crate) fn agrees(&self, agreement: &Agreement, rounds: usize) -> bool {
        self.judged(agreement) <= self.tolerance(rounds)
    }

    /// Whether the verdict judges the root-mean-square deviation (a lossy codec without a given
    /// tolerance) rather than the largest one. A lossy codec's largest error over millions of
    /// elements is a tail that grows with the data; its mean square is what it promises and what
    /// tells "averaged, with the codec's noise" from "not averaged with everyone".
    fn judges_rms(&self) -> bool {
        self.tolerance.is_none() && self.codec_error > 0.0
    }

    /// The deviation the verdict compares with the tolerance.
    pub(crate) fn judged(&self, agreement: &Agreement) -> f64 {
        if self.judges_rms() { agreement.rms } else { agreement.deviation }
    }

    /// The tolerance after `rounds` rounds: given, or f32 rounding (1e-4), plus for a lossy codec
    /// what it may have added. In a round each value meets the codec's error up to three times
    /// (protocol 4.8): the senders' parts on the way to the reducer (in the average), the peer's
    /// own part again (its delta is taken against the decoded part, so that error stays), and the
    /// delta on the way back. Errors of different rounds are independent, so their root mean
    /// square grows with the square root of the rounds; a margin of 2 covers data that drifts
    /// from the probed values.
    pub(crate) fn tolerance(&self, rounds: usize) -> f64 {
        self.tolerance.unwrap_or_else(|| {
            F32_TOLERANCE + 2.0 * ERRORS_PER_ROUND * (rounds as f64).sqrt() * self.codec_error
        })
    }

    /// What the verdict compared, for its line.
    fn verdict_basis(&self) -> String {
        match (self.tolerance, self.judges_rms()) {
            (Some(_), _) => "on the largest, as given".into(),
            (None, false) => "on the largest (lossless codec)".into(),
            (None, true) => format!(
                "on the rms, from the codec's rms error {:.1e} (x{ERRORS_PER_ROUND} per round, x sqrt(rounds), x2)",
                self.codec_error
            ),
        }
    }

    /// A one-line title for the plot.
    pub(crate) fn title(&self) -> String {
        format!(
            "{} peers x {} f32 ({:.1} MB), groups of {}, {} bits, {} + {} DHT, compression {}",
            self.args.peers,
            self.floats,
            tensor_bytes(self.floats) / 1e6,
            self.group_size,
            self.bits,
            self.args.transport.name(),
            self.dht.name(),
            self.args.compression
        )
    }

    /// The header line.
    pub(crate) fn header(&self) -> String {
        let exact = match self.group_size.trailing_zeros() {
            0 => 1,
            per_round => self.bits.div_ceil(per_round as usize) + 1,
        };
        let groups = if self.group_size == self.args.group_size {
            format!("groups of {}", self.group_size)
        } else {
            format!(
                "one group of {} ({} peers do not fill groups of {} in 2^k buckets)",
                self.group_size, self.args.peers, self.args.group_size
            )
        };
        format!(
            "averager demo: {} peers{}, {} f32 each ({:.1} MB), {groups}, {} group bits (exact mean after {} \
             rounds when every group is full), transport {}, dht {}, compression {}",
            self.args.peers,
            if self.args.processes { " (one OS process each)" } else { "" },
            self.floats,
            tensor_bytes(self.floats) / 1e6,
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

/// The default tolerance of a lossless run: what f32 arithmetic loses on the demo's values.
const F32_TOLERANCE: f64 = 1e-4;

/// How many codec errors one round can add to a value (see [`DemoPlan::tolerance`]).
const ERRORS_PER_ROUND: f64 = 3.0;

/// Elements the codec probe encodes: two all-reduce parts at the default part size.
const PROBE_FLOATS: usize = 1 << 18;

/// The configuration of a demo peer, in this process or in a worker process.
pub(crate) fn demo_config(prefix: &str, group_size: usize, compression: &str) -> AveragerConfig {
    AveragerConfig {
        prefix: prefix.into(),
        target_group_size: Some(group_size),
        // Only full groups: a smaller one would leave a bucket's last peer without a partner.
        min_group_size: group_size,
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

/// The group size and group bits of a run, chosen so that every peer averages in every round.
///
/// Moshpit keeps `peers / 2^bits` peers in every bucket, round after round, so every peer has a
/// full group exactly when that is a multiple of the group size. Without `--bits`, peers that
/// are `group_size × 2^k` take `k` bits (the exact mean after `k / log2(group_size) + 1` rounds);
/// any other count forms one group of every peer, which reaches the mean in one round. A given
/// `--bits` that leaves a bucket without a full group is refused at once, with the reason.
///
/// # Errors
/// For `--bits` that leave some peer without a full group.
fn layout(peers: usize, group_size: usize, bits: Option<usize>) -> Result<(usize, usize)> {
    // Peers in each bucket's groups, for `bits` bits; `None` when that overflows.
    let per_bits = |bits: usize| 1usize.checked_shl(u32::try_from(bits).ok()?)?.checked_mul(group_size);
    let full = default_bits(peers, group_size);
    let exact = per_bits(full) == Some(peers);
    match bits {
        None if exact => Ok((group_size, full)),
        None => Ok((peers, 0)),
        Some(bits) if per_bits(bits).is_some_and(|n| peers.is_multiple_of(n)) => Ok((group_size, bits)),
        Some(bits) => Err(Failure::new(format!(
            "--bits {bits} with {peers} peers in groups of {group_size}: {} buckets cannot each hold a whole \
             number of full groups, so some peer would wait for a partner every round; {}",
            1u64.checked_shl(bits as u32).map_or("so many".to_string(), |b| b.to_string()),
            if exact {
                format!("--bits {full} or fewer fills every bucket")
            } else {
                "leave out --bits for one group of every peer".to_string()
            }
        ))),
    }
}

/// The codec's root-mean-square round-trip error on values like the demo's (the last peer's,
/// whose magnitudes are the largest), encoded in parts as the all-reduce sends them; 0 when
/// lossless.
///
/// # Errors
/// When the codec refuses the values.
fn codec_error(codec: &dyn Compression, seed: u64, peers: usize, floats: usize) -> Result<f64> {
    if codec.capabilities().lossless {
        return Ok(0.0);
    }
    let values = peer_values(seed, peers.saturating_sub(1), floats.min(PROBE_FLOATS));
    let mut squares = 0.0f64;
    let part = AveragerConfig::default().part_size_bytes / std::mem::size_of::<f32>();
    for chunk in values.chunks(part.max(1)) {
        let tensor = Tensor::from_f32(vec![chunk.len()], chunk.to_vec())?;
        let info = CompressionInfo::for_tensor(0, &tensor.view());
        let decoded = codec.extract(&codec.compress(&tensor.view(), &info)?)?;
        for (a, b) in chunk.iter().zip(decoded.as_f32()?) {
            squares += f64::from(a - b).powi(2);
        }
    }
    Ok((squares / values.len().max(1) as f64).sqrt())
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
    let mut log = RoundLog::new(swarm.agreement(&mean).await?);
    for round in 1..=plan.args.rounds {
        let stats = swarm.round(plan.timeout, &format!("round {round}")).await;
        let agreement = swarm.agreement(&mean).await?;
        crate::out!("{}", log.record(round, &stats, agreement, plan.floats));
        if plan.agrees(&agreement, round) {
            break;
        }
    }
    swarm.shutdown().await;
    finish(&plan, &log, started)
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
pub(crate) fn finish(plan: &DemoPlan, log: &RoundLog, started: Instant) -> Result<ExitCode> {
    if let Some(path) = &plan.args.plot {
        plot::spread_svg(path, &log.spreads, &plan.title())?;
        tracing::info!(path = %path.display(), "wrote the spread plot");
    }
    tracing::info!("demo took {:.1} s", started.elapsed().as_secs_f64());
    let rounds = log.spreads.len() - 1;
    let agree = plan.agrees(&log.last, rounds);
    crate::out!(
        "every peer holds the global mean: {} (largest |peer - exact f64 mean| {:.2e}, rms {:.2e}; tolerance {:.1e} {}; \
         after {rounds} rounds)",
        if agree { "yes" } else { "NO" },
        log.last.deviation,
        log.last.rms,
        plan.tolerance(rounds),
        plan.verdict_basis(),
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

    #[test]
    fn every_peer_gets_a_full_group() {
        assert_eq!(layout(8, 2, None).unwrap(), (2, 2));
        assert_eq!(layout(4, 2, None).unwrap(), (2, 1));
        assert_eq!(layout(16, 4, None).unwrap(), (4, 2));
        // Peers that are not group_size x 2^k: one group of all of them.
        assert_eq!(layout(3, 2, None).unwrap(), (3, 0));
        assert_eq!(layout(6, 2, None).unwrap(), (6, 0));
        // Given bits: fewer is fine, too many or a bucket with a partial group is refused.
        assert_eq!(layout(8, 2, Some(1)).unwrap(), (2, 1));
        assert_eq!(layout(6, 2, Some(0)).unwrap(), (2, 0));
        assert!(layout(8, 2, Some(3)).is_err());
        assert!(layout(3, 2, Some(0)).is_err());
        assert!(layout(3, 2, Some(99)).is_err());
    }
}
