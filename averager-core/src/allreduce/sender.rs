//! protocol 4.4: the sender side of one all-reduce: this peer's parts go to the reducer of each
//! span (itself included), and each reducer's replies come back as deltas.
//!
//! A reply's bytes are decoded in [`Sender::decode_reply`] straight into the buffer of its
//! reducer's span ([`SpanDeltas`], allocated once per span), and [`Sender::run`] collects the
//! spans; the averager applies them to the tensors once the round is over. A part whose reducer
//! failed has no delta there and keeps its local values.
//!
//! The sender owns this peer's tensors for the duration of the run and encodes parts straight from
//! tensor memory on blocking threads, without a copy per peer. The tasks that encode hold the
//! tensors only weakly, so once the run is over (or dropped) the caller takes them back without a
//! copy, whatever encoding was still queued.

use std::sync::{Arc, Weak};
use std::time::Duration;

use averager_proto::MessageCode;
use futures::StreamExt;
use futures::future::join_all;
use tokio::sync::{mpsc, watch};

use super::borrowed_part::borrowed_part;
use super::deltas::{Deltas, SpanDeltas};
use super::group::AllReduceGroup;
use super::membership::Membership;
use super::partition::{PartitionPlan, PlannedPart};
use super::progress::{ReplyClock, is_pending};
use super::round_tensors::RoundTensors;
use super::scratch::ScratchPool;
use super::tasks::{AbortOnDrop, sleep_until};
use crate::compression::{Compression, CompressionInfo, WireTensor, wire_dtype, wire_shape};
use crate::error::{Error, Result};
use crate::matchmaking::PeerMode;
use crate::reduce::PartReducer;
use crate::registry::Registry;
use crate::tensor::DType;
use crate::time::with_timeout;
use crate::transport::{AveragingData, Transport};

/// What the sender side produced: the delta of every part that came back, and the reducers that
/// failed.
#[derive(Debug)]
pub(crate) struct Sent {
    /// The deltas to apply (`tensor += alpha * delta`).
    pub(crate) deltas: Deltas,
    /// Endpoints of reducers that failed (their remaining parts keep local values).
    pub(crate) failed_reducers: Vec<String>,
}

/// The sender side of one all-reduce.
pub(crate) struct Sender {
    pub(crate) group: Arc<AllReduceGroup>,
    pub(crate) plan: Arc<PartitionPlan>,
    /// This peer's tensors, for its own span's parts; the part producers hold them weakly.
    pub(crate) tensors: Arc<RoundTensors>,
    pub(crate) infos: Arc<Vec<CompressionInfo>>,
    pub(crate) codec: Arc<dyn Compression>,
    /// The dtype of every tensor, to check the replies against.
    pub(crate) dtypes: Vec<DType>,
    pub(crate) registry: &'static Registry,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) sender_timeout: Option<Duration>,
    pub(crate) reducer_timeout: Option<Duration>,
    /// This peer's averaging weight.
    pub(crate) weight: f64,
    /// Whether this peer has no share: a hivemind reducer answers it only once its input ended
    /// (protocol 4.2, "delayed results"), so each part it hands over restarts the reply clock.
    pub(crate) delayed: bool,
    /// This peer's own part reducer, which its parts of its own span go into directly.
    pub(crate) own_span: Option<Arc<PartReducer>>,
    pub(crate) membership: Arc<Membership>,
    /// Where the deltas' buffers come from (the averager's, kept between rounds).
    pub(crate) scratch: Arc<ScratchPool>,
    /// Whether f32 replies are kept encoded until they are applied (see `deltas.rs`), rather
    /// than decoded on arrival.
    pub(crate) keep_encoded: bool,
}

/// Why an exchange with one reducer stopped early.
enum Failure {
    /// The reducer failed (or left): its remaining parts keep their local values.
    Reducer(Error),
    /// This peer could not encode one of its parts.
    Encode(Error),
}

/// One member's parts as the producer task that encodes them sees them.
struct Producer {
    parts: Vec<PlannedPart>,
    tensors: Weak<RoundTensors>,
    infos: Arc<Vec<CompressionInfo>>,
    codec: Arc<dyn Compression>,
    /// The first message of a stream names the group and this peer.
    group_id: bytes::Bytes,
    endpoint: String,
    weight: f64,
}

impl Sender {
    /// Sends this peer's parts to every reducer and collects the deltas. An AUX peer sends
    /// nothing. A failed reducer is not an error: its remaining parts simply have no delta
    /// (protocol 4.4).
    pub(crate) async fn run(&self) -> Result<Sent> {
        let sends = self.group.my_mode() != PeerMode::Aux;
        let exchanges = (0..self.group.members.len())
            .filter(|&j| sends && !self.plan.parts_of(j).is_empty())
            .map(|j| self.exchange_with(j));
        let mut deltas = Deltas::new(self.plan.parts().len());
        let mut failed_reducers = Vec::new();
        let mut own_failure = None;
        for (j, received, failure) in join_all(exchanges).await {
            deltas.add(received?)?;
            match failure {
                Some(Failure::Reducer(error)) => {
                    let endpoint = &self.group.members[j].endpoint;
                    tracing::warn!(reducer = %endpoint, %error, "reducer failed; its remaining parts keep local values");
                    failed_reducers.push(endpoint.clone());
                }
                Some(Failure::Encode(error)) => own_failure = own_failure.or(Some(error)),
                None => {}
            }
        }
        // **\[averager\]** a peer that could not encode one of its parts left that reducer's
        // span: it reports the codec's error rather than an average it only partly joined.
        if let Some(error) = own_failure {
            return Err(error);
        }
        Ok(Sent { deltas, failed_reducers })
    }

    /// Sends this peer's parts of member `j`'s span and collects the deltas, into one buffer for
    /// the span, and why the exchange stopped early, if it did.
    async fn exchange_with(&self, j: usize) -> (usize, Result<SpanDeltas>, Option<Failure>) {
        let first = self.plan.first_index_of(j);
        let (parts, dtypes) = (self.plan.parts_of(j), &self.dtypes);
        let mut received = match SpanDeltas::new(first, parts, dtypes, &self.scratch) {
            Ok(received) => received,
            Err(e) => return (j, Err(e), None),
        };
        let outcome = if j == self.group.me {
            self.reduce_own_parts(&mut received).await.map_err(Failure::Reducer)
        } else {
            self.exchange_with_remote(j, &mut received).await
        };
        (j, Ok(received), outcome.err())
    }

    /// Feeds this peer's raw parts of its own span into its part reducer (protocol 4.4 "itself").
    async fn reduce_own_parts(&self, received: &mut SpanDeltas) -> Result<()> {
        let (Some(reducer), Some(sender)) = (&self.own_span, self.group.sender_index(self.group.me)) else {
            return Ok(());
        };
        let fed = async {
            for (k, part) in self.plan.parts_of(self.group.me).iter().enumerate() {
                let view = self.tensors.flat_view(part.tensor, part.range.clone())?;
                let outcome = reducer.accumulate(sender, k, &view, self.weight).await?;
                received.set_average(k, &outcome, view.data())?;
            }
            Ok(())
        };
        let fed = fed.await;
        if fed.is_err() {
            // This peer stops feeding its own span, like a remote sender whose stream ended:
            // the span's later parts must not wait for it.
            reducer.sender_failed(sender);
        }
        fed
    }

    /// Streams this peer's parts of member `j`'s span to it and reads back one delta per part
    /// (protocol 4.4 "another peer").
    async fn exchange_with_remote(
        &self,
        j: usize,
        received: &mut SpanDeltas,
    ) -> std::result::Result<(), Failure> {
        let (encoded_tx, mut encoded) = tokio::sync::oneshot::channel();
        let outcome = self.stream_to(j, received, encoded_tx).await;
        // An exchange that ended because this peer could not encode a part is this peer's
        // failure, not the reducer's.
        if let Ok(error) = encoded.try_recv() {
            return Err(Failure::Encode(error));
        }
        outcome.map_err(Failure::Reducer)
    }

    /// The stream of [`Self::exchange_with_remote`]; an encoding failure goes to `encoded`.
    async fn stream_to(
        &self,
        j: usize,
        received: &mut SpanDeltas,
        encoded: tokio::sync::oneshot::Sender<Error>,
    ) -> Result<()> {
        let parts = self.plan.parts_of(j);
        // A reducer that cannot even be dialed is as silent as one that stopped replying: without
        // this bound a dead peer costs the transport's whole connect timeout instead. Replies are
        // timed by a `ReplyClock`, which a reducer waiting for other senders keeps running with
        // `PART_PENDING` (see `progress.rs`).
        let dial = self.transport.connect(&self.group.members[j].endpoint);
        let client = with_timeout(self.reducer_timeout, dial, "dialing a reducer").await??;
        // Capacity 1 plus the part being encoded: one part of prefetch (protocol 9).
        let (tx, rx) = mpsc::channel(1);
        let _producer = AbortOnDrop(tokio::spawn(self.producer(parts).run(tx, encoded)));
        // How many parts the transport has taken: the reply to a part cannot come before it.
        let (taken_tx, mut taken) = watch::channel(0usize);
        let requests = futures::stream::unfold((rx, taken_tx), |(mut rx, taken_tx)| async move {
            let message = rx.recv().await?;
            taken_tx.send_modify(|n| *n += 1);
            Some((message, (rx, taken_tx)))
        });
        let open = client.rpc_aggregate_part(Box::pin(requests));
        let mut replies = with_timeout(self.reducer_timeout, open, "opening a part stream").await??;
        // **\[averager\]** replies are read while the parts are still going out, also by a peer
        // with no share (protocol 4.2 has it read them only once everything is sent): on a link
        // that is slow both ways, sending first and receiving after takes twice as long as doing
        // both at once. A reducer that delays them anyway (hivemind's) is timed from the last
        // part handed over, as before.
        let mut clock = ReplyClock::new(self.reducer_timeout, self.sender_timeout);
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
                        if (parts_taken <= k && now > k) || (self.delayed && now > parts_taken) {
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
            if reply.code == MessageCode::Cancelled as i32 {
                self.membership.mark_left(j);
            }
            if reply.code == MessageCode::BadGroupId as i32 {
                // **\[averager\]** the leader's acceptance reached it only after it gave up on
                // the leader (see `presence.rs`).
                self.membership.does_not_know_the_group(j);
            }
            self.decode_reply(k, part, reply, received)?;
        }
        Ok(())
    }

    /// Checks a reducer's reply for `part`, the span's part `k`, and decodes its delta into the
    /// span's buffer.
    fn decode_reply(
        &self,
        k: usize,
        part: &PlannedPart,
        reply: AveragingData,
        received: &mut SpanDeltas,
    ) -> Result<()> {
        let code = MessageCode::try_from(reply.code).unwrap_or(MessageCode::NoCode);
        if code != MessageCode::AveragedPart {
            return Err(Error::protocol(code, "reducer replied with a code other than AVERAGED_PART"));
        }
        let wire = reply.tensor_part.ok_or_else(|| {
            Error::protocol(MessageCode::ProtocolViolation, "AVERAGED_PART without a tensor")
        })?;
        let codec = self.registry.codec_for(&wire)?;
        // The header says what the delta holds before anything is decoded.
        let (_, numel) = wire_shape(codec.name(), &wire)?;
        let got = wire_dtype(codec.name(), &wire)?;
        let dtype = self.dtypes[part.tensor];
        if numel != part.range.len() || got != dtype {
            return Err(Error::protocol(
                MessageCode::ProtocolViolation,
                format!("delta of {numel} x {got} for a part of {} x {dtype}", part.range.len()),
            ));
        }
        received.decode(k, &codec, wire, self.keep_encoded)
    }

    /// The producer of this peer's `parts` of one span.
    fn producer(&self, parts: &[PlannedPart]) -> Producer {
        Producer {
            parts: parts.to_vec(),
            tensors: Arc::downgrade(&self.tensors),
            infos: Arc::clone(&self.infos),
            codec: Arc::clone(&self.codec),
            group_id: self.group.group_id.clone(),
            endpoint: self.group.members[self.group.me].endpoint.clone(),
            weight: self.weight,
        }
    }
}

impl Producer {
    /// Encodes the parts off the async threads and queues them for sending; why encoding failed
    /// goes to `failed`.
    async fn run(self, tx: mpsc::Sender<AveragingData>, failed: tokio::sync::oneshot::Sender<Error>) {
        let this = Arc::new(self);
        for k in 0..this.parts.len() {
            let encoded = match this.borrowed(k) {
                Some(message) => Ok(message),
                None => {
                    let encoder = Arc::clone(&this);
                    tokio::task::spawn_blocking(move || encoder.encode(k))
                        .await
                        .unwrap_or_else(|e| Err(Error::Internal(format!("encoding task failed: {e}"))))
                }
            };
            let first = k == 0;
            let tensor = match encoded {
                Ok(tensor) => tensor,
                Err(e) => {
                    // **\[averager\]** the reducer must not wait for parts that will never come:
                    // a stream that ends early tells it (protocol 4.5), and before the first part
                    // (which names the group) the stream opens with this peer's goodbye instead,
                    // as when leaving a group.
                    tracing::warn!(error = %e, "cannot encode a part; leaving this reducer's span");
                    let _ = failed.send(e);
                    if first {
                        let _ = tx.send(this.goodbye()).await;
                    }
                    return;
                }
            };
            let message = AveragingData {
                code: if first { MessageCode::PartForAveraging as i32 } else { 0 },
                group_id: if first { this.group_id.clone() } else { Default::default() },
                endpoint: if first { this.endpoint.clone() } else { String::new() },
                tensor_part: Some(tensor),
                metadata: Default::default(),
                weight: this.weight,
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
    }

    /// The one-message stream by which a member leaves a group (protocol 4.5).
    fn goodbye(&self) -> AveragingData {
        AveragingData {
            code: MessageCode::Cancelled as i32,
            group_id: self.group_id.clone(),
            endpoint: self.endpoint.clone(),
            ..Default::default()
        }
    }

    /// Part `k` as a message whose buffer is the tensor's memory, when the codec allows it
    /// (see `borrowed_part.rs`): no encoding work, so no blocking thread either.
    fn borrowed(&self, k: usize) -> Option<WireTensor> {
        let tensors = self.tensors.upgrade()?;
        let part = &self.parts[k];
        borrowed_part(self.codec.as_ref(), &tensors, part.tensor, part.range.clone())
    }

    /// Encodes part `k` straight from the tensor's memory, while the run lasts.
    fn encode(&self, k: usize) -> Result<WireTensor> {
        let tensors =
            self.tensors.upgrade().ok_or_else(|| Error::Cancelled("the all-reduce is over".into()))?;
        let part = &self.parts[k];
        let view = tensors.flat_view(part.tensor, part.range.clone())?;
        let info = self.infos[part.tensor].for_part(part.part_index, part.part_size);
        self.codec.compress(&view, &info)
    }
}
