//! protocol 4.5 (before the span reducer): routing an incoming `rpc_aggregate_part` stream to the
//! span reducer of its group's round.
//!
//! **\[averager\]** (protocol 11.8): a stream whose group is unknown waits at most a bounded time (the
//! averager uses `request_timeout`) for that group to register, then gets `BAD_GROUP_ID`;
//! hivemind waits without a limit. A group this peer has formed but not registered yet (its step
//! awaits the trigger, protocol 8.2) is *expected*: its streams wait until it registers or is
//! abandoned. A group this peer abandoned (its step was cancelled after the group formed) is
//! answered `CANCELLED` at once, so its members stop counting on this peer. A member's goodbye
//! (a stream whose first message is `CANCELLED`) for a group that is not running yet is kept and
//! applied when the group's round registers: whether it arrives before or after, the member is
//! excluded, so no arrival order leaves a reducer waiting for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use averager_proto::MessageCode;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::progress::{pending, with_pending};
use super::span_reducer::SpanReducer;
use crate::error::{Error, Result};
use crate::time::with_timeout;
use crate::transport::{
    AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest, JoinRequest,
    MessageFromLeader, MessageStream,
};

/// The span reducers of the rounds this peer runs, by group id.
///
/// It is also a complete [`AveragingService`] for a peer that only averages: streams go to their
/// rounds, join requests are answered `NOT_LOOKING_FOR_GROUP`, and state downloads end at once
/// (protocol 6.2: nothing to share). The averager's own handler delegates `rpc_aggregate_part` here.
#[derive(Debug)]
pub(crate) struct RoundRouter {
    routes: Arc<Routes>,
    /// How long a stream's group may stay unknown here (`request_timeout`, protocol 11.8).
    wait: Duration,
    /// How long a stream's first part may take (`sender_timeout`, protocol 4.5 step 2); `None`: the
    /// transport's own deadline for a caller's first message is the only bound.
    first_part_wait: Option<Duration>,
    /// How often a stream waiting for its group is sent `PART_PENDING` (see `progress.rs`).
    pending_every: Option<Duration>,
}

/// The routing table, shared with the tasks of streams that wait for their group.
#[derive(Debug)]
struct Routes {
    rounds: Mutex<HashMap<Bytes, Route>>,
    /// `(group id, endpoint)` of members that left groups not running here yet.
    goodbyes: Mutex<std::collections::VecDeque<(Bytes, String)>>,
    changed: watch::Sender<u64>,
}

/// Where a group id leads.
#[derive(Debug, Clone)]
enum Route {
    /// Formed here, not registered yet: wait for it.
    Expected,
    /// Registered: hand the stream over.
    Running(Arc<SpanReducer>),
    /// Abandoned by this peer: answer `CANCELLED`.
    Abandoned,
}

/// How many abandoned group ids are remembered (they only matter for a few seconds).
const ABANDONED_KEPT: usize = 64;

/// How many early goodbyes are kept for groups that are not running yet.
const GOODBYES_KEPT: usize = 256;

impl Default for RoundRouter {
    fn default() -> Self {
        Self::new(Duration::from_secs(3))
    }
}

impl RoundRouter {
    /// An empty router whose incoming streams wait at most `wait` for their first message and
    /// for an unknown group to register (the averager passes `request_timeout`).
    pub(crate) fn new(wait: Duration) -> Self {
        RoundRouter {
            routes: Arc::new(Routes {
                rounds: Mutex::new(HashMap::new()),
                goodbyes: Mutex::new(std::collections::VecDeque::new()),
                changed: watch::channel(0).0,
            }),
            wait,
            first_part_wait: Some(wait),
            pending_every: None,
        }
    }

    /// Sends `PART_PENDING` every `every` to a stream that waits for its group to register, so
    /// its sender does not take this live peer for a dead reducer (the averager passes a quarter
    /// of `reducer_timeout`; see `progress.rs`).
    pub(crate) fn pending_every(mut self, every: Option<Duration>) -> Self {
        self.pending_every = every;
        self
    }

    /// Bounds the wait for a stream's first message by `wait` instead (the averager passes
    /// `sender_timeout`, protocol 4.5 step 2).
    ///
    /// A sender whose first part is merely late must not be cut: the stream carries no group id
    /// until that part arrives, so the round expecting the sender could never be told, and would
    /// wait for it until its own timeouts (none by default).
    pub(crate) fn first_part_wait(mut self, wait: Option<Duration>) -> Self {
        self.first_part_wait = wait;
        self
    }

    fn set(&self, group_id: Bytes, route: Option<Route>) {
        {
            let mut rounds = self.routes.rounds.lock().unwrap_or_else(PoisonError::into_inner);
            match route {
                Some(route) => {
                    rounds.insert(group_id, route);
                }
                None => {
                    rounds.remove(&group_id);
                }
            }
            let abandoned: Vec<Bytes> = rounds
                .iter()
                .filter(|(_, r)| matches!(r, Route::Abandoned))
                .map(|(k, _)| k.clone())
                .collect();
            if abandoned.len() > ABANDONED_KEPT {
                // Any old one will do: they are kept only to answer late streams quickly.
                for id in abandoned.into_iter().take(ABANDONED_KEPT / 2) {
                    rounds.remove(&id);
                }
            }
        }
        self.routes.changed.send_modify(|n| *n += 1);
    }

    /// Announces that this peer formed `group_id` and will register its round: streams for it
    /// wait without the unknown-group bound (protocol 8.2).
    pub(crate) fn expect(&self, group_id: Bytes) {
        self.set(group_id, Some(Route::Expected));
    }

    /// Makes a round's span reducer reachable by its group id (waking streams that wait for it),
    /// and excludes the members that already said goodbye to that group.
    pub(crate) fn register(&self, span: &Arc<SpanReducer>) {
        let id = span.group_id().clone();
        self.set(id.clone(), Some(Route::Running(Arc::clone(span))));
        let left: Vec<String> = {
            let mut goodbyes = self.routes.goodbyes.lock().unwrap_or_else(PoisonError::into_inner);
            let (mine, others): (Vec<_>, Vec<_>) = goodbyes.drain(..).partition(|(g, _)| *g == id);
            goodbyes.extend(others);
            mine.into_iter().map(|(_, endpoint)| endpoint).collect()
        };
        for endpoint in left {
            span.sender_left(&endpoint);
        }
    }

    /// Keeps a goodbye for a group that is not running here yet.
    fn keep_goodbye(&self, group_id: Bytes, endpoint: String) {
        let mut goodbyes = self.routes.goodbyes.lock().unwrap_or_else(PoisonError::into_inner);
        if goodbyes.len() >= GOODBYES_KEPT {
            goodbyes.pop_front();
        }
        goodbyes.push_back((group_id, endpoint));
    }

    /// Forgets `group_id` (after its all-reduce ended).
    pub(crate) fn unregister(&self, group_id: &[u8]) {
        self.set(Bytes::copy_from_slice(group_id), None);
    }

    /// Marks `group_id` abandoned by this peer: its streams are answered `CANCELLED` at once.
    pub(crate) fn abandon(&self, group_id: Bytes) {
        self.set(group_id, Some(Route::Abandoned));
    }

    /// Cancels every registered round (protocol 8.3 shutdown, **\[averager\]** 11.12).
    pub(crate) fn cancel_all(&self) {
        let routes: Vec<_> =
            self.routes.rounds.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for route in routes {
            if let Route::Running(span) = route {
                span.cancel();
            }
        }
    }

    fn find(&self, group_id: &[u8]) -> Option<Route> {
        self.routes.find(group_id)
    }

    /// Hands an incoming stream to its group's span reducer, waiting at most the first-part wait for the
    /// first message and then the router's wait for an unknown group to register.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the first message does not come in time, [`Error::Protocol`] when
    /// the stream ends or fails before it. An unknown group is answered with one `BAD_GROUP_ID`.
    pub(crate) async fn route(
        &self,
        mut requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let first = with_timeout(
            self.first_part_wait,
            requests.next(),
            "the first part of an rpc_aggregate_part stream",
        )
        .await?
        .ok_or_else(|| {
            Error::protocol(MessageCode::ProtocolViolation, "stream ended before its first part")
        })??;
        let deadline = tokio::time::Instant::now() + self.wait;
        if first.code == MessageCode::Cancelled as i32 {
            // A member's goodbye: hand it to the running group, or keep it for when it runs.
            if let Some(Route::Running(span)) = self.find(&first.group_id) {
                return Ok(span.serve(first, requests));
            }
            self.keep_goodbye(first.group_id.clone(), first.endpoint.clone());
            // Registration may have raced the lookup: apply it now if the group is running.
            if let Some(Route::Running(span)) = self.find(&first.group_id) {
                span.sender_left(&first.endpoint);
            }
            return Ok(Box::pin(futures::stream::empty()));
        }
        if let Some(Route::Running(span)) = self.find(&first.group_id) {
            return Ok(span.serve(first, requests));
        }
        // The group is not running here yet. Answer at once, so the sender's wait for the stream
        // to open is not spent here, and say `PART_PENDING` while the group registers.
        let (tx, rx) = mpsc::channel(2);
        let (routes, every) = (Arc::clone(&self.routes), self.pending_every);
        tokio::spawn(async move {
            let say_pending = || {
                let _ = tx.try_send(Ok(pending()));
            };
            let found = tokio::select! {
                found = with_pending(routes.wait_for(&first.group_id, deadline), every, say_pending) => found,
                _ = tx.closed() => return,
            };
            match found {
                Ok(span) => {
                    let mut replies = span.serve(first, requests);
                    while let Some(reply) = replies.next().await {
                        if tx.send(reply).await.is_err() {
                            return;
                        }
                    }
                }
                Err(code) => {
                    let _ = tx.send(Ok(AveragingData { code: code as i32, ..Default::default() })).await;
                }
            }
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })))
    }
}

impl Routes {
    fn find(&self, group_id: &[u8]) -> Option<Route> {
        self.rounds.lock().unwrap_or_else(PoisonError::into_inner).get(group_id).cloned()
    }

    /// Waits until `group_id`'s round registers: its span reducer, or the code to refuse the stream
    /// with (`CANCELLED` for an abandoned group, `BAD_GROUP_ID` for one still unknown at
    /// `deadline`; an expected group is waited for without that bound).
    async fn wait_for(
        &self,
        group_id: &[u8],
        deadline: tokio::time::Instant,
    ) -> std::result::Result<Arc<SpanReducer>, MessageCode> {
        let mut changed = self.changed.subscribe();
        loop {
            let bound = match self.find(group_id) {
                Some(Route::Running(span)) => return Ok(span),
                Some(Route::Abandoned) => return Err(MessageCode::Cancelled),
                Some(Route::Expected) => None,
                None => Some(deadline),
            };
            let woke = match bound {
                Some(deadline) => {
                    tokio::time::timeout_at(deadline, changed.changed()).await.is_ok_and(|r| r.is_ok())
                }
                None => changed.changed().await.is_ok(),
            };
            if !woke {
                return Err(MessageCode::BadGroupId);
            }
        }
    }
}

#[async_trait::async_trait]
impl AveragingService for RoundRouter {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        _: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        let reply = MessageFromLeader { code: MessageCode::NotLookingForGroup as i32, ..Default::default() };
        Ok(Box::pin(futures::stream::once(async move { Ok(reply) })))
    }

    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        self.route(requests).await
    }

    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        Ok(Box::pin(futures::stream::empty()))
    }
}
