//! protocol 4 and 5: the all-reduce of one formed group, and the router that hands incoming
//! streams to the round of their group.
//!
//! Crate-private: the averager's round loop drives it. A round ([`AllReduceRound`], `round.rs`)
//! is made of parts with one job each: the pure plan (`plan.rs`, `load_balancing.rs`,
//! `partition.rs`), the membership tracker (`membership.rs`, `presence.rs`), the sender
//! (`sender.rs`) and the span reducer (`span_reducer.rs`). The plan's value types are public
//! through [`crate::plan`], and the part reducer every reducer runs under through
//! [`crate::reduce`].

mod borrowed_part;
mod deltas;
mod group;
mod load_balancing;
mod membership;
mod partition;
mod plan;
mod presence;
mod progress;
mod round;
mod round_tensors;
mod router;
mod scratch;
mod sender;
mod span_reducer;
mod tasks;

pub(crate) use group::AllReduceGroup;
pub use group::GroupMember;
pub use load_balancing::load_balance;
pub use partition::{PartitionPlan, PlannedPart, TensorLayout};
pub use plan::{AllReducePlan, MemberIndex, PlannedMember, SenderIndex, Traffic};
pub(crate) use progress::progress_interval;
pub(crate) use round::{AllReduceInputs, AllReduceOutcome, AllReduceRound, AllReduceSettings};
pub(crate) use round_tensors::RoundTensors;
pub(crate) use router::RoundRouter;
pub(crate) use scratch::ScratchPool;

#[cfg(test)]
mod buffer_tests;
#[cfg(test)]
mod cascade_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod pipeline_tests;
#[cfg(test)]
mod roundtrip_tests;
#[cfg(test)]
mod tests;
