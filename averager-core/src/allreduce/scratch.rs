//! f32 buffers kept from one all-reduce to the next.
//!
//! A sender collects its deltas in buffers as large as its tensors (`deltas.rs`). Allocating them
//! afresh every round costs more than filling them: the allocator maps new pages for a buffer
//! that large, and the kernel faults in and clears every page on first touch. Profiles of a
//! 64 MB round put a third of the peer's CPU time there. An averager keeps its buffers in one
//! [`ScratchPool`] instead, so from the second round on they are already mapped.
//!
//! The pool belongs to the averager and is freed with it. It holds at most [`MAX_KEPT`] buffers
//! and only what rounds gave back: one round's deltas at most, since rounds of one averager run
//! one at a time.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

/// More buffers than this are dropped rather than kept (a group has at most this many spans
/// in practice; a bigger group simply allocates the rest).
pub(crate) const MAX_KEPT: usize = 64;

/// Buffers given back by finished rounds.
#[derive(Debug, Default)]
pub(crate) struct ScratchPool {
    free: Mutex<Vec<Vec<f32>>>,
}

impl ScratchPool {
    /// A buffer of `len` values for `pool`'s rounds. Its contents are unspecified (stale values
    /// of an earlier round, or zeros): callers track which values they wrote.
    pub(crate) fn take(pool: &Arc<ScratchPool>, len: usize) -> Scratch {
        let reused = {
            let mut free = pool.free.lock().unwrap_or_else(PoisonError::into_inner);
            // The smallest buffer that fits; else the largest, grown (growing a mapped buffer
            // moves its pages without copying them).
            let fits =
                (0..free.len()).filter(|&i| free[i].capacity() >= len).min_by_key(|&i| free[i].capacity());
            let pick = fits.or_else(|| (0..free.len()).max_by_key(|&i| free[i].capacity()));
            pick.map(|i| free.swap_remove(i))
        };
        let mut values = reused.unwrap_or_default();
        if values.len() > len {
            values.truncate(len);
        } else {
            // Exactly: a doubled allocation would be a second tensor's worth of memory.
            values.reserve_exact(len - values.len());
            values.resize(len, 0.0);
        }
        Scratch { values, pool: Some(Arc::clone(pool)) }
    }

    /// How many buffers are kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn give_back(&self, mut values: Vec<f32>) {
        if values.capacity() == 0 {
            return;
        }
        // The whole allocation counts as written (its pages are mapped), so the next taker
        // avoids the zero-fill up to the capacity.
        let capacity = values.capacity();
        if values.len() < capacity {
            values.resize(capacity, 0.0);
        }
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < MAX_KEPT {
            free.push(values);
        }
    }
}

/// A buffer from a [`ScratchPool`], given back when dropped.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    values: Vec<f32>,
    pool: Option<Arc<ScratchPool>>,
}

impl Scratch {
    /// A buffer of `len` zeros that belongs to no pool.
    pub(crate) fn zeroed(len: usize) -> Self {
        Scratch { values: vec![0.0; len], pool: None }
    }
}

impl Deref for Scratch {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.values
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.values));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_reused_without_a_new_allocation() {
        let pool = Arc::new(ScratchPool::default());
        let first = ScratchPool::take(&pool, 1000);
        let address = first.as_ptr();
        assert_eq!(first.len(), 1000);
        drop(first);
        assert_eq!(pool.kept(), 1);
        let second = ScratchPool::take(&pool, 600);
        assert_eq!(second.as_ptr(), address);
        assert_eq!(second.len(), 600);
        assert_eq!(pool.kept(), 0);
    }

    #[test]
    fn the_smallest_fitting_buffer_is_taken_and_a_short_one_grows() {
        let pool = Arc::new(ScratchPool::default());
        let (big, small) = (ScratchPool::take(&pool, 4096), ScratchPool::take(&pool, 256));
        let small_address = small.as_ptr();
        drop((big, small));
        let taken = ScratchPool::take(&pool, 200);
        assert_eq!(taken.as_ptr(), small_address);
        let grown = ScratchPool::take(&pool, 10_000);
        assert_eq!(grown.len(), 10_000);
        assert_eq!(pool.kept(), 0);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_buffers() {
        let pool = Arc::new(ScratchPool::default());
        let buffers: Vec<Scratch> = (0..MAX_KEPT + 5).map(|_| ScratchPool::take(&pool, 8)).collect();
        drop(buffers);
        assert_eq!(pool.kept(), MAX_KEPT);
    }

    #[test]
    fn a_buffer_without_a_pool_is_just_freed() {
        let scratch = Scratch { values: vec![1.0; 4], pool: None };
        assert_eq!(scratch.len(), 4);
        drop(scratch);
    }
}
