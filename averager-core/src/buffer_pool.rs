//! Part-sized byte buffers reused from one message to the next, process-wide.
//!
//! Every part of an all-reduce crosses a few byte buffers of its own size: the frame a transport
//! reads it into, the reply a reducer encodes. Allocated fresh each time, a round's worth of them
//! is tens of megabytes that the allocator maps and unmaps again, so the kernel clears a fresh page
//! for every 4 KiB written (a profile of two peers averaging 64 MB each put about a tenth of all
//! CPU time into those page faults). Buffers taken here go back when the last [`Bytes`] sharing
//! them is dropped, and the next message of similar size reuses them.
//!
//! The pool keeps at most [`KEPT_BYTES`] in at most [`KEPT_BUFFERS`] buffers, so what it holds
//! between rounds is bounded; buffers beyond that are freed as usual. Small buffers are not
//! pooled: the allocator serves them from memory it keeps anyway.

use std::sync::{Mutex, PoisonError};

use bytes::{Bytes, BytesMut};

/// The most bytes of capacity the pool keeps.
pub(crate) const KEPT_BYTES: usize = 16 << 20;

/// The most buffers the pool keeps.
pub(crate) const KEPT_BUFFERS: usize = 64;

/// Buffers smaller than this are neither taken from nor given to the pool.
pub(crate) const MIN_POOLED: usize = 64 << 10;

/// A pool of buffers (the process has one, [`take`] and [`share`] use it).
#[derive(Debug)]
pub(crate) struct BufferPool(Mutex<Free>);

/// Free buffers, and their total capacity.
#[derive(Debug)]
struct Free {
    buffers: Vec<BytesMut>,
    bytes: usize,
}

static POOL: BufferPool = BufferPool::new();

/// An empty buffer with room for at least `len` bytes, from the process's pool.
pub(crate) fn take(len: usize) -> BytesMut {
    POOL.take(len)
}

/// `buf`'s bytes, shared; its memory goes back to the process's pool when the last share is
/// dropped.
pub(crate) fn share(buf: BytesMut) -> Bytes {
    POOL.share(buf)
}

impl BufferPool {
    /// An empty pool.
    pub(crate) const fn new() -> Self {
        BufferPool(Mutex::new(Free { buffers: Vec::new(), bytes: 0 }))
    }

    /// An empty buffer with room for at least `len` bytes: the smallest free one that fits, or a
    /// new one of exactly `len`.
    pub(crate) fn take(&self, len: usize) -> BytesMut {
        if len >= MIN_POOLED {
            let mut free = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let best = free
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let buf = free.buffers.swap_remove(i);
                free.bytes -= buf.capacity();
                return buf;
            }
        }
        BytesMut::with_capacity(len)
    }

    /// `buf`'s bytes, shared; its memory comes back here when the last share is dropped.
    pub(crate) fn share(&'static self, buf: BytesMut) -> Bytes {
        if buf.capacity() < MIN_POOLED {
            return buf.freeze();
        }
        Bytes::from_owner(Pooled { buf, pool: self })
    }

    /// Keeps `buf` for a later [`BufferPool::take`] if there is room for it.
    fn give_back(&self, mut buf: BytesMut) {
        buf.clear();
        let capacity = buf.capacity();
        let mut free = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if free.buffers.len() < KEPT_BUFFERS && free.bytes + capacity <= KEPT_BYTES {
            free.bytes += capacity;
            free.buffers.push(buf);
        }
    }
}

/// A shared buffer, which returns to its pool when dropped.
struct Pooled {
    buf: BytesMut,
    pool: &'static BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> &'static BufferPool {
        Box::leak(Box::new(BufferPool::new()))
    }

    #[test]
    fn a_buffer_is_reused_once_its_last_share_is_dropped() {
        let pool = pool();
        let len = MIN_POOLED + 12_345;
        let mut buf = pool.take(len);
        assert!(buf.capacity() >= len);
        buf.extend_from_slice(&vec![7u8; len]);
        let at = buf.as_ptr();
        let shared = pool.share(buf);
        assert_eq!(&shared[..], &vec![7u8; len][..]);
        let slice = shared.slice(10..20);
        drop(shared);
        // The slice still shares the buffer: it must not be handed out yet.
        let other = pool.take(len);
        assert_ne!(other.as_ptr(), at);
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(slice);
        let again = pool.take(len);
        assert_eq!(again.as_ptr(), at);
        assert!(again.is_empty());
    }

    #[test]
    fn the_smallest_fitting_buffer_is_taken() {
        let pool = pool();
        for len in [4 * MIN_POOLED, 2 * MIN_POOLED, 3 * MIN_POOLED] {
            pool.give_back(BytesMut::with_capacity(len));
        }
        assert_eq!(pool.take(2 * MIN_POOLED + 1).capacity(), 3 * MIN_POOLED);
        assert_eq!(pool.take(MIN_POOLED).capacity(), 2 * MIN_POOLED);
        assert!(pool.take(5 * MIN_POOLED).capacity() >= 5 * MIN_POOLED);
    }

    #[test]
    fn small_buffers_are_not_pooled_and_the_pool_is_bounded() {
        let pool = pool();
        let small = pool.take(100);
        assert!(small.capacity() >= 100);
        drop(pool.share(small));
        let len = KEPT_BYTES / 2 + 1;
        let shares: Vec<Bytes> = (0..4)
            .map(|_| {
                let mut buf = pool.take(len);
                buf.resize(len, 1);
                pool.share(buf)
            })
            .collect();
        drop(shares);
        let free = pool.0.lock().unwrap();
        assert_eq!(free.buffers.len(), 1, "only one buffer of over half the limit fits");
        assert!(free.bytes <= KEPT_BYTES);
    }
}
