//! protocol 4.5: the span reducer, the reducer side of `rpc_aggregate_part`: one task per incoming
//! sender stream, each feeding the span's [`PartReducer`] and answering with deltas.
//!
//! Incoming parts are decoded and accumulated in [`SpanReducer::reduce_part`], the one place a
//! received part's bytes become numbers.
//!
//! **\[averager\]** changes: a caller that is not a sender gets `PROTOCOL_VIOLATION` (hivemind
//! raises before replying); a part that is not what the plan says (wrong length or dtype, more
//! parts than planned, undecodable) is the sender's fault, answered `PROTOCOL_VIOLATION` with a
//! ban, so the other senders are never stalled by it. Every refusal is answered with the code its
//! error stands for ([`Error::message_code`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use averager_proto::MessageCode;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::group::AllReduceGroup;
use super::membership::Membership;
use super::partition::PlannedPart;
use super::progress::{pending, progress_interval, with_pending};
use crate::compression::{BytesMut, Compression, CompressionInfo, WireTensor, wire_dtype, wire_shape};
use crate::error::{Error, Result};
use crate::reduce::{PartOutcome, PartReducer};
use crate::registry::Registry;
use crate::tensor::{DType, Tensor, TensorData, TensorSlice, TensorView};
use crate::time::with_timeout;
use crate::transport::{AveragingData, MessageStream};

/// The reducer side of one all-reduce: serves the streams of every sender of this peer's span.
///
/// Shared (through an [`Arc`]) by the router, which hands it incoming streams, and the tasks
/// serving them, which may outlive the round by a last reply; it holds nothing of this peer's
/// tensors but their dtypes.
#[derive(Debug)]
pub(crate) struct SpanReducer {
    group: Arc<AllReduceGroup>,
    /// This peer's parts, in the order senders send them.
    parts: Vec<PlannedPart>,
    /// Per group position: whether that member may read its replies only once its input ended
    /// (a member with no share, protocol 4.2): its replies must never hold up reading its parts.
    delayed: Vec<bool>,
    /// The dtype of every tensor.
    dtypes: Vec<DType>,
    /// `infos[i]` describes tensor `i` for the codec of the replies.
    infos: Vec<CompressionInfo>,
    registry: &'static Registry,
    sender_timeout: Option<Duration>,
    reducer_timeout: Option<Duration>,
    /// The part reducer of this span, when this peer has one.
    reducer: Option<Arc<PartReducer>>,
    membership: Arc<Membership>,
    cancel: CancellationToken,
}

/// What a [`SpanReducer`] is built from.
pub(crate) struct SpanInputs {
    pub(crate) group: Arc<AllReduceGroup>,
    pub(crate) parts: Vec<PlannedPart>,
    pub(crate) shares: Vec<f64>,
    pub(crate) dtypes: Vec<DType>,
    pub(crate) infos: Vec<CompressionInfo>,
    pub(crate) registry: &'static Registry,
    pub(crate) sender_timeout: Option<Duration>,
    pub(crate) reducer_timeout: Option<Duration>,
    pub(crate) reducer: Option<Arc<PartReducer>>,
    pub(crate) membership: Arc<Membership>,
    pub(crate) cancel: CancellationToken,
}

impl SpanReducer {
    pub(crate) fn new(inputs: SpanInputs) -> Self {
        let SpanInputs {
            group,
            parts,
            shares,
            dtypes,
            infos,
            registry,
            sender_timeout,
            reducer_timeout,
            reducer,
            membership,
            cancel,
        } = inputs;
        SpanReducer {
            group,
            parts,
            delayed: shares.iter().map(|&s| s == 0.0).collect(),
            dtypes,
            infos,
            registry,
            sender_timeout,
            reducer_timeout,
            reducer,
            membership,
            cancel,
        }
    }

    /// The group this span belongs to.
    pub(crate) fn group_id(&self) -> &Bytes {
        &self.group.group_id
    }

    /// The part reducer of this span, when this peer reduces one.
    pub(crate) fn part_reducer(&self) -> Option<&Arc<PartReducer>> {
        self.reducer.as_ref()
    }

    /// Stops the all-reduce: pending reductions end, incoming streams are answered `CANCELLED`,
    /// and the round's run returns [`Error::Cancelled`] (protocol 4.7, 11.12).
    pub(crate) fn cancel(&self) {
        self.cancel.cancel();
        if let Some(reducer) = &self.reducer {
            reducer.finish();
        }
    }

    /// Whether [`SpanReducer::cancel`] was called.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The member at `endpoint` left the group (a goodbye that reached the router first).
    pub(crate) fn sender_left(&self, endpoint: &str) {
        self.membership.left(endpoint);
    }

    /// Serves one sender's `rpc_aggregate_part` stream, whose first message was already read.
    ///
    /// Replies come in part order, one per received part; a refusal is a single message with
    /// its code, after which the stream ends.
    pub(crate) fn serve(
        self: &Arc<Self>,
        first: AveragingData,
        rest: MessageStream<AveragingData>,
    ) -> MessageStream<AveragingData> {
        // Small: replies are consumed as fast as the sender reads them.
        let (tx, rx) = mpsc::channel(2);
        let this = Arc::clone(self);
        tokio::spawn(async move { this.serve_sender(first, rest, tx).await });
        Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (Ok(m), rx)) }))
    }

    async fn serve_sender(
        self: Arc<Self>,
        first: AveragingData,
        rest: MessageStream<AveragingData>,
        tx: mpsc::Sender<AveragingData>,
    ) {
        let sender = match self.admit(&first) {
            Ok(sender) => sender,
            Err(e) => {
                tracing::debug!(endpoint = %first.endpoint, error = %e, "refused a sender stream");
                let _ = tx.send(refusal(&e)).await;
                return;
            }
        };
        let delayed = self.group.position_of(&first.endpoint).is_some_and(|p| self.delayed[p]);
        let mut buffered = VecDeque::new();
        // While this stream is served, its sender is told that this reducer is alive (see
        // `progress.rs`), also while its replies are delayed.
        let every = progress_interval(self.sender_timeout, self.reducer_timeout);
        let served = self.reduce_stream(sender, first, rest, &tx, delayed, &mut buffered);
        let served = with_pending(served, every, || {
            let _ = tx.try_send(pending());
        });
        if let Err(e) = served.await {
            if let Some(reducer) = &self.reducer {
                reducer.sender_failed(sender);
            }
            tracing::warn!(sender, error = %e, "sender excluded from the rest of the span");
            buffered.push_back(refusal(&e));
        }
        for reply in buffered {
            if tx.send(reply).await.is_err() {
                return;
            }
        }
    }

    /// The checks on a stream's first message (protocol 4.5 step 2); the sender index on success.
    fn admit(&self, first: &AveragingData) -> Result<usize> {
        if first.group_id != self.group.group_id {
            return Err(Error::protocol(MessageCode::BadGroupId, "group id does not match"));
        }
        if first.code == MessageCode::Cancelled as i32 {
            // A member's goodbye: it left the group; stop counting on it at once.
            self.membership.left(&first.endpoint);
            return Err(Error::Cancelled("the member left the group".into()));
        }
        if self.is_cancelled() {
            return Err(Error::Cancelled("the all-reduce was cancelled".into()));
        }
        let Some(reducer) = &self.reducer else {
            return Err(Error::protocol(MessageCode::ProtocolViolation, "this peer reduces no part"));
        };
        if reducer.is_finished() {
            return Err(Error::Internal("the reduction already finished".into()));
        }
        let sender = self
            .group
            .position_of(&first.endpoint)
            .and_then(|p| self.group.sender_index(p))
            .ok_or_else(|| {
                Error::protocol(MessageCode::ProtocolViolation, format!("{} is not a sender", first.endpoint))
            })?;
        self.membership.stream_opened(sender);
        if first.code != MessageCode::PartForAveraging as i32 {
            reducer.sender_failed(sender);
            return Err(Error::protocol(
                MessageCode::InternalError,
                "first message is not PART_FOR_AVERAGING",
            ));
        }
        Ok(sender)
    }

    /// Reduces every part of one sender's stream, replying as each completes.
    ///
    /// **\[averager\]** A sender with no share (`delayed`) may read its replies only once it has
    /// sent everything (protocol 4.2; hivemind's senders do). hivemind's reducer holds all of
    /// them back until then; here they go out as soon as its reply stream has room, and wait in
    /// `buffered` (at most one per planned part) while it has none, so a sender that reads as it
    /// sends (this crate's) gets them at once, and one that does not never stalls its stream.
    async fn reduce_stream(
        &self,
        sender: usize,
        first: AveragingData,
        mut rest: MessageStream<AveragingData>,
        tx: &mpsc::Sender<AveragingData>,
        delayed: bool,
        buffered: &mut VecDeque<AveragingData>,
    ) -> Result<()> {
        let expected = self.parts.len();
        let mut buffers = ReplyBuffers::default();
        let mut next = Some(first);
        let mut k = 0;
        loop {
            let message = match next.take() {
                Some(m) => m,
                None => {
                    let read = with_timeout(self.sender_timeout, rest.next(), "the sender's next part");
                    let read = tokio::select! {
                        read = read => read,
                        _ = self.cancel.cancelled() => {
                            return Err(Error::Cancelled("the all-reduce was cancelled".into()));
                        }
                    };
                    // Whatever broke the stream (a timeout, the transport), the sender hears
                    // INTERNAL_ERROR, as from hivemind: a `CANCELLED` would tell it that this
                    // peer left the group.
                    match read.map_err(unreadable)? {
                        None => break,
                        // The sender had every reply and closed its stream before its end
                        // frame left (its transport's task can lag behind the last reply):
                        // nothing is missing, so it is not excluded.
                        Some(Err(Error::Cancelled(reason))) if k == expected => {
                            tracing::debug!(sender, %reason, "a sender closed its stream after its last part");
                            break;
                        }
                        Some(message) => message.map_err(unreadable)?,
                    }
                }
            };
            if self.reducer.as_ref().is_some_and(|r| r.is_banned(sender)) {
                // protocol 4.5 step 5: a banned sender's stream is no longer read.
                return Err(Error::protocol(MessageCode::InternalError, "sender was banned"));
            }
            if k >= expected {
                return Err(Error::protocol(
                    MessageCode::ProtocolViolation,
                    format!("more than the {expected} planned parts"),
                ));
            }
            let reply = self.reduce_part(sender, k, message, &mut buffers).await?;
            if delayed {
                buffered.push_back(reply);
                while let Some(reply) = buffered.pop_front() {
                    match tx.try_send(reply) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(reply)) => {
                            buffered.push_front(reply);
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Err(Error::Cancelled("the sender stopped reading".into()));
                        }
                    }
                }
            } else if tx.send(reply).await.is_err() {
                return Err(Error::Cancelled("the sender stopped reading".into()));
            }
            k += 1;
        }
        if k < expected {
            return Err(Error::protocol(
                MessageCode::InternalError,
                format!("stream ended after {k} of {expected} parts"),
            ));
        }
        Ok(())
    }

    /// Reduces part `k` of `sender` and builds the reply: `average - part`, encoded with the
    /// codec the part came with (protocol 4.5 step 3).
    ///
    /// An f32 part is never decoded into a buffer of its own: it goes into the span's
    /// accumulator encoded ([`PartReducer::accumulate_encoded`]), and the reply is built in
    /// `buffers`, reused for every part of this sender: the average, minus the part decoded
    /// into it, encoded into one byte buffer; or, for a codec with a fused form
    /// ([`Compression::encode_difference_into`]), subtracted and encoded in one pass.
    async fn reduce_part(
        &self,
        sender: usize,
        k: usize,
        message: AveragingData,
        buffers: &mut ReplyBuffers,
    ) -> Result<AveragingData> {
        let violation = |reason: String| Error::protocol(MessageCode::ProtocolViolation, reason);
        let planned = &self.parts[k];
        let wire = message.tensor_part.ok_or_else(|| violation(format!("part {k} has no tensor")))?;
        let codec = self.registry.codec_for(&wire).map_err(|e| violation(format!("part {k}: {e}")))?;
        let dtype = self.dtypes[planned.tensor];
        let (_, numel) = wire_shape(codec.name(), &wire).map_err(|e| violation(format!("part {k}: {e}")))?;
        let got = wire_dtype(codec.name(), &wire).map_err(|e| violation(format!("part {k}: {e}")))?;
        if numel != planned.range.len() || got != dtype {
            return Err(violation(format!(
                "part {k} is {numel} x {got}, the plan says {} x {dtype}",
                planned.range.len()
            )));
        }
        let Some(reducer) = &self.reducer else {
            return Err(Error::Internal("no reducer".into()));
        };
        let info = self.infos[planned.tensor].for_part(planned.part_index, planned.part_size);
        // A part the codec cannot decode is the sender's fault; any other failure is this side's.
        let by_kind = |e: Error| match e {
            Error::Codec { .. } => violation(format!("part {k}: {e}")),
            e => internal(e),
        };
        let encoded = if dtype == DType::F32 {
            let outcome = reducer
                .accumulate_encoded(sender, k, codec.as_ref(), &wire, message.weight)
                .await
                .map_err(by_kind)?;
            buffers.reply(codec.as_ref(), &wire, &outcome, &info).map_err(by_kind)?
        } else {
            let part = codec.extract(&wire).map_err(|e| violation(format!("part {k}: {e}")))?;
            let outcome =
                reducer.accumulate(sender, k, &part.view(), message.weight).await.map_err(internal)?;
            let delta = match outcome.as_ref() {
                PartOutcome::Reduced(average) => average.view().data().difference(part.view().data()),
                PartOutcome::KeepLocal => Ok(TensorData::zeros(dtype, part.numel())),
            }
            .map_err(internal)?;
            let delta = Tensor::new(vec![delta.len()], delta).map_err(internal)?;
            codec.compress(&delta.view(), &info).map_err(internal)?
        };
        Ok(AveragingData {
            code: MessageCode::AveragedPart as i32,
            tensor_part: Some(encoded),
            ..Default::default()
        })
    }
}

/// The buffers one sender's replies are built in, reused from part to part.
#[derive(Default)]
struct ReplyBuffers {
    /// The delta of the part being answered.
    delta: Vec<f32>,
}

/// A buffer for the encoding of `numel` f32 values by `codec`, from the process's pool (see
/// `buffer_pool.rs`): it goes back there once the transport has let go of the reply, for a
/// later one, however many replies are queued meanwhile.
fn reply_buffer(codec: &dyn Compression, info: &CompressionInfo, numel: usize) -> BytesMut {
    let ratio = codec.estimate_compression_ratio(info);
    let ratio = if ratio.is_finite() && ratio > 0.0 { ratio.min(1.0) } else { 1.0 };
    // A little headroom for the codec's own header, so the estimate rarely has to grow.
    let estimate = (numel as f64 * 4.0 * ratio) as usize + 1024;
    crate::buffer_pool::take(estimate)
}

impl ReplyBuffers {
    /// The reply to the f32 part `part`: `average - part` (zeros to keep local values), encoded
    /// by `codec`.
    fn reply(
        &mut self,
        codec: &dyn Compression,
        part: &WireTensor,
        outcome: &PartOutcome,
        info: &CompressionInfo,
    ) -> Result<WireTensor> {
        let (_, numel) = wire_shape(codec.name(), part)?;
        self.delta.clear();
        let mut bytes = reply_buffer(codec, info, numel);
        match outcome {
            PartOutcome::Reduced(average) => {
                let average = average.as_f32().map_err(internal)?;
                if average.len() != numel {
                    return Err(Error::Internal(format!(
                        "the reducer gave {} values for {numel}",
                        average.len()
                    )));
                }
                // A codec with a fused form subtracts and encodes in one pass.
                if let Some(encoded) = codec.encode_difference_into(average, part, info, &mut bytes) {
                    let mut encoded = encoded?;
                    encoded.buffer = crate::buffer_pool::share(bytes);
                    return Ok(encoded);
                }
                self.delta.extend_from_slice(average);
                // `average + (-1) * part` in f32 is exactly `average - part`.
                codec.decode_add_into(part, -1.0, &mut self.delta)?;
            }
            PartOutcome::KeepLocal => self.delta.resize(numel, 0.0),
        }
        let delta = TensorView::new(vec![numel], TensorSlice::F32(&self.delta))?;
        // Encoding this side's own delta is not the sender's fault.
        let mut encoded =
            codec.encode_into(&delta, info, &mut bytes).map_err(|e| Error::Internal(e.to_string()))?;
        encoded.buffer = crate::buffer_pool::share(bytes);
        Ok(encoded)
    }
}

/// A failure on this side while reducing: the sender hears `INTERNAL_ERROR`, unless the error
/// stands for a code of its own (`CANCELLED` when the reduction was cancelled).
fn internal(e: Error) -> Error {
    if e.message_code().is_some() { e } else { Error::Internal(e.to_string()) }
}

/// A sender's stream that cannot be read any more.
fn unreadable(e: Error) -> Error {
    Error::Internal(format!("reading the sender's stream: {e}"))
}

/// The one message that ends a stream this side refuses or stops serving.
fn refusal(e: &Error) -> AveragingData {
    let code = e.message_code().unwrap_or(MessageCode::InternalError);
    AveragingData { code: code as i32, ..Default::default() }
}
