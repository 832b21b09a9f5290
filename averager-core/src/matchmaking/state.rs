//! The matchmaker: one per averager, shared by its own search (protocol 3.2-3.4) and by the
//! `rpc_join_group` handlers it serves (protocol 3.5).
//!
//! `JoinState` sits behind the *join lock* (a tokio mutex, because a follower holds it while it
//! waits for a leader's first reply, protocol 3.4). Changes that waiters care about (a group
//! assembled, followers disbanded, this peer accepted by a leader, the search ended) bump the
//! `changed` counter, so waiters re-check the state instead of trusting a message.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::group_key::group_key;
use crate::dht::Dht;
use crate::transport::{JoinRequest, Transport};

/// What matchmaking needs to know of its averager.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MatchmakingConfig {
    /// This peer's endpoint (a unique name for a CLIENT).
    pub(crate) endpoint: String,
    /// The run's prefix.
    pub(crate) prefix: String,
    /// Whether this peer is a CLIENT (never declares, never leads).
    pub(crate) client_mode: bool,
    /// Groups never exceed this size.
    pub(crate) target_group_size: Option<usize>,
    /// A leader whose time is up assembles only with this many members.
    pub(crate) min_group_size: usize,
    /// Minimum lifetime of a declaration.
    pub(crate) min_matchmaking_time: Duration,
    /// How long to wait for a leader's first reply.
    pub(crate) request_timeout: Duration,
    /// Hash of what the partition depends on; peers with different hashes never group.
    pub(crate) schema_hash: Bytes,
}

/// A group as matchmaking formed it (protocol 3.6).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FormedGroup {
    /// 20 random bytes chosen by the leader.
    pub(crate) group_id: Bytes,
    /// Members in the leader's shuffled order.
    pub(crate) endpoints: Vec<String>,
    /// Each member's gather payload, in the same order.
    pub(crate) gathered: Vec<Bytes>,
}

/// A follower accepted by this peer.
#[derive(Debug, Clone)]
pub(super) struct Follower {
    pub(super) endpoint: String,
    pub(super) request: JoinRequest,
}

/// The state under the join lock.
#[derive(Debug)]
pub(super) struct JoinState {
    pub(super) searching: bool,
    pub(super) declared_key: Option<String>,
    /// `+inf` when not declared (and always for a CLIENT).
    pub(super) declared_expiration: f64,
    pub(super) followers: Vec<Follower>,
    pub(super) current_leader: Option<String>,
    pub(super) assembled: Option<FormedGroup>,
    /// This peer's gather payload for the current search.
    pub(super) gather: Bytes,
}

impl Default for JoinState {
    fn default() -> Self {
        JoinState {
            searching: false,
            declared_key: None,
            declared_expiration: f64::INFINITY,
            followers: Vec::new(),
            current_leader: None,
            assembled: None,
            gather: Bytes::new(),
        }
    }
}

/// Matchmaking for one averager (protocol 3).
pub(crate) struct Matchmaker {
    pub(super) config: MatchmakingConfig,
    pub(super) dht: Arc<dyn Dht>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) bits: Arc<Mutex<String>>,
    pub(super) state: tokio::sync::Mutex<JoinState>,
    /// Bumped whenever a waiter should re-check the state.
    pub(super) changed: watch::Sender<u64>,
    /// Bumped at every (re-)declaration: interrupts a leader pick (protocol 3.3).
    pub(super) declared: watch::Sender<u64>,
    /// Whether the search is paused (this peer follows a leader).
    pub(super) paused: watch::Sender<bool>,
    /// Number of `rpc_join_group` handlers running.
    pub(super) handlers: watch::Sender<usize>,
    /// Only one search at a time (protocol 3.1).
    pub(super) search_lock: tokio::sync::Mutex<()>,
    /// The leader this peer is asking to take it, while it holds the join lock waiting for that
    /// leader's first reply (see `leader.rs`, `lock_or_redirect`).
    pub(super) asking: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for Matchmaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matchmaker").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Matchmaker {
    /// A matchmaker whose group bits live in `bits` (shared with the averager's bits API).
    pub(crate) fn new(
        config: MatchmakingConfig,
        dht: Arc<dyn Dht>,
        transport: Arc<dyn Transport>,
        bits: Arc<Mutex<String>>,
    ) -> Arc<Self> {
        Arc::new(Matchmaker {
            config,
            dht,
            transport,
            bits,
            state: tokio::sync::Mutex::new(JoinState::default()),
            changed: watch::channel(0).0,
            declared: watch::channel(0).0,
            paused: watch::channel(false).0,
            handlers: watch::channel(0).0,
            search_lock: tokio::sync::Mutex::new(()),
            asking: watch::channel(None).0,
        })
    }

    #[cfg(test)]
    /// The configuration.
    pub(crate) fn config(&self) -> &MatchmakingConfig {
        &self.config
    }

    /// The current group bits.
    pub(crate) fn group_bits(&self) -> String {
        self.bits.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The current group key (`<prefix>.0b<bits>`).
    pub(crate) fn current_key(&self) -> String {
        group_key(&self.config.prefix, &self.group_bits())
    }

    pub(super) fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}
