//! Churn soak (issue 16, item 3): `averager node` processes average on loopback while one of them,
//! picked at random, is killed with SIGKILL every few seconds and restarted at once with
//! `--load-state`. Asserted throughout:
//!
//! - no step outlives its timeout: every step outcome a node logs took at most the node's step
//!   timeout, and no live node goes silent for longer than a step (plus its start-up state download)
//!   could take: a hang;
//! - no tensor ever holds NaN or a value outside the range of the inputs (checked in each node's
//!   `--write-back` file after every successful step, and at the end);
//! - restarted peers load a state from a peer;
//! - rounds keep completing: successful steps in the last third of the run too.
//!
//! Reported: successful steps, failed steps by reason, restarts and state loads, and the time to
//! recover (from a kill until the restarted peer's first successful step).
//!
//! `cargo test --test soak` runs the short version (4 processes, 30 s) in CI; `bench/soak.sh`
//! runs the long one (8 processes, 3 minutes; `SOAK_PEERS`, `SOAK_SECONDS`, `SOAK_KILL_EVERY`
//! change it). A test binary of its own, so its processes never share the cores with the other
//! CLI tests.
//!
//! It reads the node's stderr log lines `averaged ... seconds=S`, `step failed ... error=E` and
//! `loaded the state of a peer` (target `averager::node`).

#[allow(dead_code)]
#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use averager::kad::{KadDht, KadSettings};
use common::averager;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The node's bound on one step (`max(--every, 30 s)` in `averager node`).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// A restarted node's state download may take this long before its first step (the node's
/// `LOAD_STATE_TIMEOUT`).
const LOAD_STATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack for process start, logging and a loaded machine.
const SLACK: Duration = Duration::from_secs(5);
const FLOATS: usize = 10_000;
/// `--every`.
const EVERY: Duration = Duration::from_secs(1);

/// Every node's settings: short matchmaking, and sender/reducer timeouts so that a killed member
/// is dropped within seconds.
const CONFIG: &str = "min_matchmaking_time = 3.0\nrequest_timeout = 1.5\nnext_chunk_timeout = 2.0\n\
                      allreduce_timeout = 15.0\n";

struct Plan {
    peers: usize,
    group_size: usize,
    duration: Duration,
    kill_every: Duration,
    seed: u64,
}

/// One running node process, and what it has said.
struct Slot {
    child: Child,
    generation: usize,
    tensors: PathBuf,
    /// The node's `--config`: the shared settings and its initial group bits.
    config: PathBuf,
    started: Instant,
    last_outcome: Instant,
    /// When this process replaced a killed one: the kill time, until its first successful step.
    recovering_since: Option<Instant>,
    restarted: bool,
}

enum Said {
    Averaged { seconds: f64 },
    Failed { reason: String },
    Loaded,
    NotLoaded,
}

fn parse(line: &str) -> Option<Said> {
    let field = |name: &str| {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        Some(line[start..].trim().to_string())
    };
    if line.contains(" averaged") && line.contains("seconds=") {
        let seconds = field("seconds")?.split_whitespace().next()?.parse().ok()?;
        return Some(Said::Averaged { seconds });
    }
    if line.contains("step failed") {
        return Some(Said::Failed { reason: reason(&field("error").unwrap_or_default()) });
    }
    if line.contains("loaded the state of a peer") {
        return Some(Said::Loaded);
    }
    if line.contains("no peer shared its state") {
        return Some(Said::NotLoaded);
    }
    None
}

/// An error message without what differs per occurrence (addresses, numbers), to count by kind.
fn reason(error: &str) -> String {
    let words: Vec<&str> = error
        .split_whitespace()
        .filter(|w| !w.contains("://") && !w.chars().any(|c| c.is_ascii_digit()))
        .take(10)
        .collect();
    words.join(" ")
}

fn read_f32s(path: &Path) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn write_f32s(path: &Path, values: &[f32]) {
    std::fs::write(path, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

/// Starts node `index` (generation `generation`), its stderr lines tagged and sent to `lines`.
fn spawn(
    index: usize,
    generation: usize,
    args: &[String],
    tensors: &Path,
    config: &Path,
    load_state: bool,
    lines: &mpsc::Sender<(usize, usize, String)>,
) -> Child {
    let mut command = averager();
    command
        .arg("node")
        .args(args)
        .arg("--tensors")
        .arg(tensors)
        .arg("--write-back")
        .arg("--config")
        .arg(config);
    if load_state {
        command.arg("--load-state");
    }
    let mut child = command
        // `SOAK_RUST_LOG` adds to the log filter (e.g. `averager_core=debug`); the soak prints
        // every line it does not parse then.
        .env(
            "RUST_LOG",
            format!("warn,averager::node=info,{}", std::env::var("SOAK_RUST_LOG").unwrap_or_default()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("a node starts");
    let stderr = child.stderr.take().unwrap();
    let lines = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send((index, generation, line)).is_err() {
                break;
            }
        }
    });
    child
}

/// Checks a node's tensor file: finite and within `[lo, hi]`. A missing or short file (a node
/// killed before it wrote) is not a finding.
fn check_values(path: &Path, lo: f32, hi: f32, what: &str) {
    let Some(values) = read_f32s(path) else { return };
    if values.len() != FLOATS {
        return;
    }
    for (e, v) in values.iter().enumerate() {
        assert!(v.is_finite(), "{what}: element {e} is {v}");
        assert!(
            *v >= lo - 1e-6 && *v <= hi + 1e-6,
            "{what}: element {e} = {v} is outside the inputs' [{lo}, {hi}]"
        );
    }
}

fn soak(plan: &Plan) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bootstrap = runtime.block_on(KadDht::start(KadSettings::default())).expect("a bootstrap node starts");
    let address = bootstrap.listen_addrs().into_iter().find(|a| a.to_string().contains("/tcp/")).unwrap();
    let dir = std::env::temp_dir().join(format!("averager-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // One bucket per `group_size` nodes, as Moshpit runs (the demo's grid), rather than every node
    // under one key.
    let bits = plan.peers.div_ceil(plan.group_size).next_power_of_two().trailing_zeros() as usize;
    let args: Vec<String> = [
        "--floats".to_string(),
        FLOATS.to_string(),
        "--every".into(),
        EVERY.as_secs_f64().to_string(),
        "--group-size".into(),
        plan.group_size.to_string(),
        "--prefix".into(),
        format!("soak{}", std::process::id()),
        "--bootstrap".into(),
        address.to_string(),
    ]
    .into();

    // Every input is in [lo, hi]: each node's own random sub-range of [-1, 1].
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let (tx, rx) = mpsc::channel();
    let mut slots: Vec<Slot> = (0..plan.peers)
        .map(|i| {
            let tensors = dir.join(format!("peer{i}.f32"));
            let center: f32 = rng.random_range(-0.5..0.5);
            let values: Vec<f32> = (0..FLOATS).map(|_| center + rng.random_range(-0.5f32..0.5)).collect();
            lo = values.iter().copied().fold(lo, f32::min);
            hi = values.iter().copied().fold(hi, f32::max);
            write_f32s(&tensors, &values);
            let config = dir.join(format!("peer{i}.toml"));
            let initial_bits = if bits == 0 { String::new() } else { format!("{:0bits$b}", i % (1 << bits)) };
            std::fs::write(&config, format!("{CONFIG}initial_group_bits = \"{initial_bits}\"\n")).unwrap();
            let child = spawn(i, 0, &args, &tensors, &config, false, &tx);
            let now = Instant::now();
            Slot {
                child,
                generation: 0,
                tensors,
                config,
                started: now,
                last_outcome: now,
                recovering_since: None,
                restarted: false,
            }
        })
        .collect();

    let start = Instant::now();
    let mut next_kill = start + plan.kill_every;
    let (mut successes, mut late_successes) = (0usize, 0usize);
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let (mut kills, mut loaded, mut not_loaded) = (0usize, 0usize, 0usize);
    let mut recoveries: Vec<f64> = Vec::new();
    let mut longest_step = 0.0f64;
    // A live node must report a step outcome at least this often.
    let silence = STEP_TIMEOUT + EVERY + SLACK;
    while start.elapsed() < plan.duration {
        while let Ok((i, generation, line)) = rx.recv_timeout(Duration::from_millis(100)) {
            let slot = &mut slots[i];
            if generation != slot.generation {
                continue; // a killed process's last words
            }
            match parse(&line) {
                Some(Said::Averaged { seconds }) => {
                    slot.last_outcome = Instant::now();
                    longest_step = longest_step.max(seconds);
                    assert!(
                        seconds <= (STEP_TIMEOUT + SLACK).as_secs_f64(),
                        "node {i}: a step took {seconds} s, over its timeout {STEP_TIMEOUT:?}"
                    );
                    successes += 1;
                    if start.elapsed() > plan.duration * 2 / 3 {
                        late_successes += 1;
                    }
                    if let Some(killed) = slot.recovering_since.take() {
                        recoveries.push(killed.elapsed().as_secs_f64());
                    }
                    check_values(&slot.tensors, lo, hi, &format!("node {i} after a step"));
                }
                Some(Said::Failed { reason }) => {
                    slot.last_outcome = Instant::now();
                    *failures.entry(reason).or_default() += 1;
                }
                Some(Said::Loaded) => {
                    loaded += 1;
                    slot.last_outcome = Instant::now();
                }
                Some(Said::NotLoaded) => {
                    not_loaded += 1;
                    slot.last_outcome = Instant::now();
                }
                None if std::env::var_os("SOAK_RUST_LOG").is_some() => eprintln!("node {i}: {line}"),
                None => {}
            }
            if start.elapsed() >= plan.duration {
                break;
            }
        }
        for (i, slot) in slots.iter_mut().enumerate() {
            // A restarted node first downloads a state, which has its own timeout.
            let allowed = if slot.restarted && slot.last_outcome == slot.started {
                silence + LOAD_STATE_TIMEOUT
            } else {
                silence
            };
            assert!(
                slot.last_outcome.elapsed() <= allowed,
                "node {i} (generation {}) has reported no step for {:?}: a hang",
                slot.generation,
                slot.last_outcome.elapsed()
            );
            if let Ok(Some(status)) = slot.child.try_wait() {
                panic!("node {i} (generation {}) exited by itself: {status}", slot.generation);
            }
        }
        if Instant::now() >= next_kill && start.elapsed() + plan.kill_every < plan.duration {
            next_kill += plan.kill_every;
            let i = rng.random_range(0..plan.peers);
            let slot = &mut slots[i];
            slot.child.kill().expect("SIGKILL");
            let _ = slot.child.wait();
            let killed = Instant::now();
            kills += 1;
            slot.generation += 1;
            slot.child = spawn(i, slot.generation, &args, &slot.tensors, &slot.config, true, &tx);
            slot.started = Instant::now();
            slot.last_outcome = slot.started;
            slot.restarted = true;
            // A node killed while still recovering keeps its first kill time.
            slot.recovering_since = Some(slot.recovering_since.unwrap_or(killed));
        }
    }
    for slot in &mut slots {
        let _ = slot.child.kill();
        let _ = slot.child.wait();
    }
    for (i, slot) in slots.iter().enumerate() {
        check_values(&slot.tensors, lo, hi, &format!("node {i} at the end"));
    }
    recoveries.sort_by(f64::total_cmp);
    let secs = |x: Option<&f64>| x.map_or("-".to_string(), |s| format!("{s:.2}"));
    let median = recoveries.get(recoveries.len() / 2);
    eprintln!(
        "soak: {} nodes, {:?}, a SIGKILL every {:?}: {successes} successful steps ({late_successes} in the last \
         third), longest step {longest_step:.2} s; {kills} kills, restarted peers loaded a state {loaded} times \
         ({not_loaded} found none); time to recover (kill to first successful step) min {} median {} max {} s \
         over {} recoveries",
        plan.peers,
        plan.duration,
        plan.kill_every,
        secs(recoveries.first()),
        secs(median),
        secs(recoveries.last()),
        recoveries.len()
    );
    let failed: Vec<String> = failures.iter().map(|(r, n)| format!("{n} x {r}")).collect();
    eprintln!(
        "soak: failed steps by reason: {}",
        if failed.is_empty() { "none".into() } else { failed.join("; ") }
    );
    assert!(successes > 0, "no step ever succeeded");
    assert!(late_successes > 0, "rounds stopped completing: none in the last third of the run");
    assert!(kills > 0, "the run was too short to kill anyone");
    assert!(loaded > 0, "no restarted peer loaded a state ({not_loaded} found none)");
    std::fs::remove_dir_all(&dir).unwrap();
    drop(bootstrap);
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn short_soak_of_four_nodes() {
    soak(&Plan {
        peers: 4,
        group_size: 4,
        duration: Duration::from_secs(30),
        kill_every: Duration::from_secs(6),
        seed: 16,
    });
}

/// The long soak: `bench/soak.sh`, or `cargo test --test soak -- --ignored --nocapture`.
#[test]
#[ignore = "minutes long; run by bench/soak.sh"]
fn long_soak() {
    soak(&Plan {
        peers: env_or("SOAK_PEERS", 8),
        group_size: env_or("SOAK_GROUP_SIZE", 4),
        duration: Duration::from_secs(env_or("SOAK_SECONDS", 180)),
        kill_every: Duration::from_secs_f64(env_or("SOAK_KILL_EVERY", 5.0)),
        seed: env_or("SOAK_SEED", 1),
    });
}
