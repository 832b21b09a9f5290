//! protocol 6: state sharing. A peer declares itself a state donor in the DHT, serves
//! `rpc_download_state` from an owned snapshot of its state, and a newcomer downloads the state of
//! the best donor it can reach.
//!
//! Public: what a user gives the averager to share, a [`StateSnapshot`] from a [`StateProvider`]
//! ([`FixedState`] is the simplest). The rest is the engine's, driven by the
//! [`Averager`](crate::Averager):
//!
//! - `StateSharing` is the run-time switchboard (`allow_state_sharing`, `state_sharing_priority`)
//!   shared by the averager's API, the donor loop and the RPC handler.
//! - `spawn_donor_loop` keeps this peer's record under `<prefix>.all_averagers` fresh (protocol 6.1).
//! - `serve_download` streams a snapshot taken from the provider (protocol 6.2).
//! - `load_state_from_peers` picks donors by priority and downloads from the first that delivers
//!   (protocol 6.3).
//!
//! The **\[averager\]** fixes of protocol 6 and 11.13 are all here: the donor record is refreshed at half
//! its period (no gaps), the metadata travels in a message of its own (zero-tensor states work), every
//! read of a download has a per-chunk timeout, the snapshot is owned data (an all-reduce cannot
//! change a state mid-stream), and a download buffers at most `max_state_bytes`.

mod assemble;
mod donor;
mod download;
mod serve;
mod sharing;
mod snapshot;

#[cfg(test)]
mod donor_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

#[doc(hidden)]
pub use donor::decode_priority;
pub(crate) use donor::{DonorLoop, spawn_donor_loop};
pub(crate) use download::load_state_from_peers;
pub(crate) use serve::serve_download;
pub(crate) use sharing::StateSharing;
pub use snapshot::{FixedState, StateProvider, StateSnapshot};
