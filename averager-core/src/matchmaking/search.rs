//! protocol 3.2, 3.3 and 3.10: one search for a group: declaring oneself, picking potential leaders
//! best first, and leading whoever joins meanwhile.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::declarations::{declare, declared_peers, undeclare};
use super::leader::sleep_until;
use super::queue::{Candidate, LeaderQueue, RETRY_AFTER, better};
use super::state::{FormedGroup, Matchmaker};
use crate::error::{Error, Result};
use crate::time::{DhtTime, dht_now, until};

/// The shortest gap between two reads of the declarations: the DHT is polled, not subscribed
/// to, and an in-process DHT would otherwise be read in a hot loop.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(50);

/// What one search needs from its step.
#[derive(Clone)]
pub(crate) struct SearchRequest {
    /// This peer's gather payload (protocol 2.4), sent to the leader or handed to followers.
    pub(crate) gather: Bytes,
    /// The step's scheduled time, re-read at every re-declaration (users may move it).
    pub(crate) scheduled_time: Arc<dyn Fn() -> DhtTime + Send + Sync>,
    /// The step's deadline (DHT time), `None` for none.
    pub(crate) deadline: Option<DhtTime>,
}

impl std::fmt::Debug for SearchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchRequest").field("deadline", &self.deadline).finish_non_exhaustive()
    }
}

/// What a pick of the next leader came to.
enum Pick {
    Leader(Candidate),
    /// This peer's own declaration was renewed: time to lead or disband (protocol 3.3).
    Timeout,
    Assembled(FormedGroup),
    Deadline,
    Cancelled,
}

/// Ends the search when the search future is dropped before it could clean up itself.
struct SearchGuard {
    matchmaker: Arc<Matchmaker>,
    armed: bool,
}

impl Drop for SearchGuard {
    fn drop(&mut self) {
        if self.armed {
            let matchmaker = Arc::clone(&self.matchmaker);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { matchmaker.end_search(false).await });
            }
        }
    }
}

/// Aborts a spawned task when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Matchmaker {
    /// Runs one search (protocol 3.10): the group once formed, `None` at the deadline.
    ///
    /// Only one search runs at a time; a second call waits for the first, and a new search
    /// starts only when every join handler of the previous one has answered (protocol 3.7).
    ///
    /// Cancellation is cooperative: a join request under way is finished first (it is bounded
    /// by `request_timeout` and the leader's expiration), because its leader may already count
    /// this peer in. If that request, or this peer's own followers, formed a group, the group is
    /// returned even though `cancel` fired, so the caller can tell its members it leaves; no
    /// member is left waiting for a peer that never learned it was in the group.
    ///
    /// # Errors
    /// [`Error::Cancelled`] when `cancel` fires and no group formed (followers are disbanded and
    /// the declaration is withdrawn first); DHT errors are logged and retried, not returned.
    pub(crate) async fn look_for_group(
        self: &Arc<Self>,
        request: SearchRequest,
        cancel: &CancellationToken,
    ) -> Result<Option<FormedGroup>> {
        let _one_at_a_time = self.search_lock.lock().await;
        let mut handlers = self.handlers.subscribe();
        let _ = handlers.wait_for(|n| *n == 0).await;
        {
            let mut state = self.state.lock().await;
            *state = super::state::JoinState {
                searching: true,
                gather: request.gather.clone(),
                ..Default::default()
            };
        }
        self.paused.send_replace(false);
        self.bump();
        let mut guard = SearchGuard { matchmaker: Arc::clone(self), armed: true };
        let search_end = request.deadline.unwrap_or(f64::INFINITY);
        // Subscribed before the declaring task starts, so its first declaration is seen.
        let declared = self.declared.subscribe();
        let declaring = (!self.config.client_mode).then(|| {
            Task(tokio::spawn(Arc::clone(self).declare_loop(request.scheduled_time.clone(), search_end)))
        });
        let result = self.search_loop(&request, search_end, declared, cancel).await;
        drop(declaring);
        guard.armed = false;
        self.end_search(matches!(result, Ok(Some(_)))).await;
        result
    }

    /// protocol 3.2: keep a declaration under the current key until the search ends.
    async fn declare_loop(
        self: Arc<Self>,
        scheduled_time: Arc<dyn Fn() -> DhtTime + Send + Sync>,
        search_end: DhtTime,
    ) {
        let min_time = self.config.min_matchmaking_time.as_secs_f64();
        let mut paused = self.paused.subscribe();
        loop {
            let now = dht_now();
            let expiration = scheduled_time().max(now + min_time).min(search_end);
            if expiration <= now {
                return;
            }
            let key = self.current_key();
            {
                let mut state = self.state.lock().await;
                if !state.searching {
                    return;
                }
                state.declared_key = Some(key.clone());
                state.declared_expiration = expiration;
            }
            self.declared.send_modify(|n| *n = n.wrapping_add(1));
            if let Err(e) = declare(self.dht.as_ref(), &key, &self.config.endpoint, expiration).await {
                tracing::warn!(error = %e, key, "cannot declare in the DHT; retrying at the next declaration");
            }
            tokio::time::sleep(until(expiration).unwrap_or(Duration::ZERO)).await;
            // A follower waiting for its leader does not re-declare (protocol 3.2 step 3).
            let _ = paused.wait_for(|p| !*p).await;
        }
    }

    async fn search_loop(
        self: &Arc<Self>,
        request: &SearchRequest,
        search_end: DhtTime,
        mut declared: tokio::sync::watch::Receiver<u64>,
        cancel: &CancellationToken,
    ) -> Result<Option<FormedGroup>> {
        let mut queue = LeaderQueue::default();
        let mut last_refresh: Option<tokio::time::Instant> = None;
        if !self.config.client_mode {
            // The first declaration is not a renewal: consume it so it does not end a pick.
            let end = until(search_end).map(|d| tokio::time::Instant::now() + d);
            tokio::select! {
                _ = declared.changed() => {}
                _ = sleep_until(end) => return Ok(None),
                _ = cancel.cancelled() => return Err(Error::Cancelled("matchmaking cancelled".into())),
            }
        }
        loop {
            match self.pick(&mut queue, &mut last_refresh, &mut declared, search_end, cancel).await {
                Pick::Leader(candidate) => {
                    let scheduled = (request.scheduled_time)();
                    if let Some(group) = self.request_join(candidate.endpoint, scheduled, search_end).await? {
                        return Ok(Some(group));
                    }
                }
                Pick::Timeout => {
                    let mut state = self.state.lock().await;
                    if let Some(group) = &state.assembled {
                        return Ok(Some(group.clone()));
                    }
                    if state.followers.len() + 1 >= self.config.min_group_size {
                        return Ok(Some(self.assemble(&mut state)));
                    }
                    self.disband(&mut state);
                }
                Pick::Assembled(group) => return Ok(Some(group)),
                Pick::Deadline => return Ok(self.stop_accepting().await),
                Pick::Cancelled => {
                    return match self.stop_accepting().await {
                        // Followers were already told BEGIN_ALLREDUCE: hand the group over so
                        // the caller can tell them it leaves.
                        Some(group) => Ok(Some(group)),
                        None => Err(Error::Cancelled("matchmaking cancelled".into())),
                    };
                }
            }
        }
    }

    /// Ends the search's leading side in one step under the join lock: the group if one was
    /// assembled, else no group ever will be (join handlers refuse from now on). Deciding
    /// "no group" and then letting a late join request assemble one would leave that follower
    /// waiting for a leader that already left.
    async fn stop_accepting(&self) -> Option<FormedGroup> {
        let mut state = self.state.lock().await;
        if let Some(group) = &state.assembled {
            return Some(group.clone());
        }
        state.searching = false;
        None
    }

    /// protocol 3.3, picking the next leader.
    async fn pick(
        &self,
        queue: &mut LeaderQueue,
        last_refresh: &mut Option<tokio::time::Instant>,
        declared: &mut tokio::sync::watch::Receiver<u64>,
        search_end: DhtTime,
        cancel: &CancellationToken,
    ) -> Pick {
        let mut changed = self.changed.subscribe();
        let end = until(search_end).map(|d| tokio::time::Instant::now() + d);
        loop {
            if cancel.is_cancelled() {
                return Pick::Cancelled;
            }
            let now = dht_now();
            if now >= search_end {
                return Pick::Deadline;
            }
            let my_expiration = {
                let state = self.state.lock().await;
                if let Some(group) = &state.assembled {
                    return Pick::Assembled(group.clone());
                }
                state.declared_expiration
            };
            let head = queue.head(now);
            let want_refresh = head
                .as_ref()
                .is_none_or(|h| queue.max_assured_time <= h.expiration && h.expiration <= search_end);
            let next_refresh = last_refresh.map(|t| t + MIN_REFRESH_INTERVAL);
            // **\[averager\]** while nobody better is known, the declarations are still re-read
            // now and then: a snapshot goes stale (its head may have paired up meanwhile), and
            // a tried peer becomes eligible again only through a refresh (see `queue`).
            let next_idle_refresh = last_refresh.map(|t| t + RETRY_AFTER);
            let clock = tokio::time::Instant::now();
            let due = if want_refresh { next_refresh } else { next_idle_refresh };
            if due.is_none_or(|t| t <= clock) {
                // Stamped after the read: a read slower than the refresh interval (a loaded
                // Kademlia swarm) would otherwise make the next refresh due at once, and the
                // loop would re-read forever without ever asking the leaders it found.
                // Raced with the cancel: a Kademlia read can wait out its query timeout (10 s)
                // when the swarm is leaving, longer than a shutdown waits for the step.
                let key = self.current_key();
                let read = tokio::select! {
                    read = declared_peers(self.dht.as_ref(), &key, true) => read,
                    _ = cancel.cancelled() => return Pick::Cancelled,
                };
                *last_refresh = Some(tokio::time::Instant::now());
                match read {
                    Ok(peers) => {
                        let min_time = self.config.min_matchmaking_time.as_secs_f64();
                        queue.refresh(peers, &self.config.endpoint, dht_now(), min_time);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read group declarations"),
                }
                continue;
            }
            if let Some(h) = &head
                && better(h.expiration, &h.endpoint, my_expiration, &self.config.endpoint)
            {
                if let Some(candidate) = queue.pop() {
                    return Pick::Leader(candidate);
                }
                continue;
            }
            // No better leader known: wait for a re-declaration (then lead or disband), a state
            // change (a handler may have assembled our group), the next refresh, or the end.
            tokio::select! {
                _ = declared.changed() => return Pick::Timeout,
                _ = changed.changed() => {}
                _ = sleep_until(due) => {}
                _ = sleep_until(end) => return Pick::Deadline,
                _ = cancel.cancelled() => return Pick::Cancelled,
            }
        }
    }

    /// Ends a search: withdraws the declaration, disbands followers unless a group formed, and
    /// lets the join handlers answer (protocol 3.2 step 4, 3.7).
    pub(super) async fn end_search(&self, formed: bool) {
        let (key, expiration) = {
            let mut state = self.state.lock().await;
            state.searching = false;
            if !formed {
                self.disband(&mut state);
            }
            let key = state.declared_key.take();
            let expiration = std::mem::replace(&mut state.declared_expiration, f64::INFINITY);
            (key, expiration)
        };
        self.paused.send_replace(false);
        self.bump();
        // Bounded by one request timeout: the entry expires on its own, and a Kademlia store may
        // take its whole query timeout (10 s), longer than a shutdown waits for running steps.
        if let Some(key) = key {
            let withdraw = undeclare(self.dht.as_ref(), &key, &self.config.endpoint, expiration);
            match tokio::time::timeout(self.config.request_timeout, withdraw).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, key, "cannot withdraw the declaration; it expires on its own")
                }
                Err(_) => tracing::warn!(key, "withdrawing the declaration timed out; it expires on its own"),
            }
        }
    }
}
