//! protocol 4 and 5: the all-reduce: load balancing, partitioning, the part reducer (protocol 4.6) that
//! every reducer runs under, the runner of one group (sender and reducer sides), and the router
//! that hands incoming streams to the runner of their group.

mod deltas;
mod group;
mod load_balancing;
mod part_reducer;
mod partition;
mod plan;
mod presence;
mod progress;
mod router;
mod runner;
mod serve;

pub use deltas::Deltas;
pub use group::{AllReduceGroup, GroupMember};
pub use load_balancing::{hagenbach_bischoff, load_balance};
pub use part_reducer::PartReducer;
pub use partition::{PartitionPlan, PlannedPart, TensorLayout};
pub use plan::{AllReducePlan, MemberIndex, PlannedMember, SenderIndex, Traffic};
pub(crate) use progress::progress_interval;
pub use router::RunnerRouter;
pub use runner::{AllReduceInputs, AllReduceOutcome, AllReduceRunner, AllReduceSettings};

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
