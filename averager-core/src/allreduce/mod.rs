//! SPEC 4 and 5: the all-reduce: load balancing, partitioning, and the part reducer (SPEC 4.6)
//! that every reducer runs under.

mod load_balancing;
mod part_reducer;
mod partition;

pub use load_balancing::{hagenbach_bischoff, load_balance};
pub use part_reducer::PartReducer;
pub use partition::{PartitionPlan, PlannedPart, TensorLayout};
