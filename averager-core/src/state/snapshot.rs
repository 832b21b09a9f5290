//! protocol 6.2: what a donor serves, and where it comes from.
//!
//! hivemind hands the live tensors to the stream after releasing the tensor lock, so an all-reduce
//! can change them mid-download (protocol 11.13). Here the provider returns an owned
//! [`StateSnapshot`]; the stream encodes from that copy, so what a downloader receives is one
//! consistent state.

use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use serde::Serialize;

use crate::compression::CompressionInfo;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One consistent copy of a peer's state, as served to a downloader.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateSnapshot {
    /// msgpack bytes of the user's metadata object (protocol 2.4); the default provider sends
    /// `{"group_key": "<bits>"}`. Empty bytes are sent as msgpack `nil`.
    pub metadata: Vec<u8>,
    /// The tensors, in order.
    pub tensors: Vec<Tensor>,
    /// The tensors' compression infos, by position; a missing one defaults to
    /// [`CompressionInfo::for_tensor`] (key = index).
    pub infos: Vec<CompressionInfo>,
}

impl StateSnapshot {
    /// A snapshot of already encoded `metadata` and `tensors`, with default infos.
    pub fn new(metadata: Vec<u8>, tensors: Vec<Tensor>) -> Self {
        StateSnapshot { metadata, tensors, infos: Vec::new() }
    }

    /// A snapshot whose metadata is the msgpack encoding of `metadata` (structs become maps with
    /// field names, as a Python peer expects).
    ///
    /// # Errors
    /// [`Error::Config`] when `metadata` does not serialize to msgpack.
    pub fn with_metadata<T: Serialize + ?Sized>(metadata: &T, tensors: Vec<Tensor>) -> Result<Self> {
        let metadata = rmp_serde::to_vec_named(metadata)
            .map_err(|e| Error::Config(format!("state metadata is not serializable: {e}")))?;
        Ok(Self::new(metadata, tensors))
    }

    /// The same snapshot with per-tensor compression infos.
    pub fn with_infos(mut self, infos: Vec<CompressionInfo>) -> Self {
        self.infos = infos;
        self
    }
}

/// Where a donor's state comes from (hivemind's overridable `get_current_state`).
///
/// # Behavior
/// Every call returns an owned snapshot that no later update changes: an implementation that
/// reads shared tensors copies them while holding its own lock (the averager's tensor lock), and
/// releases the lock before returning. The download stream is then encoded from the copy, so an
/// all-reduce that runs while a newcomer downloads cannot tear the state. An `Err` refuses this
/// download (the caller sees the call fail and tries another donor).
#[async_trait]
pub trait StateProvider: Send + Sync + 'static {
    /// A consistent copy of the state to serve now.
    async fn current_state(&self) -> Result<StateSnapshot>;
}

/// A provider holding one snapshot that can be replaced at any time; each download gets a clone
/// of the snapshot current when it starts.
#[derive(Debug, Default)]
pub struct FixedState {
    snapshot: Mutex<StateSnapshot>,
}

impl FixedState {
    /// A provider serving `snapshot`.
    pub fn new(snapshot: StateSnapshot) -> Self {
        FixedState { snapshot: Mutex::new(snapshot) }
    }

    /// Serves `snapshot` from now on (downloads under way keep the one they started with).
    pub fn replace(&self, snapshot: StateSnapshot) {
        *self.lock() = snapshot;
    }

    /// A clone of the snapshot served now.
    pub fn get(&self) -> StateSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateSnapshot> {
        // Replacing the snapshot is a single assignment, so a poisoned lock still holds a whole one.
        self.snapshot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl StateProvider for FixedState {
    async fn current_state(&self) -> Result<StateSnapshot> {
        Ok(self.get())
    }
}
