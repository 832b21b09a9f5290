//! protocol 4.5: the reducer side of `rpc_aggregate_part`: one task per incoming sender stream.
//!
//! **\[averager\]** changes: a caller that is not a sender gets `PROTOCOL_VIOLATION` (hivemind
//! raises before replying); a part that is not what the plan says (wrong length or dtype, more
//! parts than planned, undecodable) is the sender's fault, answered `PROTOCOL_VIOLATION` with a
//! ban, so the other senders are never stalled by it.

use std::sync::{Arc, PoisonError};

use averager_proto::MessageCode;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::progress::{pending, progress_interval, with_pending};
use super::runner::AllReduceRunner;
use crate::error::{Error, Result};
use crate::reduce::PartOutcome;
use crate::tensor::TensorData;
use crate::time::with_timeout;
use crate::transport::{AveragingData, MessageStream};

/// How a sender's stream ended on this side, and what to tell it.
struct Stop {
    code: MessageCode,
    reason: String,
}

impl Stop {
    fn new(code: MessageCode, reason: impl Into<String>) -> Self {
        Stop { code, reason: reason.into() }
    }
}

impl AllReduceRunner {
    /// Serves one sender's `rpc_aggregate_part` stream, whose first message was already read.
    ///
    /// Replies come in part order, one per received part; a refusal is a single message with
    /// its code, after which the stream ends.
    pub fn serve(
        self: &Arc<Self>,
        first: AveragingData,
        rest: MessageStream<AveragingData>,
    ) -> MessageStream<AveragingData> {
        // Small: replies are consumed as fast as the sender reads them.
        let (tx, rx) = mpsc::channel(2);
        let this = Arc::clone(self);
        tokio::spawn(async move { this.serve_sender(first, rest, tx).await });
        // Counted until read to the end or dropped, so the run can wait for its replies to leave.
        let open = OpenReply::new(Arc::clone(&self.open_replies));
        Box::pin(futures::stream::unfold((rx, open), |(mut rx, open)| async move {
            rx.recv().await.map(|m| (Ok(m), (rx, open)))
        }))
    }

    async fn serve_sender(
        self: Arc<Self>,
        first: AveragingData,
        rest: MessageStream<AveragingData>,
        tx: mpsc::Sender<AveragingData>,
    ) {
        let refusal = |code: MessageCode| AveragingData { code: code as i32, ..Default::default() };
        let sender = match self.admit(&first) {
            Ok(sender) => sender,
            Err(stop) => {
                tracing::debug!(endpoint = %first.endpoint, reason = %stop.reason, "refused a sender stream");
                let _ = tx.send(refusal(stop.code)).await;
                return;
            }
        };
        let delayed = self.group.position_of(&first.endpoint).map(|p| self.shares[p] == 0.0).unwrap_or(false);
        let mut buffered = Vec::new();
        // While this stream is served, its sender is told that this reducer is alive (see
        // `progress.rs`), also while its replies are delayed.
        let every = progress_interval(self.settings.sender_timeout, self.settings.reducer_timeout);
        let served = self.reduce_stream(sender, first, rest, &tx, delayed, &mut buffered);
        let served = with_pending(served, every, || {
            let _ = tx.try_send(pending());
        });
        if let Err(stop) = served.await {
            if let Some(reducer) = &self.reducer {
                reducer.sender_failed(sender);
            }
            tracing::warn!(sender, reason = %stop.reason, "sender excluded from the rest of the span");
            buffered.push(refusal(stop.code));
        }
        for reply in buffered {
            if tx.send(reply).await.is_err() {
                return;
            }
        }
    }

    /// The checks on a stream's first message (protocol 4.5 step 2); the sender index on success.
    fn admit(&self, first: &AveragingData) -> std::result::Result<usize, Stop> {
        if first.group_id != self.group.group_id {
            return Err(Stop::new(MessageCode::BadGroupId, "group id does not match"));
        }
        if first.code == MessageCode::Cancelled as i32 {
            // A member's goodbye: it left the group; stop counting on it at once.
            self.sender_left(&first.endpoint);
            return Err(Stop::new(MessageCode::Cancelled, "the member left the group"));
        }
        if self.is_cancelled() {
            return Err(Stop::new(MessageCode::Cancelled, "the all-reduce was cancelled"));
        }
        let Some(reducer) = &self.reducer else {
            return Err(Stop::new(MessageCode::ProtocolViolation, "this peer reduces no part"));
        };
        if reducer.is_finished() {
            return Err(Stop::new(MessageCode::InternalError, "the reduction already finished"));
        }
        let sender =
            self.group.position_of(&first.endpoint).and_then(|p| self.group.sender_index(p)).ok_or_else(
                || Stop::new(MessageCode::ProtocolViolation, format!("{} is not a sender", first.endpoint)),
            )?;
        self.opened.lock().unwrap_or_else(PoisonError::into_inner)[sender] = true;
        if first.code != MessageCode::PartForAveraging as i32 {
            reducer.sender_failed(sender);
            return Err(Stop::new(MessageCode::InternalError, "first message is not PART_FOR_AVERAGING"));
        }
        Ok(sender)
    }

    /// Reduces every part of one sender's stream, replying as each completes (or buffering the
    /// replies of a delayed sender).
    async fn reduce_stream(
        &self,
        sender: usize,
        first: AveragingData,
        mut rest: MessageStream<AveragingData>,
        tx: &mpsc::Sender<AveragingData>,
        delayed: bool,
        buffered: &mut Vec<AveragingData>,
    ) -> std::result::Result<(), Stop> {
        let expected = self.plan.parts_of(self.group.me).len();
        let mut next = Some(first);
        let mut k = 0;
        loop {
            let message = match next.take() {
                Some(m) => m,
                None => match tokio::select! {
                    next = with_timeout(self.settings.sender_timeout, rest.next(), "the sender's next part") => next,
                    _ = self.cancel.cancelled() => {
                        return Err(Stop::new(MessageCode::Cancelled, "the all-reduce was cancelled"));
                    }
                } {
                    Err(e) => return Err(Stop::new(MessageCode::InternalError, e.to_string())),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(Stop::new(MessageCode::InternalError, e.to_string())),
                    Ok(Some(Ok(m))) => m,
                },
            };
            if self.reducer.as_ref().is_some_and(|r| r.is_banned(sender)) {
                // protocol 4.5 step 5: a banned sender's stream is no longer read.
                return Err(Stop::new(MessageCode::InternalError, "sender was banned"));
            }
            if k >= expected {
                return Err(Stop::new(
                    MessageCode::ProtocolViolation,
                    format!("more than the {expected} planned parts"),
                ));
            }
            let reply = self.reduce_part(sender, k, message).await?;
            if delayed {
                buffered.push(reply);
            } else if tx.send(reply).await.is_err() {
                return Err(Stop::new(MessageCode::Cancelled, "the sender stopped reading"));
            }
            k += 1;
        }
        if k < expected {
            return Err(Stop::new(
                MessageCode::InternalError,
                format!("stream ended after {k} of {expected} parts"),
            ));
        }
        Ok(())
    }

    /// Reduces part `k` of `sender` and builds the reply: `average - part`, encoded with the
    /// codec the part came with (protocol 4.5 step 3).
    async fn reduce_part(
        &self,
        sender: usize,
        k: usize,
        message: AveragingData,
    ) -> std::result::Result<AveragingData, Stop> {
        let violation = |reason: String| Stop::new(MessageCode::ProtocolViolation, reason);
        let planned = &self.plan.parts_of(self.group.me)[k];
        let wire = message.tensor_part.ok_or_else(|| violation(format!("part {k} has no tensor")))?;
        let codec = self.registry.codec_for(&wire).map_err(|e| violation(e.to_string()))?;
        let part = codec.extract(&wire).map_err(|e| violation(e.to_string()))?;
        let dtype = self.dtypes[planned.tensor];
        if part.numel() != planned.range.len() || part.dtype() != dtype {
            return Err(violation(format!(
                "part {k} is {} x {}, the plan says {} x {dtype}",
                part.numel(),
                part.dtype(),
                planned.range.len()
            )));
        }
        let Some(reducer) = &self.reducer else {
            return Err(Stop::new(MessageCode::InternalError, "no reducer"));
        };
        let outcome =
            reducer.accumulate(sender, k, &part.view(), message.weight).await.map_err(|e| match e {
                Error::Cancelled(_) => Stop::new(MessageCode::Cancelled, e.to_string()),
                other => Stop::new(MessageCode::InternalError, other.to_string()),
            })?;
        let delta = match outcome.as_ref() {
            PartOutcome::Reduced(average) => average.view().data().difference(part.view().data()),
            PartOutcome::KeepLocal => Ok(TensorData::zeros(dtype, part.numel())),
        }
        .map_err(|e| Stop::new(MessageCode::InternalError, e.to_string()))?;
        let delta = crate::tensor::Tensor::new(vec![delta.len()], delta)
            .map_err(|e| Stop::new(MessageCode::InternalError, e.to_string()))?;
        let info = self.infos[planned.tensor].for_part(planned.part_index, planned.part_size);
        let encoded: Result<_> = codec.compress(&delta.view(), &info);
        let encoded = encoded.map_err(|e| Stop::new(MessageCode::InternalError, e.to_string()))?;
        Ok(AveragingData {
            code: MessageCode::AveragedPart as i32,
            tensor_part: Some(encoded),
            ..Default::default()
        })
    }
}

/// One reply stream that the transport has not read to the end (see `AllReduceRunner::run`).
struct OpenReply(Arc<watch::Sender<usize>>);

impl OpenReply {
    fn new(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        OpenReply(count)
    }
}

impl Drop for OpenReply {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}
