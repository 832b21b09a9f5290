//! The DHT records the engine writes (protocol 3.2 declarations, protocol 6.1 donor records), for
//! the tests of other workspace crates that check a DHT backend against the engine's own record
//! format (signed entries, forgery). Not API: hidden from the docs and free to change.

pub use crate::matchmaking::{declare, declared_peers, donors_key, group_key, undeclare};
pub use crate::state::decode_priority;
