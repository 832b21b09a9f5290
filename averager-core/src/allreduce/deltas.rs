//! protocol 4.4 and 4.8: the deltas a sender collects (`average - local` per part) and their
//! application.
//!
//! A reply to an f32 part is kept as it came (its header checked): [`Deltas::apply`] decodes it
//! straight into the tensor, `tensor += alpha * delta` in the one pass
//! ([`Compression::decode_add_into`]), so no buffer holds the decoded deltas and no pass fills
//! one; an encoded reply is also smaller than its f32 delta when the codec compresses. A sender
//! that needs the deltas themselves (for a result target) decodes each reply on arrival instead,
//! into one buffer per reducer's span, taken when its first delta is written. The span this peer
//! reduces itself has no buffer at all: its parts' averages are kept, and each delta is taken
//! against the tensor as it is applied.
//!
//! **\[averager\]** a reply kept encoded whose body then turns out undecodable (its header was
//! fine) leaves its part at the local values, as if its reducer had failed, and is logged.
//!
//! **\[averager\]** all deltas are applied together after the all-reduce, never tensor by tensor
//! while it runs, so a failure midway cannot leave a half-updated set of tensors.

use std::sync::Arc;

use super::partition::{PartitionPlan, PlannedPart};
use super::round_tensors::UpdateTensors;
use super::scratch::{Scratch, ScratchPool};
use crate::averager::UpdatePart;
use crate::compression::{Compression, WireTensor};
use crate::error::{Error, Result};
use crate::reduce::PartOutcome;
use crate::tensor::{DType, Tensor, TensorData, TensorSlice};

/// The deltas of a whole plan: one [`SpanDeltas`] per reducer that answered.
///
/// A part without a delta (its reducer failed, or this peer sent nothing) keeps the local values.
#[derive(Debug, Default)]
pub(crate) struct Deltas {
    num_parts: usize,
    spans: Vec<SpanDeltas>,
}

/// The deltas of the consecutive plan parts of one reducer's span.
#[derive(Debug)]
pub(crate) struct SpanDeltas {
    /// Plan index of the span's first part.
    first: usize,
    slots: Vec<Slot>,
    /// The deltas of the span's f32 parts decoded, back to back (unspecified until a reply
    /// fills them in: only parts marked [`Received::InValues`] are read); empty until the first
    /// is written.
    values: Scratch,
    /// The length `values` takes.
    f32_len: usize,
    /// Where `values` comes from (`None`: a plain allocation).
    pool: Option<Arc<ScratchPool>>,
}

/// Where one part's delta is.
#[derive(Debug)]
struct Slot {
    len: usize,
    dtype: DType,
    /// Offset of the part in [`SpanDeltas::values`] (f32 parts only).
    offset: usize,
    received: Received,
}

#[derive(Debug)]
enum Received {
    Nothing,
    /// In [`SpanDeltas::values`].
    InValues,
    /// An f32 reply as it came, header checked, decoded when applied.
    Encoded {
        message: WireTensor,
        codec: Arc<dyn Compression>,
    },
    /// A part of another dtype, or one given whole.
    Owned(TensorData),
    /// The f32 average of a part this peer reduced itself. Its delta, `average - local`, is
    /// taken when it is applied, from the tensor itself (the round's tensors do not change until
    /// then): no buffer holds the deltas of this peer's own span, and no pass computes them.
    Average(Arc<PartOutcome>),
}

/// One part's contribution to the tensors, as [`Deltas::apply`] sees it.
enum Update<'a> {
    /// `tensor += alpha * delta`.
    Delta(TensorSlice<'a>),
    /// `tensor += alpha * (average - tensor)`, in f32.
    Average(&'a [f32]),
    /// `tensor += alpha * decoded`, in f32, for a reply of `len` values.
    Encoded { message: &'a WireTensor, codec: &'a dyn Compression, len: usize },
}

impl Update<'_> {
    fn len(&self) -> usize {
        match self {
            Update::Delta(delta) => delta.len(),
            Update::Average(average) => average.len(),
            Update::Encoded { len, .. } => *len,
        }
    }

    fn dtype(&self) -> DType {
        match self {
            Update::Delta(delta) => delta.dtype(),
            Update::Average(_) | Update::Encoded { .. } => DType::F32,
        }
    }
}

impl Deltas {
    /// No delta for any of `num_parts` parts.
    pub(crate) fn new(num_parts: usize) -> Self {
        Deltas { num_parts, spans: Vec::new() }
    }

    /// Takes the deltas of one span.
    ///
    /// # Errors
    /// [`Error::Internal`] for a span that reaches outside the plan.
    pub(crate) fn add(&mut self, span: SpanDeltas) -> Result<()> {
        if span.first + span.slots.len() > self.num_parts {
            return Err(Error::Internal(format!(
                "parts {}..{} are not all in the plan of {}",
                span.first,
                span.first + span.slots.len(),
                self.num_parts
            )));
        }
        self.spans.push(span);
        Ok(())
    }

    /// Records the delta of plan part `index`, given whole.
    ///
    /// # Errors
    /// [`Error::Internal`] for an index outside the plan.
    #[cfg(test)]
    pub(crate) fn set(&mut self, index: usize, delta: TensorData) -> Result<()> {
        let mut span = SpanDeltas {
            first: index,
            slots: Vec::new(),
            values: Scratch::default(),
            f32_len: 0,
            pool: None,
        };
        span.slots.push(Slot {
            len: delta.len(),
            dtype: delta.dtype(),
            offset: 0,
            received: Received::Nothing,
        });
        span.set(0, delta)?;
        self.add(span)
    }

    /// Turns the averages of this peer's own span into deltas, `average - local` with `local`
    /// from `tensors` (the round's inputs, unchanged), and decodes the replies kept encoded, for a
    /// caller that needs every update as a delta ([`Deltas::update_parts`]). This costs the
    /// buffers the spans otherwise do without. A reply that does not decode is dropped (its part
    /// keeps its local values).
    ///
    /// # Errors
    /// [`Error::Internal`] for a part outside the plan; [`Error::Tensor`] when a tensor does not
    /// hold its part.
    pub(crate) fn take_differences(&mut self, plan: &PartitionPlan, tensors: &[Tensor]) -> Result<()> {
        for span in &mut self.spans {
            span.decode_kept()?;
            for k in 0..span.slots.len() {
                let Received::Average(outcome) = &span.slots[k].received else { continue };
                let outcome = Arc::clone(outcome);
                let PartOutcome::Reduced(average) = outcome.as_ref() else {
                    span.slots[k].received = Received::Nothing;
                    continue;
                };
                let index = span.first + k;
                let part = planned(plan, index)?;
                let tensor = tensors
                    .get(part.tensor)
                    .ok_or_else(|| Error::Tensor(format!("no tensor {} for part {index}", part.tensor)))?;
                let local = tensor.flat_view(part.range.clone())?;
                // Into the span's buffer (from the averager's pool), not a fresh one per part.
                span.set_difference(k, average.view().data(), local.data())?;
            }
        }
        Ok(())
    }

    /// Every update received, with its plan index.
    fn received(&self) -> impl Iterator<Item = (usize, Update<'_>)> {
        self.spans.iter().flat_map(SpanDeltas::received)
    }

    /// `tensor += alpha * delta` for every part that has a delta (protocol 4.8).
    ///
    /// # Errors
    /// [`Error::Tensor`] when a delta does not fit its part (dtype or length); nothing is applied
    /// then, because every delta is checked first.
    pub(crate) fn apply<T: UpdateTensors + ?Sized>(
        &self,
        plan: &PartitionPlan,
        tensors: &mut T,
        alpha: f64,
    ) -> Result<()> {
        for (index, update) in self.received() {
            let part = planned(plan, index)?;
            let dtype = tensors
                .dtype_of(part.tensor)
                .ok_or_else(|| Error::Tensor(format!("no tensor {} to apply a delta to", part.tensor)))?;
            if update.len() != part.range.len() || update.dtype() != dtype {
                return Err(Error::Tensor(format!(
                    "delta of {} x {} does not fit part {:?} of a {} tensor",
                    update.len(),
                    update.dtype(),
                    part.range,
                    dtype
                )));
            }
        }
        for (index, update) in self.received() {
            let part = &plan.parts()[index];
            let mut tensor = tensors
                .slice_mut(part.tensor)
                .ok_or_else(|| Error::Internal(format!("tensor {} went away", part.tensor)))?;
            match update {
                Update::Delta(delta) => tensor.add_scaled_at(part.range.start, delta, alpha)?,
                Update::Encoded { message, codec, .. } => {
                    let local = &mut tensor.into_f32()?[part.range.clone()];
                    // The same f32 arithmetic as a delta decoded first and added after; on an
                    // error nothing was added.
                    if let Err(error) = codec.decode_add_into(message, alpha as f32, local) {
                        tracing::warn!(part = index, %error, "a reply does not decode; its part keeps local values");
                    }
                }
                Update::Average(average) => {
                    let a32 = alpha as f32;
                    let local = &mut tensor.into_f32()?[part.range.clone()];
                    // The same f32 arithmetic as a delta computed first and added after.
                    for (x, &a) in local.iter_mut().zip(average) {
                        *x += a32 * (a - *x);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Deltas {
    /// Every delta received, as an update part (tensor, flat offset, delta) checked against the
    /// plan (part index and length): what a step hands to a
    /// [`ResultTarget`](crate::averager::ResultTarget), which the caller checks against the
    /// tensors' dtypes and sizes.
    ///
    /// # Errors
    /// [`Error::Internal`] for a delta outside the plan; [`Error::Tensor`] for one whose length
    /// is not its part's.
    pub(crate) fn update_parts<'a>(&'a self, plan: &PartitionPlan) -> Result<Vec<UpdatePart<'a>>> {
        self.received()
            .map(|(index, update)| {
                let Update::Delta(delta) = update else {
                    return Err(Error::Internal(format!(
                        "part {index} is an average, not a delta: call take_differences first"
                    )));
                };
                let part = planned(plan, index)?;
                if delta.len() != part.range.len() {
                    return Err(Error::Tensor(format!(
                        "delta of {} x {} does not fit part {:?}",
                        delta.len(),
                        delta.dtype(),
                        part.range
                    )));
                }
                Ok(UpdatePart { tensor: part.tensor, offset: part.range.start, delta })
            })
            .collect()
    }
}

impl SpanDeltas {
    /// Room for the deltas of `parts`, plan parts `first..` of one span, whose tensors have
    /// `dtypes`. An f32 buffer, if one is needed, comes from `pool` (see `scratch.rs`) and goes
    /// back to it when the deltas are dropped. Replies kept encoded need none, and neither does
    /// the span this peer reduces itself, whose averages are kept as they are
    /// ([`SpanDeltas::set_average`]) unless a caller needs them as deltas
    /// ([`Deltas::take_differences`]).
    ///
    /// # Errors
    /// [`Error::Internal`] when a part names a tensor without a dtype.
    pub(crate) fn new(
        first: usize,
        parts: &[PlannedPart],
        dtypes: &[DType],
        pool: &Arc<ScratchPool>,
    ) -> Result<Self> {
        let (slots, f32_len) = Self::slots(parts, dtypes)?;
        Ok(SpanDeltas { first, slots, values: Scratch::default(), f32_len, pool: Some(Arc::clone(pool)) })
    }

    /// The slots of `parts`, with each f32 part's offset in a buffer of all of them, and that
    /// buffer's length.
    fn slots(parts: &[PlannedPart], dtypes: &[DType]) -> Result<(Vec<Slot>, usize)> {
        let mut slots = Vec::with_capacity(parts.len());
        let mut f32_len = 0usize;
        for part in parts {
            let dtype = *dtypes
                .get(part.tensor)
                .ok_or_else(|| Error::Internal(format!("no dtype for tensor {}", part.tensor)))?;
            let len = part.range.len();
            slots.push(Slot { len, dtype, offset: f32_len, received: Received::Nothing });
            if dtype == DType::F32 {
                f32_len += len;
            }
        }
        Ok((slots, f32_len))
    }

    /// Takes the reply `message`, encoded by `codec`, as the delta of the span's part `k`: an
    /// f32 one kept as it is when `keep_encoded` (its header must match the part: the caller
    /// checked it), else decoded straight into its place in the span's buffer; other dtypes
    /// decode into a tensor.
    ///
    /// # Errors
    /// The codec's error; [`Error::Internal`] for a part outside the span. A part whose decode
    /// fails has no delta, and so keeps its local values.
    pub(crate) fn decode(
        &mut self,
        k: usize,
        codec: &Arc<dyn Compression>,
        message: WireTensor,
        keep_encoded: bool,
    ) -> Result<()> {
        let slot = self.slots.get(k).ok_or_else(|| Error::Internal(format!("no part {k} in the span")))?;
        let (dtype, range) = (slot.dtype, slot.offset..slot.offset + slot.len);
        self.slots[k].received = Received::Nothing;
        let received = if dtype == DType::F32 && keep_encoded {
            Received::Encoded { message, codec: Arc::clone(codec) }
        } else if dtype == DType::F32 {
            codec.decode_into(&message, &mut self.values_mut()?[range])?;
            Received::InValues
        } else {
            let delta = codec.extract(&message)?.into_parts().1;
            check_fits(&delta.as_slice(), &self.slots[k])?;
            Received::Owned(delta)
        };
        self.slots[k].received = received;
        Ok(())
    }

    /// The span's f32 delta buffer, taken when first needed.
    fn values_mut(&mut self) -> Result<&mut [f32]> {
        if self.values.len() != self.f32_len {
            self.values = match &self.pool {
                Some(pool) => ScratchPool::take(pool, self.f32_len),
                None => Scratch::zeroed(self.f32_len),
            };
        }
        Ok(&mut self.values)
    }

    /// Decodes every reply kept encoded into the span's buffer; one that does not decode is
    /// dropped (its part keeps local values).
    fn decode_kept(&mut self) -> Result<()> {
        for k in 0..self.slots.len() {
            let slot = &mut self.slots[k];
            let Received::Encoded { .. } = slot.received else { continue };
            let Received::Encoded { message, codec } =
                std::mem::replace(&mut slot.received, Received::Nothing)
            else {
                continue;
            };
            let range = slot.offset..slot.offset + slot.len;
            match codec.decode_into(&message, &mut self.values_mut()?[range]) {
                Ok(()) => self.slots[k].received = Received::InValues,
                Err(error) => {
                    tracing::warn!(part = self.first + k, %error, "a reply does not decode; its part keeps local values");
                }
            }
        }
        Ok(())
    }

    /// Records the average of the span's f32 part `k`, reduced by this peer: its delta is taken
    /// against the tensor when applied. Other dtypes' deltas are computed now, from `local`.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the average or `local` does not fit the part.
    pub(crate) fn set_average(
        &mut self,
        k: usize,
        outcome: &Arc<PartOutcome>,
        local: TensorSlice<'_>,
    ) -> Result<()> {
        let PartOutcome::Reduced(average) = outcome.as_ref() else {
            return Ok(());
        };
        let slot = self.slots.get(k).ok_or_else(|| Error::Internal(format!("no part {k} in the span")))?;
        if slot.dtype != DType::F32 {
            return self.set_difference(k, average.view().data(), local);
        }
        check_fits(&average.view().data(), slot)?;
        check_fits(&local, slot)?;
        self.slots[k].received = Received::Average(Arc::clone(outcome));
        Ok(())
    }

    /// Records `average - local` as the delta of the span's part `k`.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the two differ in dtype or length, or do not fit the part.
    pub(crate) fn set_difference(
        &mut self,
        k: usize,
        average: TensorSlice<'_>,
        local: TensorSlice<'_>,
    ) -> Result<()> {
        let slot = self.slots.get(k).ok_or_else(|| Error::Internal(format!("no part {k} in the span")))?;
        check_fits(&average, slot)?;
        check_fits(&local, slot)?;
        let range = slot.offset..slot.offset + slot.len;
        self.slots[k].received = if let (TensorSlice::F32(a), TensorSlice::F32(l)) = (average, local) {
            let out = &mut self.values_mut()?[range];
            for ((o, a), l) in out.iter_mut().zip(a).zip(l) {
                *o = a - l;
            }
            Received::InValues
        } else {
            Received::Owned(average.difference(local)?)
        };
        Ok(())
    }

    /// Records `delta`, given whole, for the span's part `k`.
    #[cfg(test)]
    fn set(&mut self, k: usize, delta: TensorData) -> Result<()> {
        let slot =
            self.slots.get_mut(k).ok_or_else(|| Error::Internal(format!("no part {k} in the span")))?;
        slot.received = Received::Owned(delta);
        Ok(())
    }

    /// Whether part `k` of the span has a delta.
    #[cfg(test)]
    pub(crate) fn has_delta(&self, k: usize) -> bool {
        self.slots.get(k).is_some_and(|s| !matches!(s.received, Received::Nothing))
    }

    /// Every update received, with its plan index.
    fn received(&self) -> impl Iterator<Item = (usize, Update<'_>)> {
        self.slots.iter().enumerate().filter_map(move |(k, slot)| {
            let update = match &slot.received {
                Received::Nothing => return None,
                Received::InValues => {
                    Update::Delta(TensorSlice::F32(&self.values[slot.offset..slot.offset + slot.len]))
                }
                Received::Owned(data) => Update::Delta(data.as_slice()),
                Received::Encoded { message, codec } => {
                    Update::Encoded { message, codec: codec.as_ref(), len: slot.len }
                }
                Received::Average(outcome) => match outcome.as_ref() {
                    PartOutcome::Reduced(average) => Update::Average(average.as_f32().ok()?),
                    PartOutcome::KeepLocal => return None,
                },
            };
            Some((self.first + k, update))
        })
    }
}

/// Part `index` of `plan`.
fn planned(plan: &PartitionPlan, index: usize) -> Result<&PlannedPart> {
    plan.parts().get(index).ok_or_else(|| Error::Internal(format!("no part {index} in the plan")))
}

/// Checks that `delta` has the length and dtype of the part in `slot`.
fn check_fits(delta: &TensorSlice<'_>, slot: &Slot) -> Result<()> {
    if delta.len() != slot.len || delta.dtype() != slot.dtype {
        return Err(Error::Tensor(format!(
            "delta of {} x {} for a part of {} x {}",
            delta.len(),
            delta.dtype(),
            slot.len,
            slot.dtype
        )));
    }
    Ok(())
}
