//! The Reducer trait: how the parts of one span from several senders become one result.
//!
//! A reducer only does the arithmetic of one part; the async bookkeeping of protocol 4.6 (which part
//! is current, who is expected, banned senders) lives in
//! [`PartReducer`], written once for every reducer.
//!
//! Both kinds of aggregator fit: the weighted mean folds each contribution in as it arrives
//! ([`PartAccumulator::add`] does the work, [`PartAccumulator::finish`] divides), while robust
//! aggregators (trimmed mean, coordinate median, CenteredClip) keep the contributions and do the
//! work in `finish`.

mod mean;
mod part_reducer;

use std::fmt::Debug;

pub use mean::MeanReducer;
pub use part_reducer::PartReducer;

use crate::compression::{Compression, WireTensor};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, TensorView};

/// What one part looks like, and how many senders are expected to contribute to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSpec {
    /// Number of elements in the part.
    pub len: usize,
    /// Element type of the part (the tensor's dtype).
    pub dtype: DType,
    /// Senders expected to contribute (some may fail and never do).
    pub expected_senders: usize,
}

impl PartSpec {
    /// The f64 lanes one contribution occupies (two per complex64 element).
    ///
    /// # Errors
    /// [`Error::Reducer`] when the count overflows.
    pub fn lanes(&self) -> Result<usize> {
        let lanes = if self.dtype == DType::Complex64 { self.len.checked_mul(2) } else { Some(self.len) };
        lanes.ok_or_else(|| Error::Reducer(format!("part of {} elements is too large", self.len)))
    }

    /// Checks one contribution against the spec, as every [`PartAccumulator::add`] must.
    ///
    /// # Errors
    /// [`Error::Reducer`] naming `sender` for a weight that is not finite and `>= 0`, or a part
    /// whose length or dtype differs from the spec.
    pub fn check(&self, sender: usize, part: &TensorView<'_>, weight: f64) -> Result<()> {
        if !weight.is_finite() || weight < 0.0 {
            return Err(Error::Reducer(format!("sender {sender}: weight {weight} is not finite and >= 0")));
        }
        if part.numel() != self.len || part.dtype() != self.dtype {
            return Err(Error::Reducer(format!(
                "sender {sender}: part of {} x {} where {} x {} was expected",
                part.numel(),
                part.dtype(),
                self.len,
                self.dtype
            )));
        }
        Ok(())
    }
}

/// The result of reducing one part.
#[derive(Debug, Clone, PartialEq)]
pub enum PartOutcome {
    /// The aggregated values, with the part's dtype and a flat shape `[len]`.
    Reduced(Tensor),
    /// Nothing to aggregate (no contribution, or zero total weight): every peer keeps its own
    /// values for this part (protocol 4.6 **\[averager\]**: 0/0 means "keep local values").
    KeepLocal,
}

/// What a reducer offers, so the conformance suite checks the right property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReducerCapabilities {
    /// The result is exactly `sum(w * x) / sum(w)` (up to floating-point rounding).
    pub weighted_mean: bool,
}

/// Aggregates one part from several senders.
///
/// Synchronous on purpose: reduction is arithmetic on memory the caller already holds. The caller
/// ([`PartReducer`]) runs it on the task that submitted the part, under the lock that keeps
/// contributions in order, so each call is bounded by the part size (`part_size_bytes`) rather
/// than moved off the async executor.
pub trait Reducer: Send + Sync + Debug + 'static {
    /// The stable registry name (e.g. `"mean"`).
    fn name(&self) -> &str;

    /// What the reducer offers.
    fn capabilities(&self) -> ReducerCapabilities;

    /// Starts reducing one part.
    ///
    /// # Behavior
    /// Returns a fresh accumulator for a part shaped like `spec`; errors for dtypes the reducer
    /// cannot handle.
    fn begin(&self, spec: &PartSpec) -> Result<Box<dyn PartAccumulator>>;

    /// Whether this reducer's accumulators implement [`PartAccumulator::add_encoded`] natively
    /// (decoding a received part straight into their state).
    ///
    /// # Behavior
    /// `false` by default: the caller then decodes each received part itself, outside the part
    /// reducer's lock, and hands it to [`PartAccumulator::add`], as for a reducer written before
    /// `add_encoded` existed. Return `true` only when `add_encoded` is overridden.
    fn adds_encoded(&self) -> bool {
        false
    }
}

/// The state of one part being reduced.
pub trait PartAccumulator: Send {
    /// Adds sender `sender`'s contribution with `weight` (finite, `>= 0`).
    ///
    /// # Behavior
    /// A part whose length or dtype differs from the spec, or a non-finite or negative weight, is
    /// an [`Error::Reducer`] and leaves the accumulator unchanged.
    fn add(&mut self, sender: usize, part: &TensorView<'_>, weight: f64) -> Result<()>;

    /// Adds sender `sender`'s contribution as it came off the wire: `message`, encoded by
    /// `codec`, with `weight` (finite, `>= 0`).
    ///
    /// # Behavior
    /// The same contribution as [`add`](Self::add) of `codec.extract(message)`, and the same
    /// refusals; a message the codec cannot decode is that codec's
    /// [`Error::Codec`]. On any error the accumulator is unchanged. The
    /// default does exactly that (decode into a fresh tensor, then `add`); a reducer that can
    /// decode straight into its state (the weighted mean uses
    /// [`Compression::decode_add_into`]) overrides it and says so in
    /// [`Reducer::adds_encoded`].
    fn add_encoded(
        &mut self,
        sender: usize,
        codec: &dyn Compression,
        message: &WireTensor,
        weight: f64,
    ) -> Result<()> {
        let part = codec.extract(message)?;
        self.add(sender, &part.view(), weight)
    }

    /// Finishes the part.
    ///
    /// # Behavior
    /// [`PartOutcome::KeepLocal`] when nothing (or only zero weight) was added.
    fn finish(self: Box<Self>) -> Result<PartOutcome>;
}
