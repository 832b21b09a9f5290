//! `averager sim`: a Moshpit swarm of many peers (1,024 by default) as full `Averager`s in this
//! process, on the in-process backends (memory DHT, memory transport behind the fault-injecting
//! transport), with small tensors so that the protocol, not the arithmetic, is what runs.
//!
//! Per round it prints the groups formed, the peers that averaged, the spread across peers and
//! the distance to the global mean, and it compares the rounds to consensus with Moshpit's
//! theory: a full grid of `M^d` peers in groups of `M` holds the exact mean after `d` rounds (with
//! `b` group bits and groups of `M = 2^k`: `b / k + 1` rounds when every bucket is full).
//!
//! `--churn` replaces a fraction of the peers before each round by newcomers that download a
//! state from a live peer; `--fail` kills a fraction of the peers the moment their all-reduce
//! starts (they are replaced like churned peers before the next round); `--delay` holds every
//! request message. With churn or failures the mean itself moves (departed peers take their
//! values with them), so the distance is reported both to the initial mean and to the mean of
//! the peers present.

mod population;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use averager::AveragerConfig;
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Result;
use crate::bench::seconds;
use crate::failure::Failure;
use crate::plot;
use crate::swarm::RoundStats;
use population::Population;

/// Flags of `averager sim`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SimArgs {
    /// Peers in the swarm.
    #[arg(long, default_value_t = 1024)]
    pub(crate) peers: usize,
    /// f32 elements per peer.
    #[arg(long, default_value_t = 16)]
    pub(crate) floats: usize,
    /// Target group size (a power of two).
    #[arg(long, default_value_t = 4)]
    pub(crate) group_size: usize,
    /// Group bits [default: log2(peers / group-size), rounded up: every bucket a full group].
    #[arg(long)]
    pub(crate) bits: Option<usize>,
    /// Rounds to run; without churn and failures the run stops once every peer holds the mean.
    #[arg(long, default_value_t = 10)]
    pub(crate) rounds: usize,
    /// Fraction of the peers that leave before each round, replaced by newcomers that load a
    /// state from a live peer.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) churn: f64,
    /// Fraction of the peers killed in each round as their all-reduce starts.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) fail: f64,
    /// Seconds every request message is held (network latency).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) delay: f64,
    /// Largest allowed |peer - mean| on any element for "exact".
    #[arg(long, default_value_t = 1e-5)]
    pub(crate) tolerance: f64,
    /// Seconds a leader waits for its group to fill before it starts with fewer peers (a full
    /// group starts at once; too short a wait on a busy machine splits groups and breaks the grid).
    #[arg(long, default_value_t = 5.0)]
    pub(crate) matchmaking_time: f64,
    /// Seconds one step (matchmaking + all-reduce) may take: a peer left alone in its bucket
    /// (churn, failures) retries until then, so this bounds a round.
    #[arg(long, default_value_t = 12.0)]
    pub(crate) timeout: f64,
    /// Draw the spread per round to this SVG file (log scale).
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
    /// Seed of the values and of who leaves and fails.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

/// The checked flags.
struct Plan {
    args: SimArgs,
    bits: usize,
    delay: Option<Duration>,
    timeout: Duration,
    matchmaking: Duration,
}

impl Plan {
    fn new(args: SimArgs) -> Result<Plan> {
        if args.peers < 2 {
            return Err(Failure::new(format!("--peers {}: averaging needs at least 2 peers", args.peers)));
        }
        if args.floats == 0 || args.rounds == 0 {
            return Err(Failure::new("--floats and --rounds must be at least 1"));
        }
        if args.group_size < 2 || !args.group_size.is_power_of_two() {
            return Err(Failure::new(format!(
                "--group-size {}: must be a power of two >= 2",
                args.group_size
            )));
        }
        for (flag, value) in [("--churn", args.churn), ("--fail", args.fail)] {
            if !(0.0..=0.5).contains(&value) {
                return Err(Failure::new(format!("{flag} {value}: must be a fraction in [0, 0.5]")));
            }
        }
        if !(args.tolerance.is_finite() && args.tolerance >= 0.0) {
            return Err(Failure::new(format!(
                "--tolerance {}: must be a finite number >= 0",
                args.tolerance
            )));
        }
        let bits = args.bits.unwrap_or_else(|| full_bits(args.peers, args.group_size));
        if bits > 20 {
            return Err(Failure::new(format!("--bits {bits}: at most 20")));
        }
        // 0 (the default) means no delay, which `seconds` would refuse as a timeout.
        let delay = if args.delay == 0.0 { None } else { Some(seconds("--delay", args.delay)?) };
        let timeout = seconds("--timeout", args.timeout)?;
        let matchmaking = seconds("--matchmaking-time", args.matchmaking_time)?;
        Ok(Plan { delay, timeout, matchmaking, bits, args })
    }

    fn config(&self) -> AveragerConfig {
        AveragerConfig {
            prefix: "sim".into(),
            target_group_size: Some(self.args.group_size),
            // A full group starts at once; this is only how long a partial one waits.
            min_matchmaking_time: self.matchmaking,
            request_timeout: self.matchmaking / 2,
            // A member killed mid all-reduce is dropped after this long at most.
            next_chunk_timeout: Some(Duration::from_secs(2).max(self.matchmaking * 2)),
            ..AveragerConfig::default()
        }
    }

    /// Peer `i`'s initial bits: `group-size` peers per bucket, buckets in order (a full grid).
    fn initial_bits(&self, i: usize) -> String {
        if self.bits == 0 {
            return String::new();
        }
        let bucket = (i / self.args.group_size) % (1 << self.bits);
        format!("{bucket:0width$b}", width = self.bits)
    }

    /// Rounds after which every peer holds the exact mean when every group is full.
    fn theory_rounds(&self) -> usize {
        self.bits.div_ceil(self.args.group_size.trailing_zeros() as usize) + 1
    }

    /// `Some(d)` when the peers form a full grid `M^d`.
    fn grid_depth(&self) -> Option<u32> {
        let m = self.args.group_size;
        (1..=20).find(|&d| m.checked_pow(d) == Some(self.args.peers))
    }
}

/// The fewest bits that leave every bucket a full group.
fn full_bits(peers: usize, group_size: usize) -> usize {
    peers.div_ceil(group_size).next_power_of_two().trailing_zeros() as usize
}

/// A peer's starting values: uniform in [-1, 1), so f32 keeps 1e-7 absolute precision and a
/// 1e-5 tolerance means the protocol, not rounding, decides.
fn random_values(rng: &mut StdRng, floats: usize) -> Vec<f32> {
    (0..floats).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Spread (max over elements of max - min across peers), largest |value - mean| and the RMS of
/// value - mean over every peer and element (the typical peer, where the largest is the worst).
fn measure(values: &[Vec<f32>], mean: &[f64]) -> (f64, f64, f64) {
    let mut spread = 0.0f64;
    let mut distance = 0.0f64;
    let mut squares = 0.0f64;
    for (e, m) in mean.iter().enumerate() {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values {
            let x = f64::from(v[e]);
            lo = lo.min(x);
            hi = hi.max(x);
            // NaN counts as infinitely far.
            let d = (x - m).abs();
            distance = if d.is_nan() { f64::INFINITY } else { distance.max(d) };
            squares += d * d;
        }
        spread = spread.max(hi - lo);
    }
    let count = (values.len() * mean.len()).max(1) as f64;
    (spread, distance, (squares / count).sqrt())
}

fn mean_of(values: &[Vec<f32>], floats: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; floats];
    for v in values {
        sum.iter_mut().zip(v).for_each(|(s, x)| *s += f64::from(*x));
    }
    let n = values.len().max(1) as f64;
    sum.into_iter().map(|s| s / n).collect()
}

/// Peak resident set size of this process, from `/proc/self/status` (Linux), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs the simulation.
///
/// # Errors
/// Bad flags, or peers that cannot start. Peers that do not reach the mean (without churn and
/// failures) are a non-zero exit after the report, not an error.
pub(crate) async fn run(args: SimArgs) -> Result<ExitCode> {
    let plan = Plan::new(args)?;
    let started = Instant::now();
    let a = &plan.args;
    let grid = match plan.grid_depth() {
        Some(d) => format!("a full grid of {}^{d} peers: exact after {d} rounds", a.group_size),
        None => format!("not a full {}^d grid", a.group_size),
    };
    crate::out!(
        "averager sim: {} peers x {} f32, groups of {}, {} group bits (theory: exact after {} rounds when every \
         group is full; {grid}), churn {}, fail {}, delay {} s",
        a.peers,
        a.floats,
        a.group_size,
        plan.bits,
        plan.theory_rounds(),
        a.churn,
        a.fail,
        a.delay
    );
    let mut rng = StdRng::seed_from_u64(a.seed);
    let bits: Vec<String> = (0..a.peers).map(|i| plan.initial_bits(i)).collect();
    let mut population =
        Population::start(plan.config(), plan.delay, &bits, |_| random_values(&mut rng, a.floats)).await?;
    let values = population.values().await?;
    let initial_mean = mean_of(&values, a.floats);
    let (spread, _, _) = measure(&values, &initial_mean);
    crate::out!(
        "round 0: spread {spread:.3e} (started {} peers in {:.1} s)",
        a.peers,
        started.elapsed().as_secs_f64()
    );
    let mut spreads = vec![spread];
    let steady = a.churn == 0.0 && a.fail == 0.0;
    let mut exact_after = None;
    let mut failures_by_reason: std::collections::BTreeMap<String, usize> = Default::default();
    for round in 1..=a.rounds {
        let mut churn_note = String::new();
        if round > 1 || a.churn > 0.0 {
            let leave = if a.churn > 0.0 { (a.churn * population.len() as f64).round() as usize } else { 0 };
            let churn = population
                .churn(leave, plan.bits, &mut rng, plan.timeout, |rng| random_values(rng, a.floats))
                .await?;
            if churn.left > 0 {
                churn_note = format!(
                    ", {} left/died and were replaced ({} loaded a state, {} did not)",
                    churn.left, churn.loaded, churn.unloaded
                );
            }
        }
        let doomed: Vec<bool> =
            (0..population.len()).map(|_| a.fail > 0.0 && rng.random_bool(a.fail)).collect();
        let stats = population.round(plan.timeout, &doomed).await;
        for p in &stats.peers {
            if let Some(e) = &p.error {
                *failures_by_reason.entry(reason(e)).or_default() += 1;
            }
        }
        let values = population.values().await?;
        let current_mean = mean_of(&values, a.floats);
        let (spread, to_initial, _) = measure(&values, &initial_mean);
        let (_, to_current, rms) = measure(&values, &current_mean);
        spreads.push(spread);
        crate::out!(
            "{}",
            round_line(round, &stats, [spread, to_initial, to_current, rms], &doomed) + &churn_note
        );
        if to_current <= a.tolerance && exact_after.is_none() {
            exact_after = Some(round);
            if steady {
                break;
            }
        }
    }
    population.shutdown().await;
    if let Some(path) = &a.plot {
        let title = format!(
            "averager sim: {} peers, groups of {}, {} bits, churn {}, fail {}",
            a.peers, a.group_size, plan.bits, a.churn, a.fail
        );
        plot::spread_svg(path, &spreads, &title)?;
    }
    if !failures_by_reason.is_empty() {
        let list: Vec<String> = failures_by_reason.iter().map(|(r, n)| format!("{n} x {r}")).collect();
        crate::out!("failed steps by reason: {}", list.join("; "));
    }
    crate::out!(
        "wall {:.1} s, peak RSS {}",
        started.elapsed().as_secs_f64(),
        peak_rss_mb().map_or("unknown".into(), |mb| format!("{mb:.0} MB"))
    );
    let verdict = match exact_after {
        Some(r) => format!(
            "every peer holds the exact mean: yes, after {r} rounds (theory: {})",
            plan.theory_rounds()
        ),
        None => format!(
            "every peer holds the exact mean: NO after {} rounds (theory: {})",
            spreads.len() - 1,
            plan.theory_rounds()
        ),
    };
    crate::out!("{verdict}");
    Ok(if exact_after.is_some() || !steady { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One round's line.
///
/// `figures`: the spread, the largest distance to the initial mean, and the largest and RMS
/// distance to the mean of the peers present.
fn round_line(round: usize, stats: &RoundStats, figures: [f64; 4], doomed: &[bool]) -> String {
    let killed = doomed.iter().filter(|d| **d).count();
    let [spread, to_initial, to_current, rms] = figures;
    // A peer killed mid all-reduce may still see its own step succeed; it averaged nothing.
    let averaged =
        stats.peers.iter().zip(doomed).filter(|(p, doomed)| p.group.is_some() && !**doomed).count();
    let mut sizes = std::collections::BTreeMap::<usize, usize>::new();
    for group in
        stats.peers.iter().filter_map(|p| p.group.as_ref()).collect::<std::collections::BTreeSet<_>>()
    {
        *sizes.entry(group.len()).or_default() += 1;
    }
    let sizes: Vec<String> = sizes.iter().map(|(size, n)| format!("{n} of {size}")).collect();
    let mut line = format!(
        "round {round}: {} groups ({}), {averaged}/{} peers averaged, spread {spread:.3e}, distance to the mean \
         {to_current:.3e} (rms {rms:.3e}; to the initial mean {to_initial:.3e}), {:.2} s",
        stats.groups(),
        if sizes.is_empty() { "none".to_string() } else { sizes.join(", ") },
        stats.peers.len(),
        stats.wall.as_secs_f64()
    );
    if killed > 0 {
        line += &format!(", {killed} killed mid all-reduce");
    }
    line
}

/// A failure message without the parts that differ per peer (endpoints, numbers), to count
/// failures by kind.
fn reason(message: &str) -> String {
    let words: Vec<&str> = message
        .split_whitespace()
        .filter(|w| !w.contains("mem://") && !w.chars().any(|c| c.is_ascii_digit()))
        .take(8)
        .collect();
    words.join(" ")
}
