//! Running the binary with a deadline, and reading a long-running one line by line.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// What a finished run printed.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// The last non-empty stdout line.
    pub(crate) fn last_line(&self) -> &str {
        self.stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
    }
}

/// The binary under test, with logs kept to warnings so that stderr stays short.
///
/// `AVERAGER_TEST_BIN` names another `averager` binary to run instead (a copy kept fixed while
/// the tree is rebuilt during a long repeated run, or a release build).
pub(crate) fn averager() -> Command {
    let binary =
        std::env::var_os("AVERAGER_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_averager").into());
    let mut command = Command::new(binary);
    command.env("RUST_LOG", "warn").env_remove("RUST_BACKTRACE");
    command
}

/// Runs `args` to the end; a run longer than `limit` is killed and fails the test.
pub(crate) fn run(args: &[&str], limit: Duration) -> Run {
    let mut child = averager()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the averager binary starts");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_or_kill(child, limit, &format!("averager {}", args.join(" ")));
    Run { status, stdout: join(stdout), stderr: join(stderr) }
}

/// Waits for `child`, killing it (and failing the test) after `limit`.
pub(crate) fn wait_or_kill(mut child: Child, limit: Duration, what: &str) -> ExitStatus {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(limit) {
        Ok(status) => status.expect("waiting for the child"),
        Err(_) => {
            kill(pid, "KILL");
            panic!("{what} did not finish within {limit:?}");
        }
    }
}

/// Sends a signal by name (`INT`, `KILL`, ...) with the `kill` command.
pub(crate) fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// Reads a pipe to its end on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

fn join(handle: thread::JoinHandle<String>) -> String {
    handle.join().expect("the pipe reader does not panic")
}

/// Lines of a running child's pipe, readable with a deadline.
#[cfg_attr(not(feature = "kad"), allow(dead_code))]
pub(crate) struct LineReader {
    lines: mpsc::Receiver<String>,
    pub(crate) seen: Vec<String>,
}

#[cfg_attr(not(feature = "kad"), allow(dead_code))]
impl LineReader {
    /// Starts reading `pipe` line by line on a thread.
    pub(crate) fn new(pipe: impl Read + Send + 'static) -> Self {
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LineReader { lines, seen: Vec::new() }
    }

    /// Reads lines until one satisfies `wanted` and returns it; `None` when the pipe closes or
    /// `limit` passes first.
    pub(crate) fn until(&mut self, limit: Duration, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if wanted(&line) {
                return Some(line);
            }
        }
    }

    /// Every line until the pipe closes (or no line comes for `limit`).
    pub(crate) fn rest(&mut self, limit: Duration) -> Vec<String> {
        while self.until(limit, |_| false).is_some() {}
        self.seen.clone()
    }
}

/// A running `averager node` (or any long-running command), its stdout and stderr read line by
/// line.
#[cfg_attr(not(feature = "kad"), allow(dead_code))]
pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) out: LineReader,
    pub(crate) err: LineReader,
}

#[cfg_attr(not(feature = "kad"), allow(dead_code))]
impl Node {
    /// Spawns `command` (from [`averager`]) with its output piped; `what` names it in failures.
    pub(crate) fn spawn(what: &str, command: &mut Command) -> Node {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
        let out = LineReader::new(child.stdout.take().expect("piped stdout"));
        let err = LineReader::new(child.stderr.take().expect("piped stderr"));
        Node { child, out, err }
    }

    /// [`Node::spawn`], then waits up to `limit` for the node to print `ready`.
    pub(crate) fn ready(what: &str, command: &mut Command, limit: Duration) -> Node {
        let mut node = Node::spawn(what, command);
        assert!(
            node.out.until(limit, |l| l == "ready").is_some(),
            "{what} never got ready: {:?}",
            node.out.seen
        );
        node
    }

    /// The rest of the first stdout line seen so far that starts with `prefix` (e.g.
    /// `"dht address "`).
    pub(crate) fn printed(&self, prefix: &str) -> String {
        let line = self.out.seen.iter().find_map(|l| l.strip_prefix(prefix));
        line.unwrap_or_else(|| panic!("no line {prefix:?} in {:?}", self.out.seen)).to_string()
    }

    /// Reads stdout to its end and waits for the exit (killing the node after `limit`); the exit
    /// status and every stdout line.
    pub(crate) fn finish(mut self, limit: Duration, what: &str) -> (ExitStatus, Vec<String>) {
        let lines = self.out.rest(limit);
        (wait_or_kill(self.child, limit, what), lines)
    }

    /// Stops the node with SIGINT, then [`Node::finish`].
    pub(crate) fn interrupt(self, limit: Duration, what: &str) -> (ExitStatus, Vec<String>) {
        kill(self.child.id(), "INT");
        self.finish(limit, what)
    }
}

/// Spawns `command` (from [`averager`]) with no input and its output discarded: a peer whose exit
/// is all that matters.
#[cfg_attr(not(feature = "kad"), allow(dead_code))]
pub(crate) fn spawn_quiet(what: &str, command: &mut Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"))
}
