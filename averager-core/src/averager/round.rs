//! protocol 8.1: the round loop of one step: matchmaking, the trigger, the all-reduce, retries.
//!
//! Every step runs in a `step` span (`matchmaking` and `allreduce` spans inside), whose fields
//! (group id and size, bytes, durations, outcome) are recorded from what the round returns; the
//! same figures come back to the caller as the result's [`StepReport`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use averager_proto::MessageCode;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::Empty;

use super::gathered::Gathered;
use super::report::StepReport;
use super::round_end::{
    OWNED_RECLAIM_LIMIT, StepIo, check_lent, log_failed_reducers, reclaim_lent, take_back,
};
use super::step_control::{Stage, StepControl};
use super::telemetry::{CountingTransport, Tally};
use super::{Inner, hex};
use crate::allreduce::{AllReduceGroup, AllReduceInputs, AllReduceRound, AllReduceSettings, RoundTensors};
use crate::error::{Error, Operation, Result};
use crate::matchmaking::{FormedGroup, GatherPayload, PeerMode, SearchRequest};
use crate::time::{dht_now, with_timeout};
use crate::transport::AveragingData;

impl Inner {
    /// Runs a step to its end and reports through its control (protocol 8.1 round loop).
    /// With a `target` ([`StepOptions::apply_to`](super::StepOptions::apply_to)), the result goes
    /// there instead of into the averager's tensors; with tensors lent by a lender
    /// ([`StepOptions::lend_inputs`](super::StepOptions::lend_inputs)), into those.
    pub(super) async fn run_step(self: Arc<Self>, control: StepControl<Gathered>, io: StepIo) {
        // A second step queues behind the first (protocol 3.1).
        let _one_at_a_time = self.step_lock.lock().await;
        let span = tracing::info_span!(
            "step",
            group_id = Empty,
            group_size = Empty,
            attempts = Empty,
            bytes_sent = Empty,
            bytes_received = Empty,
            matchmaking_seconds = Empty,
            allreduce_seconds = Empty,
            outcome = Empty,
        );
        let mut report = StepReport::default();
        let result = self.round_loop(&control, &io, &mut report).instrument(span.clone()).await;
        span.record("attempts", report.attempts);
        span.record("matchmaking_seconds", report.matchmaking.as_secs_f64());
        let result = result.map(|gathered| {
            span.record("group_id", report.group_id.as_str());
            span.record("group_size", report.group_size);
            span.record("bytes_sent", report.bytes_sent);
            span.record("bytes_received", report.bytes_received);
            span.record("allreduce_seconds", report.all_reduce.as_secs_f64());
            span.record("outcome", "success");
            gathered.with_report(report)
        });
        if let Err(e) = &result {
            span.record("outcome", tracing::field::debug(e.kind()));
        }
        control.finish(result);
    }

    async fn round_loop(
        &self,
        control: &StepControl<Gathered>,
        io: &StepIo,
        report: &mut StepReport,
    ) -> Result<Gathered> {
        loop {
            if control.is_done() {
                return Err(Error::Cancelled("the step was cancelled".into()));
            }
            control.set_group(None);
            control.set_stage(Stage::LookingForGroup);
            report.attempts += 1;
            let error = match self.round(control, io, report).await {
                Ok(gathered) => return Ok(gathered),
                Err(e) => e,
            };
            let in_time = control.deadline().is_none_or(|d| dht_now() < d);
            // Protocol 8.1 step 4: a new group for what another group may not repeat. The caller
            // gets the error itself (its variant is the step's documented contract); the context
            // is in the log line.
            if !(control.allow_retries() && !control.is_done() && in_time && error.is_temporary()) {
                if !error.context().is_empty() {
                    tracing::debug!(%error, "averaging step failed");
                }
                return Err(error.into_root());
            }
            tracing::warn!(%error, "averaging round failed; retrying with a new group");
        }
    }

    /// One attempt: find a group, await the trigger, run the all-reduce, apply the result.
    async fn round(
        &self,
        control: &StepControl<Gathered>,
        io: &StepIo,
        report: &mut StepReport,
    ) -> Result<Gathered> {
        let span = tracing::info_span!("matchmaking", group_id = Empty, group_size = Empty, seconds = Empty);
        let started = Instant::now();
        let group = self.find_group(control).instrument(span.clone()).await;
        report.matchmaking += started.elapsed();
        span.record("seconds", started.elapsed().as_secs_f64());
        let group = group?;
        span.record("group_id", hex(&group.group_id).as_str());
        span.record("group_size", group.endpoints.len());
        if control.is_done() || self.shutdown.is_cancelled() {
            // Cancelled while the group formed: tell its members instead of vanishing.
            self.abandon(&group);
            return Err(Error::Cancelled("the step was cancelled".into()));
        }
        // Members may stream to us before our trigger fires; their streams wait (protocol 8.2)
        // and are counted into this tally (which they may have started).
        let tally = self.traffic.tally(&group.group_id);
        self.router.expect(group.group_id.clone());
        control.set_group(Some(group.endpoints.clone()));
        if !control.triggered() {
            control.set_stage(Stage::AwaitingTrigger);
            let triggered = tokio::select! {
                triggered = control.wait_for_trigger() => triggered,
                _ = self.shutdown.cancelled() => Err(Error::Cancelled("the averager shut down".into())),
            };
            if let Err(e) = triggered {
                self.abandon(&group);
                return Err(e);
            }
        }
        let decoded = group
            .endpoints
            .iter()
            .zip(&group.gathered)
            .map(|(e, g)| Ok((e.clone(), GatherPayload::decode(g)?)))
            .collect::<Result<Vec<_>>>()
            .and_then(|members| {
                let all_reduce_group = AllReduceGroup::from_gathered(
                    group.group_id.clone(),
                    &group.endpoints,
                    &group.gathered,
                    &self.endpoint,
                )?;
                Ok((Gathered::new(members), all_reduce_group))
            });
        let (gathered, all_reduce_group) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                self.abandon(&group);
                // A member's malformed payload (or a leader's group without this peer) is that
                // group's fault: another group may work.
                return Err(e
                    .during(Operation::FormGroup)
                    .with_context("group", hex(&group.group_id))
                    .set_temporary());
            }
        };
        let group_id = hex(&group.group_id);
        let span = tracing::info_span!(
            "allreduce",
            group_id = group_id.as_str(),
            group_size = group.endpoints.len(),
            bytes_sent = Empty,
            bytes_received = Empty,
            failed_reducers = Empty,
            seconds = Empty,
        );
        let figures = self
            .all_reduce(all_reduce_group, control, io, &group, &tally)
            .instrument(span.clone())
            .await
            .map_err(|e| e.during(Operation::AllReduce).with_context("group", &group_id));
        self.traffic.end(&group.group_id);
        let figures = figures?;
        span.record("bytes_sent", figures.bytes_sent);
        span.record("bytes_received", figures.bytes_received);
        span.record("failed_reducers", figures.failed_reducers);
        span.record("seconds", figures.seconds.as_secs_f64());
        report.group_size = group.endpoints.len();
        report.group_id = group_id;
        report.all_reduce = figures.seconds;
        report.bytes_sent = figures.bytes_sent;
        report.bytes_received = figures.bytes_received;
        report.failed_reducers = figures.failed_reducers;
        Ok(gathered)
    }

    /// **\[averager\]** leaving a formed group without running its all-reduce: streams for it are
    /// answered `CANCELLED`, and every member is told with a one-message `CANCELLED` stream, so
    /// none of them waits for this peer's parts or replies (hivemind leaves them to their
    /// timeouts, or forever without any).
    fn abandon(&self, group: &FormedGroup) {
        self.router.abandon(group.group_id.clone());
        let members: Vec<String> = group.endpoints.iter().filter(|e| **e != self.endpoint).cloned().collect();
        let (transport, group_id, me) =
            (Arc::clone(&self.transport), group.group_id.clone(), self.endpoint.clone());
        let limit = self.config.request_timeout;
        tokio::spawn(async move {
            let goodbyes = members.into_iter().map(|member| {
                let (transport, group_id, me) = (Arc::clone(&transport), group_id.clone(), me.clone());
                async move {
                    let goodbye = AveragingData {
                        code: MessageCode::Cancelled as i32,
                        group_id,
                        endpoint: me,
                        ..Default::default()
                    };
                    let client = transport.connect(&member).await?;
                    let mut replies =
                        client.rpc_aggregate_part(Box::pin(futures::stream::iter([goodbye]))).await?;
                    let _ = replies.next().await;
                    Ok::<_, Error>(())
                }
            });
            let _ = tokio::time::timeout(limit, futures::future::join_all(goodbyes)).await;
        });
    }

    /// Matchmaking, cancelled by the control or by shutdown (cleanly: followers are disbanded and
    /// the declaration withdrawn).
    async fn find_group(&self, control: &StepControl<Gathered>) -> Result<FormedGroup> {
        let cancel = CancellationToken::new();
        let schedule = control.averager_handle();
        let request = SearchRequest {
            gather: control.data_for_gather().to_vec().into(),
            scheduled_time: Arc::new(move || schedule.scheduled_time()),
            deadline: control.deadline(),
        };
        let search = self.matchmaker.look_for_group(request, &cancel);
        tokio::pin!(search);
        let found = loop {
            tokio::select! {
                found = &mut search => break found?,
                _ = control.cancelled_signal(), if !cancel.is_cancelled() => cancel.cancel(),
                _ = self.shutdown.cancelled(), if !cancel.is_cancelled() => cancel.cancel(),
            }
        };
        found.ok_or_else(|| Error::NoGroup("the step's deadline passed while matchmaking".into()))
    }

    /// protocol 4.1 and 4.8: holds the tensor lock from load balancing until the result is applied
    /// (to a `target`: until the all-reduce ends; the target is called after). With tensors lent
    /// by the step's lender, the all-reduce reads those and the update is written into them.
    async fn all_reduce(
        &self,
        group: AllReduceGroup,
        control: &StepControl<Gathered>,
        io: &StepIo,
        formed: &FormedGroup,
        tally: &Arc<Tally>,
    ) -> Result<AllReduceFigures> {
        let group_id = group.group_id.clone();
        let started = Instant::now();
        // Before the tensor lock: a lender may take its own locks (the Python binding's user
        // lock, which it always takes before this one).
        let lent = match &io.lender {
            Some(lender) => match lender.lend().await {
                Ok(lent) => lent,
                Err(e) => {
                    self.abandon(formed);
                    return Err(e);
                }
            },
            None => None,
        };
        let mut guard = self.tensors.lock().await;
        let checked = self.check_schema(&guard).and_then(|()| match &lent {
            Some(lent) => check_lent(&guard, lent.as_ref()),
            None => Ok(()),
        });
        if let Err(e) = checked {
            self.abandon(formed);
            return Err(e);
        }
        // The round's sender gets the tensors without a copy; they come back when the all-reduce
        // is over (its span reducer, which may outlive it by a reply, needs only their dtypes).
        // Lent tensors leave the averager's own where they are.
        let tensors = Arc::new(match lent {
            Some(lent) => RoundTensors::Lent(lent),
            None => RoundTensors::Owned(std::mem::take(&mut *guard)),
        });
        let lent = matches!(*tensors, RoundTensors::Lent(_));
        let settings = AllReduceSettings {
            part_size_bytes: self.config.part_size_bytes,
            min_vector_size: self.config.min_vector_size,
            sender_timeout: self.config.effective_sender_timeout(),
            reducer_timeout: self.config.effective_reducer_timeout(),
            weight: if self.mode == PeerMode::Aux { 0.0 } else { control.weight() },
        };
        // [averager] without a configured bandwidth, this all-reduce's streams are measured: the
        // parts it sends here, the replies its reducer sends in the service (same tally).
        let meter = self.config.bandwidth.is_none().then(|| Arc::clone(tally.meter()));
        let round = AllReduceRound::new(AllReduceInputs {
            group,
            tensors: Arc::clone(&tensors),
            infos: self.infos.clone(),
            codec: Arc::clone(&self.codec),
            reducer: Arc::clone(&self.reducer),
            transport: Arc::new(
                CountingTransport::new(Arc::clone(&self.transport), Arc::clone(tally)).metered(meter.clone()),
            ),
            registry: self.registry,
            settings,
        })
        .map(|round| round.keep_buffers_in(Arc::clone(&self.scratch)))
        // A target takes deltas: decoding them while the exchange runs keeps that off the end.
        .map(|round| if io.target.is_some() && !lent { round.decode_replies_on_arrival() } else { round });
        let round = match round {
            Ok(round) => round,
            Err(e) => {
                if !lent {
                    // Nothing else held them: the round that would have was never built.
                    *guard = take_back(tensors, Duration::ZERO).await;
                }
                self.abandon(formed);
                return Err(e);
            }
        };
        // [averager] Only a measured estimate is a rate: a configured bandwidth may be in any unit
        // (hivemind's are relative), so it caps nothing.
        let measured = if self.config.bandwidth.is_none() { self.bandwidth.estimate() } else { None };
        self.transport.set_stream_rate_limit(round.stream_rate_limit(measured));
        let span = Arc::clone(round.span());
        self.router.register(&span);
        self.round_tensors.send_replace(Some(Arc::clone(&tensors)));
        control.set_stage(Stage::RunningAllreduce);
        let timeout = self.config.allreduce_timeout;
        let outcome = tokio::select! {
            // Protocol 11.11: a group that used its whole allreduce_timeout is not retried (the
            // step's time is spent), unlike the shorter waits inside it.
            outcome = with_timeout(timeout, round.run(), "the all-reduce") => {
                outcome.map_err(Error::set_persistent).and_then(|o| o)
            }
            _ = self.shutdown.cancelled() => Err(Error::Cancelled("the averager shut down".into())),
        };
        if outcome.is_err() {
            span.cancel();
        }
        self.router.unregister(&group_id);
        self.round_tensors.send_replace(None);
        drop(span);
        if let (Ok(_), Some(meter)) = (&outcome, meter.as_deref()) {
            let sample = meter.sample();
            tracing::debug!(endpoint = %self.endpoint, timelines = %meter.timelines(), ?sample, "bandwidth meter");
            if let Some(sample) = sample {
                self.bandwidth.record(sample);
            }
        }
        let drain_limit = self.config.effective_sender_timeout().unwrap_or(REPLY_DRAIN_LIMIT);
        let outcome = if lent {
            // The averager's own tensors are not this step's: released at once. A failed round
            // writes nothing: the lent tensors go back to their lender once the last holder of a
            // part drops them. A successful one writes only once nothing borrows them.
            drop(guard);
            let outcome = outcome?;
            log_failed_reducers(&outcome);
            let RoundTensors::Lent(mut lent) = reclaim_lent(tensors, drain_limit).await? else {
                return Err(Error::Internal("a lent round's tensors came back owned".into()));
            };
            if self.mode != PeerMode::Aux {
                outcome.deltas.apply(&outcome.plan, lent.as_mut(), self.config.averaging_alpha)?;
            }
            // Dropping the lent tensors here returns them to their lender.
            outcome
        } else {
            let back = take_back(tensors, OWNED_RECLAIM_LIMIT.min(drain_limit)).await;
            self.update_own(guard, back, outcome, io.target.as_ref()).await?
        };
        let failed_reducers = outcome.failed_reducers.len();
        self.after_update();
        let seconds = started.elapsed();
        // **\[averager\]** This peer's reducer may still be streaming its last replies (a slow
        // sender's only leave when its last part arrives). The step returns once the transport
        // has taken them: a caller that shuts down right after its step (a script's last step)
        // would otherwise cut them off, and its groupmates would keep their own values for
        // those parts. They are also this round's traffic for the report. A member that stopped
        // reading is not waited for beyond its `sender_timeout` (or `REPLY_DRAIN_LIMIT`).
        tokio::select! {
            _ = tokio::time::timeout(drain_limit, tally.replies_done()) => {}
            _ = self.shutdown.cancelled() => {}
        }
        Ok(AllReduceFigures {
            seconds,
            bytes_sent: tally.sent(),
            bytes_received: tally.received(),
            failed_reducers,
        })
    }
}

/// How long a step waits for the transport to take the replies its reducer still owes when no
/// `sender_timeout` is set.
const REPLY_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// What one all-reduce cost, for the step's report.
struct AllReduceFigures {
    seconds: Duration,
    bytes_sent: u64,
    bytes_received: u64,
    failed_reducers: usize,
}
