//! protocol 3: matchmaking: group keys and declarations in the DHT, the leader/follower state
//! machine, join validation, assembly, disbanding, and the Moshpit bucket rule.

mod declarations;
mod follower;
mod gather;
mod group_key;
mod leader;
mod python_random;
mod queue;
mod search;
mod state;

pub use declarations::{declare, declared_peers, undeclare};
pub(crate) use gather::GatherPayload;
pub use gather::PeerMode;
pub use group_key::{donors_key, group_key};
pub(crate) use group_key::{validate_bits, validate_prefix};
pub(crate) use search::SearchRequest;
pub(crate) use state::{FormedGroup, Matchmaker, MatchmakingConfig};

#[cfg(test)]
mod tests;
