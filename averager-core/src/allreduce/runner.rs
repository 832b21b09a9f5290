//! protocol 4: one all-reduce in one formed group, the sender side and the bookkeeping; the reducer
//! side of each incoming stream is in `serve.rs`.
//!
//! The runner owns nothing it does not need: the local tensors come in an `Arc` (the caller holds
//! the tensor lock for the whole all-reduce and takes them back afterwards), so parts are encoded
//! straight from tensor memory on blocking threads, without a copy per peer.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::deltas::Deltas;
use super::group::AllReduceGroup;
use super::part_reducer::PartReducer;
use super::partition::{PartitionPlan, PlannedPart, TensorLayout};
use super::plan::AllReducePlan;
use super::progress::{ReplyClock, is_pending};
use crate::compression::{Compression, CompressionInfo, WireTensor};
use crate::error::{Error, Result};
use crate::matchmaking::PeerMode;
use crate::reduce::{PartOutcome, Reducer};
use crate::registry::Registry;
use crate::tensor::{DType, Tensor, TensorData};
use crate::time::with_timeout;
use crate::transport::{AveragingData, Transport};

/// The settings of one all-reduce (from the averager's config and the step).
#[derive(Debug, Clone, PartialEq)]
pub struct AllReduceSettings {
    /// Parts are at most this many bytes on the wire.
    pub part_size_bytes: usize,
    /// Members whose share would be under this many elements get none.
    pub min_vector_size: usize,
    /// A sender silent this long is dropped (`None`: never).
    pub sender_timeout: Option<Duration>,
    /// A reducer silent this long is dropped (`None`: never).
    pub reducer_timeout: Option<Duration>,
    /// This peer's averaging weight (ignored for AUX).
    pub weight: f64,
}

/// Everything a runner averages with, besides the members' shares.
pub struct AllReduceInputs {
    /// The formed group and this peer's place in it.
    pub group: AllReduceGroup,
    /// This peer's tensors (taken from the averager for the duration of the all-reduce).
    pub tensors: Arc<Vec<Tensor>>,
    /// `infos[i]` describes `tensors[i]` for the codec.
    pub infos: Vec<CompressionInfo>,
    /// The codec parts are sent with.
    pub codec: Arc<dyn Compression>,
    /// The reducer of this peer's span.
    pub reducer: Arc<dyn Reducer>,
    /// How members reach each other.
    pub transport: Arc<dyn Transport>,
    /// Where incoming parts' codecs are found.
    pub registry: &'static Registry,
    /// Part size, timeouts and weight.
    pub settings: AllReduceSettings,
}

impl std::fmt::Debug for AllReduceInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllReduceInputs")
            .field("group", &self.group)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What one all-reduce produced for this peer.
#[derive(Debug)]
pub struct AllReduceOutcome {
    /// The deltas to apply (`tensor += alpha * delta`), one per part that came back.
    pub deltas: Deltas,
    /// The plan the deltas follow.
    pub plan: PartitionPlan,
    /// Endpoints of reducers that failed (their remaining parts keep local values).
    pub failed_reducers: Vec<String>,
}

/// One all-reduce in one group (protocol 4), driven by [`AllReduceRunner::run`] and fed incoming
/// streams by [`AllReduceRunner::serve`].
pub struct AllReduceRunner {
    pub(super) group: AllReduceGroup,
    pub(super) plan: PartitionPlan,
    pub(super) shares: Vec<f64>,
    /// This peer's tensors, until [`AllReduceRunner::run`] returns. Reducer tasks may outlive the
    /// run (a last reply still being written), and if they held the tensors the averager would
    /// have to copy them to take them back.
    tensors: Mutex<Option<Arc<Vec<Tensor>>>>,
    /// The tensors' dtypes, which is all the reducer side needs of them.
    pub(super) dtypes: Vec<DType>,
    pub(super) infos: Vec<CompressionInfo>,
    codec: Arc<dyn Compression>,
    pub(super) registry: &'static Registry,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) settings: AllReduceSettings,
    /// The part reducer for this peer's span, when it has one.
    pub(super) reducer: Option<PartReducer>,
    /// Per sender index: whether its stream to us has opened (the missing-sender watchdog).
    pub(super) opened: Mutex<Vec<bool>>,
    pub(super) cancel: CancellationToken,
    /// Group positions of members that left (a goodbye, or `CANCELLED` from their span).
    left: Mutex<std::collections::BTreeSet<usize>>,
    /// Why this peer could not encode one of its own parts: the run then fails (see `run`).
    encode_failed: Mutex<Option<Error>>,
    /// How many reply streams this reducer serves that the transport has not read to the end.
    pub(super) open_replies: Arc<watch::Sender<usize>>,
}

impl std::fmt::Debug for AllReduceRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllReduceRunner")
            .field("group", &self.group)
            .field("shares", &self.shares)
            .field("parts", &self.plan.parts().len())
            .finish_non_exhaustive()
    }
}

impl AllReduceRunner {
    /// Plans the all-reduce ([`AllReducePlan`]: load balancing, protocol 5, and the partition, protocol
    /// 4.3) and, when this peer reduces a span, its part reducer (protocol 4.6).
    ///
    /// Every member must pass the same shapes, codec ratios and settings (the schema hash
    /// guarantees it), since nothing about the plan is exchanged.
    ///
    /// # Errors
    /// [`Error::Config`] for the refusals of protocol 4.2 or an impossible plan.
    pub fn new(inputs: AllReduceInputs) -> Result<Arc<Self>> {
        let layouts = Self::layouts(&inputs);
        let plan = AllReducePlan::new(
            &inputs.group.members,
            &layouts,
            inputs.settings.part_size_bytes,
            inputs.settings.min_vector_size,
        )?;
        Self::with_plan(inputs, plan)
    }

    /// As [`AllReduceRunner::new`], with the members' shares given (relative weights, in group
    /// order) instead of load-balanced: for tests and for callers with their own balancing.
    ///
    /// # Errors
    /// As [`AllReduceRunner::new`].
    pub fn with_shares(inputs: AllReduceInputs, shares: Vec<f64>) -> Result<Arc<Self>> {
        let layouts = Self::layouts(&inputs);
        let plan = AllReducePlan::with_shares(
            &inputs.group.members,
            &layouts,
            inputs.settings.part_size_bytes,
            shares,
        )?;
        Self::with_plan(inputs, plan)
    }

    /// What the plan needs of each tensor: its size and its bytes per value on the wire.
    fn layouts(inputs: &AllReduceInputs) -> Vec<TensorLayout> {
        inputs
            .tensors
            .iter()
            .zip(&inputs.infos)
            .map(|(t, info)| TensorLayout {
                numel: t.numel(),
                bytes_per_value: t.dtype().size_bytes() as f64
                    * inputs.codec.estimate_compression_ratio(info),
            })
            .collect()
    }

    fn with_plan(inputs: AllReduceInputs, planned: AllReducePlan) -> Result<Arc<Self>> {
        let AllReduceInputs { group, tensors, infos, codec, reducer, transport, registry, settings } = inputs;
        if infos.len() != tensors.len() {
            return Err(Error::Config(format!("{} tensors but {} infos", tensors.len(), infos.len())));
        }
        group.validate(settings.sender_timeout, settings.reducer_timeout)?;
        let shares = planned.shares().to_vec();
        let plan = planned.partition().clone();
        let my_parts = plan.parts_of(group.me);
        let num_senders = group.senders().len();
        let reducer = if my_parts.is_empty() {
            None
        } else {
            let specs = my_parts.iter().map(|p| (p.range.len(), tensors[p.tensor].dtype()));
            Some(PartReducer::new(reducer, specs, num_senders)?)
        };
        let mut opened = vec![false; num_senders];
        if let Some(s) = group.sender_index(group.me) {
            opened[s] = true;
        }
        Ok(Arc::new(AllReduceRunner {
            group,
            plan,
            shares,
            dtypes: tensors.iter().map(Tensor::dtype).collect(),
            tensors: Mutex::new(Some(tensors)),
            infos,
            codec,
            registry,
            transport,
            settings,
            reducer,
            opened: Mutex::new(opened),
            cancel: CancellationToken::new(),
            left: Mutex::new(std::collections::BTreeSet::new()),
            encode_failed: Mutex::new(None),
            open_replies: Arc::new(watch::channel(0).0),
        }))
    }

    /// The group this runner averages in.
    pub fn group(&self) -> &AllReduceGroup {
        &self.group
    }

    /// The members' shares (element counts when load-balanced), in group order.
    pub fn shares(&self) -> &[f64] {
        &self.shares
    }

    /// Stops the all-reduce: [`AllReduceRunner::run`] returns [`Error::Cancelled`], pending
    /// reductions end, and incoming streams are answered `CANCELLED` (protocol 4.7, 11.12).
    pub fn cancel(&self) {
        self.cancel.cancel();
        // A caller that stops awaiting `run` (a timeout, a shutdown) cancels here instead.
        self.tensors.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(reducer) = &self.reducer {
            reducer.finish();
        }
    }

    /// Records that the member at `endpoint` left the group, and excludes it from the rest of the
    /// reduction if it was a sender.
    pub fn sender_left(&self, endpoint: &str) {
        let Some(position) = self.group.position_of(endpoint) else { return };
        self.mark_left(position);
        let Some(sender) = self.group.sender_index(position) else { return };
        self.opened.lock().unwrap_or_else(PoisonError::into_inner)[sender] = true;
        if let Some(reducer) = &self.reducer {
            reducer.sender_failed(sender);
        }
    }

    fn mark_left(&self, position: usize) {
        if position != self.group.me {
            self.left.lock().unwrap_or_else(PoisonError::into_inner).insert(position);
        }
    }

    /// Whether [`AllReduceRunner::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Runs this peer's part of the all-reduce: sends its parts to every reducer (itself
    /// included) and collects the deltas, and reduces its own span for the others. Returns when
    /// both are done.
    ///
    /// # Errors
    /// [`Error::Cancelled`] when cancelled. A failed reducer is not an error: its remaining parts
    /// simply have no delta (protocol 4.4).
    pub async fn run(self: &Arc<Self>) -> Result<AllReduceOutcome> {
        let outcome = self.run_to_end().await;
        // Nothing of this peer is sent after the run, so the tensors go back to the caller now.
        self.tensors.lock().unwrap_or_else(PoisonError::into_inner).take();
        if outcome.is_ok() {
            self.replies_delivered().await;
        }
        outcome
    }

    /// **\[averager\]** waits until the transport has read every reply this reducer owes. The
    /// reduction completes when the last part arrives, but its replies may still be on their way
    /// out (a delayed sender's are only sent then): a peer whose step returned and that shuts down
    /// at once would otherwise cut them off, and its groupmates would keep their own values for
    /// those parts while reporting success. A sender that does not read its replies within
    /// `sender_timeout` (or [`REPLY_DRAIN_LIMIT`] without one) is not waited for any longer.
    async fn replies_delivered(&self) {
        let mut open = self.open_replies.subscribe();
        let limit = self.settings.sender_timeout.unwrap_or(REPLY_DRAIN_LIMIT);
        tokio::select! {
            _ = tokio::time::timeout(limit, open.wait_for(|&n| n == 0)) => {}
            _ = self.cancel.cancelled() => {}
        }
    }

    /// This peer's tensors while the run lasts.
    fn tensors(&self) -> Result<Arc<Vec<Tensor>>> {
        let tensors = self.tensors.lock().unwrap_or_else(PoisonError::into_inner).clone();
        tensors.ok_or_else(|| Error::Cancelled("the all-reduce is over".into()))
    }

    async fn run_to_end(self: &Arc<Self>) -> Result<AllReduceOutcome> {
        let _watchdog = self.spawn_missing_sender_watchdog();
        let _probes = self.spawn_presence_probes();
        let sends = self.group.my_mode() != PeerMode::Aux;
        let exchanges = (0..self.group.members.len())
            .filter(|&j| sends && !self.plan.parts_of(j).is_empty())
            .map(|j| self.exchange_with(j));
        let results = tokio::select! {
            results = join_all(exchanges) => results,
            _ = self.cancel.cancelled() => return Err(Error::Cancelled("all-reduce cancelled".into())),
        };
        let mut deltas = Deltas::new(self.plan.parts().len());
        let mut failed_reducers = Vec::new();
        for (j, received, failure) in results {
            for (index, delta) in received {
                deltas.set(index, delta)?;
            }
            if let Some(reason) = failure {
                let endpoint = &self.group.members[j].endpoint;
                tracing::warn!(reducer = %endpoint, %reason, "reducer failed; its remaining parts keep local values");
                failed_reducers.push(endpoint.clone());
            }
        }
        if let Some(reducer) = &self.reducer {
            tokio::select! {
                _ = reducer.wait_finished() => {}
                _ = self.cancel.cancelled() => {}
            }
        }
        // Cancelling ends the exchanges too (their waits fail at once), so they may complete in
        // the same instant: a cancelled run never reports success.
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled("all-reduce cancelled".into()));
        }
        // **\[averager\]** a peer that could not encode a part did not take part in that span:
        // it reports the codec's error rather than an average it only partly joined (the
        // others went on without it, see `produce_parts`).
        if let Some(error) = self.encode_failed.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(error);
        }
        // **\[averager\]** when every other member left (cancelled after the group formed), nothing
        // was averaged: that is a failed round, which the step may retry with a new group, not a
        // success with this peer's own values.
        let others = self.group.members.len().saturating_sub(1);
        if others > 0 && self.left.lock().unwrap_or_else(PoisonError::into_inner).len() >= others {
            return Err(Error::NoGroup("every other member left the group before averaging".into()));
        }
        Ok(AllReduceOutcome { deltas, plan: self.plan.clone(), failed_reducers })
    }

    /// protocol 4.7: a reducer bans every sender whose stream has not opened within `sender_timeout`.
    fn spawn_missing_sender_watchdog(self: &Arc<Self>) -> Option<AbortOnDrop> {
        let (Some(timeout), Some(_)) = (self.settings.sender_timeout, &self.reducer) else { return None };
        let this = Arc::clone(self);
        Some(AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let missing: Vec<usize> = {
                let opened = this.opened.lock().unwrap_or_else(PoisonError::into_inner);
                (0..opened.len()).filter(|&s| !opened[s]).collect()
            };
            if let Some(reducer) = &this.reducer {
                for s in missing {
                    tracing::warn!(sender = s, "sender did not start within sender_timeout; excluded");
                    reducer.sender_failed(s);
                }
            }
        })))
    }

    /// Sends this peer's parts of member `j`'s span and collects the deltas: `(plan index, delta)`
    /// pairs, and why the exchange stopped early, if it did.
    async fn exchange_with(self: &Arc<Self>, j: usize) -> (usize, Vec<(usize, TensorData)>, Option<String>) {
        let mut received = Vec::new();
        let outcome = if j == self.group.me {
            self.reduce_own_parts(&mut received).await
        } else {
            self.exchange_with_remote(j, &mut received).await
        };
        (j, received, outcome.err().map(|e| e.to_string()))
    }

    /// Feeds this peer's raw parts of its own span into its part reducer (protocol 4.4 "itself").
    async fn reduce_own_parts(&self, received: &mut Vec<(usize, TensorData)>) -> Result<()> {
        let (Some(reducer), Some(sender)) = (&self.reducer, self.group.sender_index(self.group.me)) else {
            return Ok(());
        };
        let first = self.plan.first_index_of(self.group.me);
        let tensors = self.tensors()?;
        for (k, part) in self.plan.parts_of(self.group.me).iter().enumerate() {
            let view = tensors[part.tensor].flat_view(part.range.clone())?;
            let outcome = reducer.accumulate(sender, k, &view, self.settings.weight).await?;
            if let PartOutcome::Reduced(average) = outcome.as_ref() {
                received.push((first + k, average.view().data().difference(view.data())?));
            }
        }
        Ok(())
    }

    /// Streams this peer's parts of member `j`'s span to it and reads back one delta per part
    /// (protocol 4.4 "another peer").
    async fn exchange_with_remote(
        self: &Arc<Self>,
        j: usize,
        received: &mut Vec<(usize, TensorData)>,
    ) -> Result<()> {
        let parts = self.plan.parts_of(j);
        let first = self.plan.first_index_of(j);
        // A reducer that cannot even be dialed is as silent as one that stopped replying: without
        // this bound a dead peer costs the transport's whole connect timeout instead. Replies are
        // timed by a `ReplyClock`, which a reducer waiting for other senders keeps running with
        // `PART_PENDING` (see `progress.rs`).
        let dial = self.transport.connect(&self.group.members[j].endpoint);
        let client = with_timeout(self.settings.reducer_timeout, dial, "dialing a reducer").await??;
        // Capacity 1 plus the part being encoded: one part of prefetch (protocol 9).
        let (tx, rx) = mpsc::channel(1);
        let mut producer = AbortOnDrop(tokio::spawn(Arc::clone(self).produce_parts(j, tx)));
        // How many parts the transport has taken: the reply to a part cannot come before it.
        let (taken_tx, mut taken) = watch::channel(0usize);
        let requests = futures::stream::unfold((rx, taken_tx), |(mut rx, taken_tx)| async move {
            let message = rx.recv().await?;
            taken_tx.send_modify(|n| *n += 1);
            Some((message, (rx, taken_tx)))
        });
        let open = client.rpc_aggregate_part(Box::pin(requests));
        let mut replies =
            with_timeout(self.settings.reducer_timeout, open, "opening a part stream").await??;
        let mut clock = ReplyClock::new(self.settings.reducer_timeout, self.settings.sender_timeout);
        if self.shares[self.group.me] == 0.0 {
            // Delayed results (protocol 4.2): the reducer answers only after our input ended, so the
            // reply timeout starts once everything is sent.
            producer.join().await;
            clock.reply();
        }
        let (mut parts_taken, mut counting) = (0usize, true);
        for (k, part) in parts.iter().enumerate() {
            let reply = loop {
                tokio::select! {
                    next = replies.next() => {
                        let message = next.ok_or_else(|| {
                            Error::Transport(format!("reply stream ended after {k} of {} parts", parts.len()))
                        })??;
                        if is_pending(&message) {
                            clock.pending();
                            continue;
                        }
                        break message;
                    }
                    changed = taken.changed(), if counting => {
                        let now = *taken.borrow_and_update();
                        counting = changed.is_ok();
                        if parts_taken <= k && now > k {
                            clock.part_sent();
                        }
                        parts_taken = now;
                    }
                    _ = sleep_until(clock.deadline()) => {
                        return Err(Error::Timeout {
                            what: "the reducer's next reply".into(),
                            after: clock.timeout().unwrap_or_default(),
                        });
                    }
                }
            };
            clock.reply();
            if reply.code == averager_proto::MessageCode::Cancelled as i32 {
                self.mark_left(j);
            }
            if reply.code == averager_proto::MessageCode::BadGroupId as i32 {
                // **\[averager\]** the leader's acceptance reached it only after it gave up on
                // the leader (see `presence.rs`).
                self.member_does_not_know_the_group(j);
            }
            received.push((first + k, self.check_reply(part, reply)?));
        }
        Ok(())
    }

    /// Checks a reducer's reply for `part` and decodes its delta.
    fn check_reply(&self, part: &PlannedPart, reply: AveragingData) -> Result<TensorData> {
        let code =
            averager_proto::MessageCode::try_from(reply.code).unwrap_or(averager_proto::MessageCode::NoCode);
        if code != averager_proto::MessageCode::AveragedPart {
            return Err(Error::protocol(code, "reducer replied with a code other than AVERAGED_PART"));
        }
        let wire = reply.tensor_part.ok_or_else(|| {
            Error::protocol(averager_proto::MessageCode::ProtocolViolation, "AVERAGED_PART without a tensor")
        })?;
        let delta = self.registry.decode(&wire)?;
        let dtype = self.dtypes[part.tensor];
        if delta.numel() != part.range.len() || delta.dtype() != dtype {
            return Err(Error::protocol(
                averager_proto::MessageCode::ProtocolViolation,
                format!(
                    "delta of {} x {} for a part of {} x {dtype}",
                    delta.numel(),
                    delta.dtype(),
                    part.range.len()
                ),
            ));
        }
        Ok(delta.into_parts().1)
    }

    /// Encodes member `j`'s parts off the async threads and queues them for sending.
    async fn produce_parts(self: Arc<Self>, j: usize, tx: mpsc::Sender<AveragingData>) {
        for (k, part) in self.plan.parts_of(j).iter().enumerate() {
            let this = Arc::clone(&self);
            let part = part.clone();
            let encoded = tokio::task::spawn_blocking(move || this.encode_part(&part))
                .await
                .unwrap_or_else(|e| Err(Error::Internal(format!("encoding task failed: {e}"))));
            let first = k == 0;
            let tensor = match encoded {
                Ok(tensor) => tensor,
                Err(e) => {
                    // **\[averager\]** the reducer must not wait for parts that will never come.
                    // A stream that ends early tells it (protocol 4.5: "stream ended after k of
                    // n parts"); before the first part, the stream would carry no group id at
                    // all, so it opens with this peer's goodbye instead, as when leaving a group.
                    tracing::warn!(error = %e, "cannot encode a part; leaving this reducer's span");
                    self.encode_failed.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(e);
                    if first {
                        let _ = tx.send(self.goodbye()).await;
                    }
                    return;
                }
            };
            let message = AveragingData {
                code: if first { averager_proto::MessageCode::PartForAveraging as i32 } else { 0 },
                group_id: if first { self.group.group_id.clone() } else { Default::default() },
                endpoint: if first {
                    self.group.members[self.group.me].endpoint.clone()
                } else {
                    String::new()
                },
                tensor_part: Some(tensor),
                metadata: Default::default(),
                weight: self.settings.weight,
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
    }

    /// The one-message stream by which a member leaves a group (see `AllReduceRunner::serve`).
    fn goodbye(&self) -> AveragingData {
        AveragingData {
            code: averager_proto::MessageCode::Cancelled as i32,
            group_id: self.group.group_id.clone(),
            endpoint: self.group.members[self.group.me].endpoint.clone(),
            ..Default::default()
        }
    }

    /// Encodes one part straight from the tensor's memory.
    fn encode_part(&self, part: &PlannedPart) -> Result<WireTensor> {
        let tensors = self.tensors()?;
        let view = tensors[part.tensor].flat_view(part.range.clone())?;
        let info = self.infos[part.tensor].for_part(part.part_index, part.part_size);
        self.codec.compress(&view, &info)
    }
}

/// How long a finished reducer waits for its senders to read their last replies when no
/// `sender_timeout` is set (see `AllReduceRunner::run`).
const REPLY_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A spawned task that is aborted when this guard is dropped.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Waits for the task to finish.
    async fn join(&mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
