//! SPEC 3: matchmaking: group keys, the Moshpit bucket rule, and (next) the leader/follower
//! state machine.

mod gather;
mod group_key;
mod python_random;

pub use gather::{GatherPayload, PeerMode};
pub use group_key::{donors_key, group_key, next_group_bits, validate_bits, validate_prefix};
