//! protocol 4: one all-reduce in one formed group, composed of parts with one job each.
//!
//! - the plan ([`AllReducePlan`], `plan.rs`): who reduces which span, in which parts;
//! - the membership tracker ([`Membership`], `membership.rs`): whose streams opened, who left, the
//!   missing-sender watchdog, and (`presence.rs`) the probes of members without a span;
//! - the sender ([`Sender`], `sender.rs`): this peer's parts to every reducer, their replies back
//!   as deltas;
//! - the span reducer ([`SpanReducer`], `span_reducer.rs`): the incoming streams of this peer's
//!   span, reduced by its [`PartReducer`].
//!
//! [`AllReduceRound`] owns them: the router gets the span reducer to hand it incoming streams, and
//! [`AllReduceRound::run`] drives the rest until the sender is done and the span is reduced.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::deltas::Deltas;
use super::group::AllReduceGroup;
use super::membership::Membership;
use super::partition::{PartitionPlan, TensorLayout};
use super::plan::{AllReducePlan, MemberIndex};
use super::round_tensors::RoundTensors;
use super::scratch::ScratchPool;
use super::sender::Sender;
use super::span_reducer::{SpanInputs, SpanReducer};
use crate::compression::{Compression, CompressionInfo};
use crate::error::{Error, Result};
use crate::reduce::{PartReducer, Reducer};
use crate::registry::Registry;
use crate::tensor::DType;
use crate::transport::Transport;

/// The settings of one all-reduce (from the averager's config and the step).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AllReduceSettings {
    /// Parts are at most this many bytes on the wire.
    pub(crate) part_size_bytes: usize,
    /// Members whose share would be under this many elements get none.
    pub(crate) min_vector_size: usize,
    /// A sender silent this long is dropped (`None`: never).
    pub(crate) sender_timeout: Option<Duration>,
    /// A reducer silent this long is dropped (`None`: never).
    pub(crate) reducer_timeout: Option<Duration>,
    /// This peer's averaging weight (ignored for AUX).
    pub(crate) weight: f64,
}

/// Everything a round averages with, besides the members' shares.
pub(crate) struct AllReduceInputs {
    /// The formed group and this peer's place in it.
    pub(crate) group: AllReduceGroup,
    /// This peer's tensors (taken from the averager for the duration of the all-reduce).
    pub(crate) tensors: Arc<RoundTensors>,
    /// `infos[i]` describes `tensors[i]` for the codec.
    pub(crate) infos: Vec<CompressionInfo>,
    /// The codec parts are sent with.
    pub(crate) codec: Arc<dyn Compression>,
    /// The reducer of this peer's span.
    pub(crate) reducer: Arc<dyn Reducer>,
    /// How members reach each other.
    pub(crate) transport: Arc<dyn Transport>,
    /// Where incoming parts' codecs are found.
    pub(crate) registry: &'static Registry,
    /// Part size, timeouts and weight.
    pub(crate) settings: AllReduceSettings,
}

/// What one all-reduce produced for this peer.
#[derive(Debug)]
pub(crate) struct AllReduceOutcome {
    /// The deltas to apply (`tensor += alpha * delta`), one per part that came back.
    pub(crate) deltas: Deltas,
    /// The plan the deltas follow.
    pub(crate) plan: PartitionPlan,
    /// Endpoints of reducers that failed (their remaining parts keep local values).
    pub(crate) failed_reducers: Vec<String>,
}

/// One all-reduce in one group (protocol 4): built by [`AllReduceRound::new`], fed incoming
/// streams through its [`span`](AllReduceRound::span) and driven by [`AllReduceRound::run`].
pub(crate) struct AllReduceRound {
    pub(super) group: Arc<AllReduceGroup>,
    pub(super) plan: Arc<PartitionPlan>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) settings: AllReduceSettings,
    pub(super) membership: Arc<Membership>,
    span: Arc<SpanReducer>,
    sender: Sender,
    cancel: CancellationToken,
    /// The share of this peer's upload its busiest stream carries ([`AllReducePlan::largest_stream_share`]).
    largest_stream_share: Option<f64>,
}

/// How far above its share of the link one stream may send (see
/// [`AllReduceRound::stream_rate_limit`]).
const STREAM_RATE_HEADROOM: f64 = 2.0;

/// [`AllReduceRound::stream_rate_limit`] for a busiest stream carrying `largest_share` of an
/// uplink of `uplink` MB/s.
fn stream_rate_limit(largest_share: Option<f64>, uplink: Option<f64>) -> Option<u64> {
    let fraction = STREAM_RATE_HEADROOM * largest_share?;
    let uplink = uplink.filter(|b| b.is_finite() && *b > 0.0)?;
    (fraction < 1.0).then_some((uplink * 1e6 * fraction) as u64)
}

#[cfg(test)]
#[test]
fn streams_are_capped_at_twice_their_share_unless_that_is_the_whole_link() {
    assert_eq!(stream_rate_limit(Some(1.0 / 6.0), Some(25.0)), Some(8_333_333));
    assert_eq!(stream_rate_limit(Some(0.5), Some(25.0)), None);
    assert_eq!(stream_rate_limit(Some(0.45), Some(25.0)), Some(22_500_000));
    assert_eq!(stream_rate_limit(None, Some(25.0)), None);
    for unknown in [None, Some(0.0), Some(f64::NAN), Some(-1.0)] {
        assert_eq!(stream_rate_limit(Some(0.2), unknown), None);
    }
}

impl AllReduceRound {
    /// Plans the all-reduce ([`AllReducePlan`]: load balancing, protocol 5, and the partition,
    /// protocol 4.3) and builds its parts, with the part reducer of this peer's span when it has
    /// one (protocol 4.6).
    ///
    /// Every member must pass the same shapes, codec ratios and settings (the schema hash
    /// guarantees it), since nothing about the plan is exchanged.
    ///
    /// # Errors
    /// [`Error::Config`] for the refusals of protocol 4.2 or an impossible plan.
    pub(crate) fn new(inputs: AllReduceInputs) -> Result<Self> {
        let layouts = Self::layouts(&inputs);
        let plan = AllReducePlan::new(
            &inputs.group.members,
            &layouts,
            inputs.settings.part_size_bytes,
            inputs.settings.min_vector_size,
        )?;
        Self::with_plan(inputs, plan)
    }

    /// As [`AllReduceRound::new`], with the members' shares given (relative weights, in group
    /// order) instead of load-balanced.
    ///
    /// # Errors
    /// As [`AllReduceRound::new`].
    #[cfg(test)]
    pub(crate) fn with_shares(inputs: AllReduceInputs, shares: Vec<f64>) -> Result<Self> {
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
            .dtypes()
            .into_iter()
            .enumerate()
            .zip(&inputs.infos)
            .map(|((i, dtype), info)| TensorLayout {
                numel: inputs.tensors.get(i).map_or(0, |t| t.numel()),
                bytes_per_value: dtype.size_bytes() as f64 * inputs.codec.estimate_compression_ratio(info),
            })
            .collect()
    }

    fn with_plan(inputs: AllReduceInputs, planned: AllReducePlan) -> Result<Self> {
        let AllReduceInputs { group, tensors, infos, codec, reducer, transport, registry, settings } = inputs;
        if infos.len() != tensors.len() {
            return Err(Error::Config(format!("{} tensors but {} infos", tensors.len(), infos.len())));
        }
        group.validate(settings.sender_timeout, settings.reducer_timeout)?;
        let group = Arc::new(group);
        let shares = planned.shares().to_vec();
        let largest_stream_share = planned.largest_stream_share(MemberIndex(group.me));
        let plan = Arc::new(planned.partition().clone());
        let my_parts = plan.parts_of(group.me).to_vec();
        let dtypes: Vec<DType> = tensors.dtypes();
        let part_reducer = if my_parts.is_empty() {
            None
        } else {
            let specs = my_parts.iter().map(|p| (p.range.len(), dtypes[p.tensor]));
            Some(Arc::new(PartReducer::new(reducer, specs, group.senders().len())?))
        };
        let membership = Arc::new(Membership::new(Arc::clone(&group), part_reducer.clone()));
        let cancel = CancellationToken::new();
        let infos = Arc::new(infos);
        let span = Arc::new(SpanReducer::new(SpanInputs {
            group: Arc::clone(&group),
            parts: my_parts,
            shares: shares.clone(),
            dtypes: dtypes.clone(),
            infos: infos.to_vec(),
            registry,
            sender_timeout: settings.sender_timeout,
            reducer_timeout: settings.reducer_timeout,
            reducer: part_reducer.clone(),
            membership: Arc::clone(&membership),
            cancel: cancel.clone(),
        }));
        let sender = Sender {
            group: Arc::clone(&group),
            plan: Arc::clone(&plan),
            tensors,
            infos,
            codec,
            dtypes,
            registry,
            transport: Arc::clone(&transport),
            sender_timeout: settings.sender_timeout,
            reducer_timeout: settings.reducer_timeout,
            weight: settings.weight,
            delayed: shares[group.me] == 0.0,
            own_span: part_reducer,
            membership: Arc::clone(&membership),
            scratch: Arc::default(),
            keep_encoded: true,
        };
        Ok(AllReduceRound {
            group,
            plan,
            transport,
            settings,
            membership,
            span,
            sender,
            cancel,
            largest_stream_share,
        })
    }

    /// Takes the buffers of this round's deltas from `pool` (and gives them back there), instead
    /// of a pool of the round's own: an averager passes the pool it keeps between rounds.
    pub(crate) fn keep_buffers_in(mut self, pool: Arc<ScratchPool>) -> Self {
        self.sender.scratch = pool;
        self
    }

    /// Decodes every reply on arrival instead of keeping it encoded until it is applied: for a
    /// caller that takes the deltas themselves (`Deltas::update_parts`), which the decoding then
    /// overlaps with the exchange.
    pub(crate) fn decode_replies_on_arrival(mut self) -> Self {
        self.sender.keep_encoded = false;
        self
    }

    /// **\[averager\]** The rate no stream of this round should exceed on an uplink that carries
    /// `uplink` MB/s ([`Transport::set_stream_rate_limit`]): twice the busiest stream's share of
    /// that link, in bytes per second; `None` when that is the whole link or more, or nothing is
    /// known.
    ///
    /// With four equal members every one of a peer's six streams needs a sixth of its uplink, and
    /// each may take a third; on `bench/wan.sh`'s 200 Mbit/s links caps of a fifth to a half
    /// of the link took rounds from 4.7-5.5 s to 4.5-4.8 s (`bench/README.md`). A peer whose
    /// busiest stream needs half its link or more (two members; a slow peer sending most of its
    /// bytes to a fast reducer) is not capped.
    pub(crate) fn stream_rate_limit(&self, uplink: Option<f64>) -> Option<u64> {
        stream_rate_limit(self.largest_stream_share, uplink)
    }

    /// The reducer side, for the router to hand incoming streams to (and to cancel).
    pub(crate) fn span(&self) -> &Arc<SpanReducer> {
        &self.span
    }

    /// Runs this peer's part of the all-reduce: sends its parts to every reducer (itself
    /// included) and collects the deltas, and reduces its own span for the others. Returns when
    /// both are done; the tensors are released when it returns (or is dropped).
    ///
    /// # Errors
    /// [`Error::Cancelled`] when the span reducer was cancelled; [`Error::NoGroup`] when every
    /// other member left. A failed reducer is not an error: its remaining parts simply have no
    /// delta (protocol 4.4).
    pub(crate) async fn run(self) -> Result<AllReduceOutcome> {
        let _watchdog = self.membership.spawn_watchdog(self.settings.sender_timeout);
        let _probes = self.spawn_presence_probes();
        let sent = tokio::select! {
            sent = self.sender.run() => sent?,
            _ = self.cancel.cancelled() => return Err(Error::Cancelled("all-reduce cancelled".into())),
        };
        if let Some(reducer) = self.span.part_reducer() {
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
        // **\[averager\]** when every other member left (cancelled after the group formed), nothing
        // was averaged: that is a failed round, which the step may retry with a new group, not a
        // success with this peer's own values.
        if self.membership.everyone_else_left() {
            return Err(Error::NoGroup("every other member left the group before averaging".into()));
        }
        let plan = Arc::unwrap_or_clone(self.plan);
        Ok(AllReduceOutcome { deltas: sent.deltas, plan, failed_reducers: sent.failed_reducers })
    }
}
