//! glibc's malloc told to keep the memory a round frees for the next round.
//!
//! An all-reduce allocates and frees megabytes per part (the sums a reducer keeps, encoded parts,
//! the frames outside the core's buffer pool). glibc serves blocks above a threshold that it
//! adjusts as it goes with fresh `mmap`s, and gives the top of its heap back to the kernel once
//! more than twice that threshold is free; either way the next round faults every page in again,
//! and the kernel clears each one first. With the threshold fixed at 32 MiB and the heap kept up
//! to 1 GiB, 2 peers averaging 64 MB each over tcp took about half the page faults (160,000 to
//! 78,000 in 22 rounds), and 4 peers used 10-20% less CPU (see the commit that added this). The
//! cost: the process keeps what it used at its peak mapped, which it reaches every round anyway
//! (peak RSS did not change).
//!
//! The process also uses one heap (arena) for every thread. glibc gives each thread that meets
//! contention a heap of its own, and memory freed into one heap serves only the threads that
//! allocate from it: a part's frame is allocated by the worker thread that reads it and freed by
//! whichever reduces it, so each of the runtime's threads kept its own high-water mark of freed
//! part buffers. With 2 or 4 peers averaging 64 MiB of f32 each, peak RSS per peer went from
//! 586-627 MB (2 peers) and 577-615 MB (4 peers) to 564-576 MB, the tensor twice (the tensor
//! and what a round keeps to update it with) plus the process's 21 MB. Throughput and CPU time
//! did not change: blocks of a part's size are few, and the small ones come from each thread's
//! cache without the heap's lock.
//!
//! Other platforms and allocators keep their defaults.

/// Blocks below this come from the heap, whose freed memory is reused, rather than from `mmap`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the top of the heap is kept up to this much.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// One heap for every thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 1;

/// Sets the thresholds and the heap count, before the process starts any thread that allocates.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn keep_freed_memory() {
    // SAFETY: `mallopt` only sets allocator parameters (valid ones here) and takes malloc's own
    // lock; nothing else in the process depends on them.
    let set = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            && libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) == 1
    };
    if !set {
        // The defaults only cost CPU time.
        eprintln!("warning: cannot set malloc's thresholds and heap count; keeping glibc's defaults");
    }
}

/// Nothing to set outside glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn keep_freed_memory() {}
