//! Real processes, real sockets, a real crash (issue 5): four peers run as separate OS processes
//! (the `averager` binary's `worker` subcommand) over each transport, matchmaking through Kademlia;
//! one is killed with SIGKILL the moment its all-reduce of a large tensor begins. The other three
//! must finish within `sender_timeout` + 1 s of the kill, with the partial result of protocol 4.7:
//! every element averaged (over the survivors, or over all four where the victim's part had
//! arrived) except where the victim was the reducer, which keep their local values.
//!
//! A test binary of its own, so its processes never share the 2 cores with the other CLI tests;
//! its two cases take turns for the same reason.

#[allow(dead_code)]
#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use averager::dht::{KadDht, KadSettings};
use common::{LineReader, averager, wait_or_kill};
use std::io::Write;

/// Elements per peer: 16 MB of f32 in 32 parts. The survivors' reducers hold every part of their
/// spans until the victim is excluded (protocol 4.6 reduces parts in order, waiting for every
/// sender), so the whole exchange among the survivors happens inside the "+ 1 s" after
/// `sender_timeout`; a larger tensor would not fit in it on a loaded 2-core machine.
const FLOATS: usize = 4 << 20;
const SENDER_TIMEOUT: Duration = Duration::from_secs(2);
/// Must exceed the sender timeout; a dead QUIC peer (no TCP reset, no answer to a dial) is
/// noticed by this one.
const REDUCER_TIMEOUT: Duration = Duration::from_millis(2200);
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
    for (i, w) in workers.iter_mut().enumerate() {
        assert!(
            w.out.until(LIMIT, |l| is_event(l, "ready")).is_some(),
            "worker {i} not ready: {:?}",
            w.out.seen
        );
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
    for (i, after, report) in &reports {
        assert!(report["error"].is_null(), "survivor {i} failed: {report}");
        assert_eq!(report["group"].as_array().map(Vec::len), Some(PEERS), "survivor {i}: {report}");
        assert!(
            *after <= SENDER_TIMEOUT + Duration::from_secs(1),
            "survivor {i} finished {after:?} after the kill, over sender_timeout + 1 s"
        );
        eprintln!("{transport}: survivor {i} finished {after:?} after the kill");
    }

    // protocol 4.7's partial result, element by element.
    let survivors: Vec<usize> = (0..PEERS).filter(|&i| i != VICTIM).collect();
    for &s in &survivors {
        let got = read_f32s(&workers[s].dump);
        let (mut local, mut averaged) = (0usize, 0usize);
        for (e, &g) in got.iter().enumerate() {
            let all = (0..PEERS).map(|p| initial[p][e] as f64).sum::<f64>() / PEERS as f64;
            let three = survivors.iter().map(|&p| initial[p][e] as f64).sum::<f64>() / survivors.len() as f64;
            let close = |x: f64| (g as f64 - x).abs() <= 1e-5 * (1.0 + x.abs());
            if close(all) || close(three) {
                averaged += 1;
            } else if g == initial[s][e] {
                local += 1;
            } else {
                panic!("survivor {s}, element {e}: {g} is neither local nor an average");
            }
        }
        assert!(averaged >= FLOATS / 2, "survivor {s}: only {averaged} of {FLOATS} elements averaged");
        assert!(local > 0, "survivor {s}: the victim's span cannot have been averaged");
        eprintln!(
            "{transport}: survivor {s}: {averaged} elements averaged, {local} kept (the victim's span)"
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

#[test]
fn grpc_peers_survive_a_sigkill_mid_allreduce() {
    kill_one_peer_mid_allreduce("grpc");
}

#[test]
fn quic_peers_survive_a_sigkill_mid_allreduce() {
    kill_one_peer_mid_allreduce("quic");
}
