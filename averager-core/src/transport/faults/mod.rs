//! Fault injection for deterministic fault-tolerance tests: [`FaultyTransport`] wraps any
//! [`Transport`] and applies the faults a test sets through its [`FaultPlan`].
//!
//! Faults apply to the messages this peer *sends*: its requests when it calls (selectable per
//! RPC and per remote endpoint) and its responses when it serves (selectable per RPC). The plan is
//! consulted before every message, so a test may change it while calls are running. Without
//! faults the wrapper is transparent.
//!
//! ```
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use averager_core::transport::{Fault, FaultyTransport, MemoryTransport, Rpc};
//! let (transport, plan) = FaultyTransport::new(Arc::new(MemoryTransport::default()));
//! // This peer's replies to rpc_aggregate_part stall after three messages...
//! plan.add(Fault::StallAfter(3).rpc(Rpc::AggregatePart).server_side());
//! // ...and its requests to one peer are slow, in every RPC.
//! let slow = plan.add(Fault::Delay(Duration::from_millis(50)).calls_to("mem://b"));
//! plan.remove(slow);
//! ```
//!
//! A rule is a [`Fault`] narrowed with [`Fault::rpc`], [`Fault::client_side`], [`Fault::server_side`]
//! and [`Fault::calls_to`] (each returns a rule that the same methods narrow further).

#[cfg(test)]
mod tests;
mod wrap;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

pub use self::wrap::FaultyTransport;
use crate::error::Error;
use crate::transport::ServerHandle;

/// One of the three RPCs, to select which calls a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `rpc_join_group`.
    JoinGroup,
    /// `rpc_aggregate_part`.
    AggregatePart,
    /// `rpc_download_state`.
    DownloadState,
}

/// Which side of a call this peer is on: a fault applies to requests as a client and to
/// responses as a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    Client,
    Server,
}

/// What goes wrong with the messages a rule selects.
///
/// Message counts are per call: `n` is how many of this call's messages in the selected direction
/// have been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every message is held this long before it is sent (delays of several rules add up).
    Delay(Duration),
    /// The messages the rule matches share one link of this many bytes per second (their
    /// encoded size; the request of a unary call counts as empty): each is held until the link
    /// has carried every earlier one and itself. Unlike [`Fault::Delay`], which slows each call
    /// on its own, this makes concurrent calls compete, as on a peer's real uplink. `0` carries
    /// nothing: messages wait as after [`Fault::StallAfter`]`(0)`.
    Bandwidth(u64),
    /// After `n` messages the call fails. As a client, the call is aborted: the server sees its
    /// request stream end with an error and the client's response stream yields
    /// [`Error::Transport`]; a unary call with `n = 0` fails at once. As a server, the caller's
    /// response stream yields [`Error::Transport`] after `n` messages.
    FailAfter(usize),
    /// After `n` messages nothing more is sent, but the stream stays open forever, so only the
    /// other side's timeouts end the call. A unary call with `n = 0` returns a response stream
    /// that never yields.
    StallAfter(usize),
    /// The whole peer dies when the rule is added, whatever the rule's selectors: its endpoints
    /// stop answering (new calls fail with [`Error::Unreachable`], calls in flight are cut), its
    /// own calls in flight and later fail with [`Error::Transport`], and it cannot serve again.
    Kill,
}

impl Fault {
    /// A rule applying this fault only to calls of `rpc`.
    pub fn rpc(self, rpc: Rpc) -> FaultRule {
        FaultRule::new(self).rpc(rpc)
    }

    /// A rule applying this fault only to this peer's requests (calls it makes).
    pub fn client_side(self) -> FaultRule {
        FaultRule::new(self).client_side()
    }

    /// A rule applying this fault only to this peer's responses (calls it serves).
    pub fn server_side(self) -> FaultRule {
        FaultRule::new(self).server_side()
    }

    /// A rule applying this fault only to calls this peer makes to `endpoint`.
    pub fn calls_to(self, endpoint: impl Into<String>) -> FaultRule {
        FaultRule::new(self).calls_to(endpoint)
    }
}

/// A fault and the messages it applies to. By default it applies to every RPC, in both roles,
/// whatever the remote endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    fault: Fault,
    rpc: Option<Rpc>,
    role: Option<Role>,
    remote: Option<String>,
}

impl FaultRule {
    /// `fault` for every message this peer sends.
    pub fn new(fault: Fault) -> Self {
        FaultRule { fault, rpc: None, role: None, remote: None }
    }

    /// Only for calls of `rpc`.
    pub fn rpc(mut self, rpc: Rpc) -> Self {
        self.rpc = Some(rpc);
        self
    }

    /// Only for this peer's requests (calls it makes).
    pub fn client_side(mut self) -> Self {
        self.role = Some(Role::Client);
        self
    }

    /// Only for this peer's responses (calls it serves).
    pub fn server_side(mut self) -> Self {
        self.role = Some(Role::Server);
        self
    }

    /// Only for calls this peer makes to `endpoint` (implies [`client_side`](Self::client_side)).
    pub fn calls_to(mut self, endpoint: impl Into<String>) -> Self {
        self.role = Some(Role::Client);
        self.remote = Some(endpoint.into());
        self
    }

    /// The fault.
    pub fn fault(&self) -> Fault {
        self.fault
    }

    fn matches(&self, at: &Selector) -> bool {
        self.rpc.is_none_or(|rpc| rpc == at.rpc)
            && self.role.is_none_or(|role| role == at.role)
            && self.remote.as_deref().is_none_or(|remote| at.remote.as_deref() == Some(remote))
    }
}

impl From<Fault> for FaultRule {
    fn from(fault: Fault) -> Self {
        FaultRule::new(fault)
    }
}

/// Identifies a rule added to a [`FaultPlan`], to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

/// The faults of one [`FaultyTransport`], changeable at run time. Cheap to clone; clones share
/// the plan.
#[derive(Clone)]
pub struct FaultPlan {
    inner: Arc<PlanInner>,
}

impl FaultPlan {
    fn new() -> Self {
        let (killed, _) = watch::channel(false);
        FaultPlan {
            inner: Arc::new(PlanInner {
                rules: Mutex::new(Vec::new()),
                next_rule: AtomicU64::new(0),
                killed,
                servers: Mutex::new(HashMap::new()),
                next_server: AtomicU64::new(0),
                links: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Adds a rule (a bare [`Fault`] applies to everything); it applies from the next message on,
    /// also in calls already running. Adding a [`Fault::Kill`] kills the peer at once.
    pub fn add(&self, rule: impl Into<FaultRule>) -> RuleId {
        let rule = rule.into();
        let id = RuleId(self.inner.next_rule.fetch_add(1, Ordering::Relaxed));
        let kill = rule.fault == Fault::Kill;
        lock(&self.inner.rules).push((id, rule));
        if kill {
            self.kill();
        }
        id
    }

    /// Removes a rule; returns whether it was there. (A kill cannot be undone.)
    pub fn remove(&self, id: RuleId) -> bool {
        let mut rules = lock(&self.inner.rules);
        let before = rules.len();
        rules.retain(|(rule_id, _)| *rule_id != id);
        lock(&self.inner.links).remove(&id);
        rules.len() != before
    }

    /// Removes every rule. (A kill cannot be undone.)
    pub fn clear(&self) {
        lock(&self.inner.rules).clear();
    }

    /// The rules in force, oldest first.
    pub fn rules(&self) -> Vec<FaultRule> {
        lock(&self.inner.rules).iter().map(|(_, rule)| rule.clone()).collect()
    }

    /// Kills the peer; see [`Fault::Kill`].
    pub fn kill(&self) {
        self.inner.killed.send_replace(true);
        let servers: Vec<ServerHandle> =
            lock(&self.inner.servers).drain().map(|(_, handle)| handle).collect();
        // Dropping the inner handles stops the endpoints and cuts their calls in flight.
        drop(servers);
    }

    /// Whether the peer has been killed.
    pub fn is_killed(&self) -> bool {
        *self.inner.killed.borrow()
    }
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultPlan").field("rules", &self.rules()).field("killed", &self.is_killed()).finish()
    }
}

/// Locks a mutex whose data stays consistent after a panic (single pushes and removals).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct PlanInner {
    rules: Mutex<Vec<(RuleId, FaultRule)>>,
    next_rule: AtomicU64,
    killed: watch::Sender<bool>,
    /// The inner transport's handles of the endpoints this peer serves, dropped on kill.
    servers: Mutex<HashMap<u64, ServerHandle>>,
    next_server: AtomicU64,
    /// Per [`Fault::Bandwidth`] rule: when its link has carried every message held so far.
    links: Mutex<HashMap<RuleId, tokio::time::Instant>>,
}

/// Which messages are about to be sent.
#[derive(Debug, Clone)]
struct Selector {
    role: Role,
    rpc: Rpc,
    /// The endpoint called (client calls only).
    remote: Option<String>,
}

/// What to do with the next message.
#[derive(Debug)]
enum Verdict {
    /// Send it after this delay.
    Send(Duration),
    /// Fail the call with this error instead.
    Fail(Error),
    /// Send nothing more, ever.
    Stall,
}

impl PlanInner {
    /// The verdict for the next message at `at`, after `sent` messages of this call. `bytes` is
    /// the message's size when it is about to be sent: only then does it take its turn on the
    /// links of [`Fault::Bandwidth`] rules (a check made before the message exists has none).
    fn verdict(&self, at: &Selector, sent: usize, bytes: Option<usize>) -> Verdict {
        let rules = lock(&self.rules);
        let mut delay = Duration::ZERO;
        let mut fail_after: Option<usize> = None;
        let mut stall_after: Option<usize> = None;
        for (id, rule) in rules.iter().filter(|(_, rule)| rule.matches(at)) {
            match rule.fault {
                Fault::Delay(d) => delay = delay.saturating_add(d),
                Fault::Bandwidth(0) => stall_after = Some(0),
                Fault::Bandwidth(rate) => {
                    if let Some(bytes) = bytes {
                        delay = delay.saturating_add(self.take_link(*id, rate, bytes));
                    }
                }
                Fault::FailAfter(n) if n <= sent => fail_after = Some(fail_after.map_or(n, |m| m.min(n))),
                Fault::StallAfter(n) if n <= sent => stall_after = Some(stall_after.map_or(n, |m| m.min(n))),
                _ => {}
            }
        }
        // When both apply, the one that took effect first (the smaller count) wins.
        match (fail_after, stall_after) {
            (Some(f), Some(s)) if s < f => Verdict::Stall,
            (Some(n), _) => Verdict::Fail(Error::Transport(format!(
                "injected fault: {:?} as {:?} failed after {n} messages",
                at.rpc, at.role
            ))),
            (None, Some(_)) => Verdict::Stall,
            (None, None) => Verdict::Send(delay),
        }
    }

    /// Books `bytes` on the link of rule `id` (`rate` bytes per second, not 0) after everything
    /// booked before; returns how long from now until the link has carried them.
    fn take_link(&self, id: RuleId, rate: u64, bytes: usize) -> Duration {
        let now = tokio::time::Instant::now();
        let mut links = lock(&self.links);
        let free = links.entry(id).or_insert(now);
        let start = (*free).max(now);
        // At most a day per message: a huge message on a slow link must not overflow.
        let busy = Duration::from_secs_f64((bytes as f64 / rate as f64).min(86_400.0));
        *free = start + busy;
        *free - now
    }

    fn killed_rx(&self) -> watch::Receiver<bool> {
        self.killed.subscribe()
    }

    fn is_killed(&self) -> bool {
        *self.killed.borrow()
    }

    /// Keeps an inner server handle until the peer is killed or the server stopped; returns its id.
    fn keep_server(&self, handle: ServerHandle) -> Option<u64> {
        let mut servers = lock(&self.servers);
        // Checked under the lock, so a concurrent kill either sees this handle or is seen here.
        if self.is_killed() {
            drop(servers);
            drop(handle);
            return None;
        }
        let id = self.next_server.fetch_add(1, Ordering::Relaxed);
        servers.insert(id, handle);
        Some(id)
    }

    fn stop_server(&self, id: u64) {
        let handle = lock(&self.servers).remove(&id);
        drop(handle);
    }
}

/// The error of a call this peer makes after it was killed.
fn killed_error() -> Error {
    Error::Transport("injected fault: this peer was killed".into())
}
