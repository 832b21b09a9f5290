//! Hostile-peer tests of a transport: a heap-counting global allocator, to show that what a
//! hostile caller announces is not what the server allocates, an honest echo service that records
//! how its request streams ended, and the hostile-caller suite of the transports that speak the
//! core's frames (QUIC, libp2p) over a raw caller each implements
//! ([`hostile_suite!`](crate::hostile_suite)).

mod echo;
mod heap;
mod suite;

pub use echo::Echo;
pub use heap::{Counting, Watermark};
pub use suite::{
    CAP, End, HostileTarget, LONG_FIRST_REQUEST, MEMORY_BOUND, PATIENCE, RawCaller, RawStream, SERIAL,
    SHORT_FIRST_REQUEST, a_length_prefix_of_4_gib_is_refused_before_anything_is_allocated,
    an_announced_message_costs_only_the_bytes_that_arrive, bounded, framed,
    garbage_gets_clear_errors_and_the_server_keeps_serving, honest_call, read_end,
    silent_calls_are_timed_out_while_an_honest_client_is_served, within,
};
