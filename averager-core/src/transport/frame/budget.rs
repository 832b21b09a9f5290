//! Room claimed for a whole frame before it arrives, out of a byte budget shared by a transport's
//! readers: a frame read into one buffer of exactly its size is never reallocated (and copied) as
//! it grows, while a peer that announces large frames and sends nothing ties up at most the
//! budget, never more memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A byte budget for frames read at their announced length (see [`FrameRead::claim`]).
///
/// [`FrameRead::claim`]: super::FrameRead::claim
#[derive(Debug, Clone)]
pub struct ReadBudget(Arc<Semaphore>);

/// Bytes of a [`ReadBudget`] claimed for one frame; they return to the budget on drop.
#[derive(Debug)]
pub struct Claim {
    _permit: OwnedSemaphorePermit,
}

impl ReadBudget {
    /// A budget of `bytes` (at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(bytes: usize) -> Self {
        ReadBudget(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Claims `len` bytes at once, if that many are unclaimed.
    pub fn claim(&self, len: usize) -> Option<Claim> {
        let len = u32::try_from(len).ok()?;
        self.0.clone().try_acquire_many_owned(len).ok().map(|permit| Claim { _permit: permit })
    }
}
