//! The part reducer's bookkeeping under its mutex: which part is current, who contributed and
//! who is banned, and the completed parts' results until every contributor has taken its copy.

use std::collections::HashMap;
use std::sync::Arc;

use super::PartReducer;
use crate::error::{Error, Result};
use crate::reduce::{PartAccumulator, PartOutcome};

/// Why the reducer stopped taking parts.
#[derive(Debug)]
pub(super) enum Ended {
    /// Every part was reduced.
    Completed,
    /// [`PartReducer::finish`] was called before the last part completed.
    Cancelled,
    /// The reducer could not start a part; no later part can be reduced.
    Failed(Error),
}

impl Ended {
    pub(super) fn error(&self) -> Error {
        match self {
            Ended::Completed => Error::Reducer("finished".into()),
            Ended::Cancelled => Error::Cancelled("the part reducer was finished".into()),
            Ended::Failed(e) => e.clone(),
        }
    }
}

/// A completed part's result, kept until every sender that contributed has taken it.
pub(super) struct Slot {
    pub(super) outcome: Result<Arc<PartOutcome>>,
    pub(super) unclaimed: usize,
}

pub(super) struct State {
    pub(super) ended: Option<Ended>,
    /// Index of the part being reduced (`parts.len()` once completed).
    pub(super) current: usize,
    pub(super) accumulator: Option<Box<dyn PartAccumulator>>,
    /// Per sender: whether it contributed to the current part.
    pub(super) contributed: Vec<bool>,
    pub(super) num_contributed: usize,
    /// Senders that still count for the current part: not banned, or banned after contributing.
    pub(super) expected: usize,
    /// Contributors to the current part that stopped waiting for its result.
    pub(super) abandoned: usize,
    pub(super) banned: Vec<bool>,
    pub(super) num_banned: usize,
    pub(super) results: HashMap<usize, Slot>,
    /// Contributions accumulated so far, over all parts.
    pub(super) received: usize,
}

impl State {
    /// Takes one copy of part `k`'s result, dropping the slot when the last contributor has it.
    pub(super) fn claim(&mut self, k: usize) -> Option<Result<Arc<PartOutcome>>> {
        let slot = self.results.get_mut(&k)?;
        let outcome = slot.outcome.clone();
        slot.unclaimed = slot.unclaimed.saturating_sub(1);
        if slot.unclaimed == 0 {
            self.results.remove(&k);
        }
        Some(outcome)
    }
}

/// A contributor's right to one copy of its part's result, given back if it stops waiting.
pub(super) struct Claim<'a> {
    pub(super) reducer: &'a PartReducer,
    pub(super) part: usize,
    pub(super) claimed: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.claimed {
            return;
        }
        let mut st = self.reducer.lock();
        if st.claim(self.part).is_none() && st.ended.is_none() && st.current == self.part {
            // The part is still open: take this contributor out of the copies it will keep.
            st.abandoned += 1;
        }
    }
}
