//! protocol 4 and 5: the all-reduce: load balancing, partitioning, the runner of one group (sender
//! and reducer sides), and the router that hands incoming streams to the runner of their group.
//!
//! Crate-private: the averager's round loop drives it. The plan's value types are public through
//! [`crate::plan`], and the part reducer every reducer runs under through [`crate::reduce`].

mod deltas;
mod group;
mod load_balancing;
mod partition;
mod plan;
mod presence;
mod progress;
mod router;
mod runner;
mod serve;

pub(crate) use group::AllReduceGroup;
pub use group::GroupMember;
pub use partition::{PartitionPlan, PlannedPart, TensorLayout};
pub use plan::{AllReducePlan, MemberIndex, PlannedMember, SenderIndex, Traffic};
pub(crate) use progress::progress_interval;
pub(crate) use router::RunnerRouter;
pub(crate) use runner::{AllReduceInputs, AllReduceRunner, AllReduceSettings};

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
