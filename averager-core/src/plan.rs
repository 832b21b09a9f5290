//! protocol 4.3 and 5: the all-reduce plan as a value: who reduces which span, the parts each
//! member sends, the bytes each member sends and receives, and the predicted time.
//!
//! Every member of a group computes the same plan from the same inputs (the schema hash makes sure
//! of it), so nothing of it travels on the wire. [`AllReducePlan`] can be built and printed without
//! running anything (`averager plan` does), which makes it the place to look when asking why a
//! member reduces what it does.

pub use crate::allreduce::{
    AllReducePlan, GroupMember, MemberIndex, PartitionPlan, PlannedMember, PlannedPart, SenderIndex,
    TensorLayout, Traffic, load_balance,
};
