//! Helpers for hostile-peer tests of a transport: a heap-counting global allocator, to show that
//! what a hostile caller announces is not what the server allocates, and an honest echo service
//! that records how its request streams ended.

mod echo;
mod heap;

pub use echo::Echo;
pub use heap::{Counting, Watermark};
