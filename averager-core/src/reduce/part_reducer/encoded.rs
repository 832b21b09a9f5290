//! Contributions that arrive encoded: a received part goes into the accumulator without a
//! decoded copy per sender when the reducer can take it that way ([`Reducer::adds_encoded`]).
//!
//! [`Reducer::adds_encoded`]: crate::reduce::Reducer::adds_encoded

use std::sync::Arc;

use super::PartReducer;
use crate::compression::{Compression, WireTensor, wire_dtype, wire_shape};
use crate::error::Result;
use crate::reduce::PartOutcome;

impl PartReducer {
    /// As [`accumulate`](Self::accumulate), for a part still encoded as `message` by `codec`.
    ///
    /// # Behavior
    /// When the reducer [adds encoded parts](crate::reduce::Reducer::adds_encoded), the message
    /// is decoded straight into the part's accumulator
    /// ([`PartAccumulator::add_encoded`](crate::reduce::PartAccumulator::add_encoded)), under
    /// the lock that keeps contributions in order; otherwise it is decoded here first, outside
    /// that lock, and added as by `accumulate`, so reducers written before `add_encoded` work
    /// unchanged.
    ///
    /// # Errors
    /// As [`accumulate`](Self::accumulate), with the message's shape and dtype read from its
    /// header; a message the codec cannot decode is the codec's
    /// [`Error::Codec`](crate::Error::Codec), and its sender is banned like any refused part.
    pub async fn accumulate_encoded(
        &self,
        sender: usize,
        part_index: usize,
        codec: &dyn Compression,
        message: &WireTensor,
        weight: f64,
    ) -> Result<Arc<PartOutcome>> {
        if !self.reducer.adds_encoded() {
            let part = codec.extract(message).inspect_err(|e| self.refuse(sender, &e.to_string()))?;
            return self.accumulate(sender, part_index, &part.view(), weight).await;
        }
        // Subscribe before the first look at the state, so no wake-up can fall in between.
        let rx = self.changed.subscribe();
        let header = wire_shape(codec.name(), message)
            .and_then(|(_, numel)| Ok((numel, wire_dtype(codec.name(), message)?)))
            .inspect_err(|e| self.refuse(sender, &e.to_string()))?;
        self.check(sender, part_index, header, weight)?;
        self.contribute(sender, part_index, rx, |acc| acc.add_encoded(sender, codec, message, weight)).await
    }
}
