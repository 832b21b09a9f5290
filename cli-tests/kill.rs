//! Real processes, real sockets, a real crash (issues 5 and 11): four peers run as separate OS
//! processes (the `averager` binary's `worker` subcommand) over each transport, matchmaking through
//! Kademlia; one is killed with SIGKILL the moment its all-reduce of a large tensor begins.
//!
//! The survivors must finish within a bound derived from the configured timeouts, and hold exactly
//! the values protocol 4.7 allows, part by part: in every span but the victim's, each part is the mean
//! over all four peers (the victim's part had reached that reducer) or the mean over the three
//! survivors, the first kind before the second within a span, and every survivor holds the same
//! kind for a part; in the victim's span, each part is the survivor's own value, or the mean over
//! all four where the victim replied before it died.
//!
//! A test binary of its own, so its processes never share the 2 cores with the other CLI tests;
//! its cases (one per transport) take turns for the same reason.

#[allow(dead_code)]
#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use averager::kad::{KadDht, KadSettings};
use common::{LineReader, averager, wait_or_kill};
use std::io::Write;

/// Elements per peer: 16 MB of f32, in parts of 2^19 bytes (protocol 9), 8 parts per member's span
/// (four members with no bandwidth given get equal shares, protocol 5).
const FLOATS: usize = 4 << 20;
const PART_FLOATS: usize = (1 << 19) / 4;
const SENDER_TIMEOUT: Duration = Duration::from_secs(2);
/// Must exceed the sender timeout (validation requires it); only 10% more, the relation under
/// which survivors used to drop each other (issue 11). A dead QUIC peer (no reset, no answer to a
/// dial) is noticed by this one.
const REDUCER_TIMEOUT: Duration = Duration::from_millis(2200);
/// How long the survivors may take after the kill, beyond waiting out the victim: it is excluded
/// as a sender within `sender_timeout` and as a reducer within `reducer_timeout` (the two run at
/// once). A survivor that took a live peer for dead would wait out another timeout and, more to
/// the point, hold values the oracle refuses. The margin covers the survivors' exchange of the rest
/// of their 16 MB, which in this debug build took up to 6 s beyond `reducer_timeout` with the
/// machine at load 12.
const AFTER_KILL: Duration = Duration::from_secs(12);
const LIMIT: Duration = Duration::from_secs(120);
const PEERS: usize = 4;
const VICTIM: usize = 3;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Worker {
    child: Child,
    stdin: ChildStdin,
    out: LineReader,
    dump: PathBuf,
}

fn read_f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn event(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(line).ok()
}

fn is_event(line: &str, name: &str) -> bool {
    event(line).is_some_and(|v| v["event"] == name)
}

fn kill_one_peer_mid_allreduce(transport: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bootstrap = runtime.block_on(KadDht::start(KadSettings::default())).expect("a bootstrap node starts");
    let address = bootstrap.listen_addrs().into_iter().find(|a| a.to_string().contains("/tcp/")).unwrap();
    let dir = std::env::temp_dir().join(format!("averager-kill-{transport}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("kill-{transport}-{}", std::process::id());

    let mut workers: Vec<Worker> = (0..PEERS)
        .map(|i| {
            let dump = dir.join(format!("peer{i}.f32"));
            let mut child = averager()
                .args(["worker", "--index", &i.to_string(), "--floats", &FLOATS.to_string(), "--seed", "5"])
                .args(["--group-size", &PEERS.to_string(), "--prefix", &prefix, "--transport", transport])
                .args(["--compression", "none", "--bootstrap", &address.to_string(), "--timeout", "90"])
                .args(["--sender-timeout", &SENDER_TIMEOUT.as_secs_f64().to_string()])
                .args(["--reducer-timeout", &REDUCER_TIMEOUT.as_secs_f64().to_string()])
                .arg("--dump")
                .arg(&dump)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                // Kept in `dir` when the test fails.
                .stderr(std::fs::File::create(dir.join(format!("peer{i}.log"))).unwrap())
                .env("RUST_LOG", "averager_core=info,warn")
                .spawn()
                .expect("a worker starts");
            let stdin = child.stdin.take().unwrap();
            let out = LineReader::new(child.stdout.take().unwrap());
            Worker { child, stdin, out, dump }
        })
        .collect();
    let mut endpoints = Vec::new();
    for (i, w) in workers.iter_mut().enumerate() {
        let ready = w.out.until(LIMIT, |l| is_event(l, "ready"));
        let ready = ready.unwrap_or_else(|| panic!("worker {i} not ready: {:?}", w.out.seen));
        endpoints.push(event(&ready).unwrap()["endpoint"].as_str().unwrap().to_string());
    }
    let initial: Vec<Vec<f32>> = workers.iter().map(|w| read_f32s(&w.dump)).collect();

    for w in &mut workers {
        writeln!(w.stdin, "round 1").unwrap();
        w.stdin.flush().unwrap();
    }
    let began = workers[VICTIM].out.until(LIMIT, |l| is_event(l, "allreduce") || is_event(l, "round"));
    assert!(
        began.as_deref().is_some_and(|l| is_event(l, "allreduce")),
        "the victim never began its all-reduce: {:?}",
        workers[VICTIM].out.seen
    );
    workers[VICTIM].child.kill().expect("SIGKILL");
    let killed = Instant::now();

    let mut reports = Vec::new();
    for (i, w) in workers.iter_mut().enumerate().filter(|(i, _)| *i != VICTIM) {
        let line = w.out.until(LIMIT, |l| is_event(l, "round"));
        let after = killed.elapsed();
        let line = line.unwrap_or_else(|| panic!("survivor {i} never finished: {:?}", w.out.seen));
        reports.push((i, after, event(&line).unwrap()));
    }
    let bound = SENDER_TIMEOUT.max(REDUCER_TIMEOUT) + AFTER_KILL;
    for (i, after, report) in &reports {
        assert!(report["error"].is_null(), "survivor {i} failed: {report}");
        assert_eq!(report["group"].as_array().map(Vec::len), Some(PEERS), "survivor {i}: {report}");
        assert!(*after <= bound, "survivor {i} finished {after:?} after the kill, over {bound:?}");
        eprintln!("{transport}: survivor {i} finished {after:?} after the kill");
    }
    let group: Vec<String> =
        reports[0].2["group"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    let victim_position =
        group.iter().position(|e| *e == endpoints[VICTIM]).expect("the victim is in the group");

    // protocol 4.7's partial result, part by part.
    let survivors: Vec<usize> = (0..PEERS).filter(|&i| i != VICTIM).collect();
    let classes: Vec<Vec<Value>> =
        survivors.iter().map(|&s| classify(s, &read_f32s(&workers[s].dump), &initial, &survivors)).collect();
    let parts_per_span = FLOATS / PEERS / PART_FLOATS;
    for (row, &s) in classes.iter().zip(&survivors) {
        for (owner, span) in row.chunks(parts_per_span).enumerate() {
            let allowed: &[Value] = if owner == victim_position {
                &[Value::All, Value::Local]
            } else {
                &[Value::All, Value::Survivors]
            };
            for (k, class) in span.iter().enumerate() {
                assert!(
                    allowed.contains(class),
                    "survivor {s}, span of member {owner}, part {k}: {class:?} (allowed: {allowed:?})"
                );
            }
            // Once a reducer stops counting on the victim, it never counts on it again.
            let first_other = span.iter().position(|c| *c != Value::All).unwrap_or(span.len());
            assert!(
                span[first_other..].iter().all(|c| *c != Value::All),
                "survivor {s}, span of member {owner}: {span:?}"
            );
        }
        let kept = row.iter().filter(|c| **c == Value::Local).count();
        eprintln!("{transport}: survivor {s}: parts {row:?} ({kept} kept local, all in the victim's span)");
    }
    // A reducer sends every sender the same reduced part.
    for (p, _) in classes[0].iter().enumerate().filter(|(p, _)| p / parts_per_span != victim_position) {
        assert!(
            classes.iter().all(|row| row[p] == classes[0][p]),
            "survivors disagree on part {p}: {classes:?}"
        );
    }

    for (i, mut w) in workers.into_iter().enumerate() {
        if i != VICTIM {
            let _ = writeln!(w.stdin, "quit");
        }
        drop(w.stdin);
        let status = wait_or_kill(w.child, LIMIT, &format!("worker {i}"));
        assert_eq!(status.success(), i != VICTIM, "worker {i} exit: {status}");
    }
    runtime.block_on(bootstrap.shutdown());
    // Only a passing run cleans up: a failing one leaves the peers' logs in `dir`.
    let _ = std::fs::remove_dir_all(&dir);
}

/// The values protocol 4.7 allows a survivor to hold for one part.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    /// The mean over all four peers.
    All,
    /// The mean over the three survivors.
    Survivors,
    /// The survivor's own value.
    Local,
}

/// Which allowed value survivor `s` holds for each part of `got`; panics on a part that holds
/// anything else, or a mix.
fn classify(s: usize, got: &[f32], initial: &[Vec<f32>], survivors: &[usize]) -> Vec<Value> {
    let mean = |who: &mut dyn Iterator<Item = usize>, e: usize| {
        let (sum, n) = who.fold((0.0f64, 0usize), |(sum, n), p| (sum + initial[p][e] as f64, n + 1));
        sum / n as f64
    };
    let close = |x: f64, g: f32| (g as f64 - x).abs() <= 1e-5 * (1.0 + x.abs());
    got.chunks(PART_FLOATS)
        .enumerate()
        .map(|(p, part)| {
            let start = p * PART_FLOATS;
            let fits = |class: Value| {
                part.iter().enumerate().all(|(o, &g)| {
                    let e = start + o;
                    match class {
                        Value::All => close(mean(&mut (0..PEERS), e), g),
                        Value::Survivors => close(mean(&mut survivors.iter().copied(), e), g),
                        Value::Local => g == initial[s][e],
                    }
                })
            };
            [Value::All, Value::Survivors, Value::Local]
                .into_iter()
                .find(|&c| fits(c))
                .unwrap_or_else(|| panic!("survivor {s}, part {p}: values protocol 4.7 does not allow"))
        })
        .collect()
}

#[test]
fn grpc_peers_survive_a_sigkill_mid_allreduce() {
    kill_one_peer_mid_allreduce("grpc");
}

#[test]
fn quic_peers_survive_a_sigkill_mid_allreduce() {
    kill_one_peer_mid_allreduce("quic");
}

#[test]
fn tcp_peers_survive_a_sigkill_mid_allreduce() {
    kill_one_peer_mid_allreduce("tcp");
}
