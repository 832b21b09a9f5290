//! NAT traversal with real network namespaces (issue 12): a public node (bootstrap and relay)
//! and two nodes, each in a home network behind its own masquerading router
//! (`cli-tests/nat/netns.sh` builds them), run `averager node --transport libp2p`; the two NATed
//! nodes listen through the public one (`--relay`). All three average 16 MB tensors in one group
//! to the exact mean. It runs twice: behind routers that keep a connection's port (hole punching
//! can connect the homes directly), then behind routers that pick a random port per connection
//! (it cannot, so the homes' traffic must go through the relay, whose limits must let a whole
//! all-reduce through).
//!
//! It prints whether the NATed nodes reached each other directly (a hole punch succeeded) or only
//! through the relay, and the time from each NATed node's start to its first completed round.
//! Where namespaces cannot be made (not root, no `ip`, nftables cannot be installed) it prints
//! why it did not run and returns. A test binary of its own: three debug-build nodes moving
//! 16 MB tensors through a relay need the cores to themselves.

#[allow(dead_code)]
#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{LineReader, kill, wait_or_kill};

/// 16 MB of f32 per peer.
const FLOATS: usize = 4 << 20;
/// Generous: debug builds, noise encryption and a relay in the path of every byte.
const LIMIT: Duration = Duration::from_secs(300);
/// Matchmaking waits for all three: a round of two would leave values that are not the mean.
const CONFIG: &str = "target_group_size = 3\nmin_group_size = 3\nmin_matchmaking_time = 4.0\n\
                      request_timeout = 2.0\nnext_chunk_timeout = 30.0\n";

/// The namespaces of one run; deleted (with whatever runs in them) when dropped, also when the
/// test fails.
struct Namespaces {
    script: PathBuf,
    suffix: String,
}

impl Namespaces {
    fn name(&self, which: &str) -> String {
        format!("avnat-{which}-{}", self.suffix)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(&self.script).args(["down", &self.suffix]).status();
    }
}

/// One `averager node` in a namespace; killed when dropped (a failing test leaves nothing behind).
struct Node {
    name: &'static str,
    child: Option<Child>,
    out: LineReader,
    err: LineReader,
    started: Instant,
    first_round: Option<Duration>,
}

impl Node {
    fn start(namespaces: &Namespaces, ns: &str, name: &'static str, args: &[String]) -> Node {
        let binary =
            std::env::var_os("AVERAGER_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_averager").into());
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &namespaces.name(ns)])
            .arg(binary)
            .arg("node")
            .args(args)
            // AVERAGER_NAT_LOG replaces the filter when a failure needs libp2p's own logs.
            .env("RUST_LOG", std::env::var("AVERAGER_NAT_LOG").unwrap_or("warn,averager_dht=info".into()))
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("node {name} starts: {e}"));
        let out = LineReader::new(child.stdout.take().expect("piped stdout"));
        let err = LineReader::new(child.stderr.take().expect("piped stderr"));
        Node { name, child: Some(child), out, err, started, first_round: None }
    }

    /// The first stdout line (read already, or read now) that is `wanted`, failing the test (with
    /// the node's output) when none comes within `limit`.
    fn until(&mut self, limit: Duration, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.out.seen.iter().find(|l| wanted(l)) {
            return line.clone();
        }
        match self.out.until(limit, wanted) {
            Some(line) => line,
            None => panic!("{what} did not come: {}", self.output()),
        }
    }

    fn output(&mut self) -> String {
        let _ = self.err.until(Duration::from_millis(200), |_| false);
        let name = self.name;
        format!("{name}: stdout {:?}\nstderr (last lines) {:?}", self.out.seen, last(&self.err.seen, 30))
    }

    /// Takes the lines that arrived (waiting at most `wait`); notes the first round of three.
    fn poll(&mut self, wait: Duration) {
        if self.out.until(wait, |l| l.starts_with("averaged ") && l.ends_with(" group 3")).is_some()
            && self.first_round.is_none()
        {
            self.first_round = Some(self.started.elapsed());
        }
    }

    fn lines_starting(&self, prefix: &str) -> Vec<String> {
        self.out.seen.iter().filter_map(|l| l.strip_prefix(prefix)).map(str::to_string).collect()
    }

    /// SIGINT, then waits for the node to exit.
    fn stop(&mut self) {
        let child = self.child.take().expect("running");
        kill(child.id(), "INT");
        let _ = self.out.rest(LIMIT);
        let status = wait_or_kill(child, LIMIT, self.name);
        let _ = self.err.rest(LIMIT);
        // Not asserted: a node interrupted in the middle of matchmaking may exit 1 when its step
        // outlasts the averager's shutdown timeout; what it holds is what its last round wrote.
        if !status.success() {
            eprintln!("{} after SIGINT: {status}; last lines {:#?}", self.name, last(&self.err.seen, 8));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn last(lines: &[String], n: usize) -> &[String] {
    &lines[lines.len().saturating_sub(n)..]
}

/// Peer `index`'s tensor: `3 * index + (j % 7)` at element `j`, so the mean over peers 0, 1, 2 is
/// `3 + (j % 7)`, exact in f32 whatever the order of the sums.
fn write_tensor(path: &Path, index: usize) {
    let bytes: Vec<u8> = (0..FLOATS).flat_map(|j| ((3 * index + j % 7) as f32).to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("tensor file written");
}

fn read_tensor(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("tensor file read");
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Both kinds of NAT: routers that keep a connection's port (hole punching can work), then routers
/// that pick a random port per connection (it cannot: averaging must go through the relay).
#[test]
fn natted_peers_average_to_the_exact_mean_by_hole_punch_or_through_the_relay() {
    for nat in ["cone", "symmetric"] {
        if !scenario(nat) {
            return;
        }
    }
}

/// One run behind routers of kind `nat`; false when namespaces cannot be made here.
fn scenario(nat: &str) -> bool {
    let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/cli-tests/nat/netns.sh"));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let suffix = format!("{:x}", (std::process::id() as u128 * 1_000_003 + nanos.as_nanos()) % 0xff_ffff);
    let namespaces = Namespaces { script: script.clone(), suffix: suffix.clone() };
    let up = Command::new("bash").arg(&script).args(["up", &suffix, nat]).output().expect("bash runs");
    match up.status.code() {
        Some(0) => {}
        Some(77) => {
            let why = String::from_utf8_lossy(&up.stderr);
            println!("NAT test NOT RUN: {}", why.trim());
            eprintln!("NAT test NOT RUN: {}", why.trim());
            return false;
        }
        _ => panic!("netns.sh up failed: {}", String::from_utf8_lossy(&up.stderr)),
    }

    let dir = std::env::temp_dir().join(format!("averager-nat-{suffix}"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let config = dir.join("config.toml");
    std::fs::write(&config, format!("prefix = \"nat-{suffix}\"\n{CONFIG}")).expect("config written");
    let files: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("peer{i}.f32"))).collect();
    for (i, file) in files.iter().enumerate() {
        write_tensor(file, i);
    }
    let args = |i: usize, extra: &[String]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--transport",
            "libp2p",
            "--dht-listen",
            "/ip4/0.0.0.0/tcp/0",
            "--every",
            "1",
            "--write-back",
            "--config",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(config.display().to_string());
        args.push("--tensors".into());
        args.push(files[i].display().to_string());
        args.extend_from_slice(extra);
        args
    };

    // The public node: bootstrap and relay for both homes, told its public addresses (a relay's
    // reservations must name one); in its own namespace any port is free.
    let public_args =
        ["--external-addr", "/ip4/172.31.1.1/tcp/4001", "--external-addr", "/ip4/172.31.2.1/tcp/4001"];
    let mut public_args = args(0, &public_args.map(str::to_string));
    let at = public_args.iter().position(|a| a == "/ip4/0.0.0.0/tcp/0").expect("the listen flag");
    public_args[at] = "/ip4/0.0.0.0/tcp/4001".into();
    let mut public = Node::start(&namespaces, "pub", "public", &public_args);
    public.until(LIMIT, "ready", |l| l == "ready");
    // Listening on 0.0.0.0, it prints an address per interface as it finds them, some maybe
    // after `ready`: each home reaches it on its own side.
    let mut toward = |net: &str| {
        let wanted = format!("dht address /ip4/{net}/tcp/4001/p2p/");
        let line = public.until(LIMIT, &format!("its address on {net}"), |l| l.starts_with(&wanted));
        line.trim_start_matches("dht address ").to_string()
    };
    let (for_a, for_b) = (toward("172.31.1.1"), toward("172.31.2.1"));

    let natted = |ns: &str, name: &'static str, i: usize, relay: &str| {
        let extra = ["--bootstrap", relay, "--relay", relay].map(str::to_string);
        Node::start(&namespaces, ns, name, &args(i, &extra))
    };
    let mut a = natted("ha", "home A", 1, &for_a);
    let mut b = natted("hb", "home B", 2, &for_b);
    for node in [&mut a, &mut b] {
        node.until(LIMIT, "ready", |l| l == "ready");
        node.until(LIMIT, "a relay reservation", |l| {
            l == "reachability relayed" || l == "reachability hole-punched"
        });
    }

    // Polls the three nodes in turn until each has completed a round of three.
    let deadline = Instant::now() + LIMIT;
    let mut nodes = [public, a, b];
    while nodes.iter().any(|n| n.first_round.is_none()) {
        if Instant::now() > deadline {
            let report: Vec<String> = nodes.iter_mut().map(Node::output).collect();
            panic!("no round of three within {LIMIT:?}:\n{}", report.join("\n"));
        }
        for node in nodes.iter_mut() {
            node.poll(Duration::from_millis(200));
        }
    }
    for node in nodes.iter_mut() {
        node.stop();
    }

    let expected: Vec<f32> = (0..FLOATS).map(|j| (3 + j % 7) as f32).collect();
    for (node, file) in nodes.iter().zip(&files) {
        let values = read_tensor(file);
        assert_eq!(values.len(), FLOATS, "{}", node.name);
        if let Some(j) = (0..FLOATS).find(|&j| values[j] != expected[j]) {
            let logs: Vec<String> = nodes.iter().map(|n| format!("{}: {:#?}", n.name, n.err.seen)).collect();
            panic!(
                "{}: element {j} is {} where the mean is {}\n{}",
                node.name,
                values[j],
                expected[j],
                logs.join("\n")
            );
        }
    }

    let [public, a, b] = &nodes;
    let punched = |n: &Node| n.lines_starting("hole punched ");
    let peer = |n: &Node| n.lines_starting("peer id ").pop().unwrap_or_default();
    let direct = punched(a).contains(&peer(b)) || punched(b).contains(&peer(a));
    println!(
        "NAT test ({nat} NAT): the NATed peers connected {}; public node reachability {:?}; home A {:?}, home B {:?}",
        if direct { "directly (hole punch)" } else { "only through the relay" },
        public.lines_starting("reachability "),
        a.lines_starting("reachability "),
        b.lines_starting("reachability "),
    );
    for node in [a, b] {
        let log: Vec<&String> = node
            .err
            .seen
            .iter()
            .filter(|l| l.contains("hole punch") || l.contains("relay") || l.contains("AutoNAT"))
            .collect();
        println!("NAT test ({nat} NAT): {} logged {log:#?}", node.name);
        let took = node.first_round.expect("a first round");
        println!(
            "NAT test ({nat} NAT): {} took {:.1} s from its start to its first completed round",
            node.name,
            took.as_secs_f64()
        );
    }
    if nat == "symmetric" {
        assert!(!direct, "a hole punch through routers that pick a random port per connection?");
    }
    let _ = std::fs::remove_dir_all(&dir);
    true
}
