//! End-to-end averaging scenarios (protocol 10.2 scenarios 4, 5, 6, 7, 10, 12 and 13) over any
//! transport and DHT: whole averagers matchmaking, averaging, gathering, triggering, cancelling
//! and sharing state, on the backends under test.
//!
//! A backend pair runs the whole suite with one line: a [`NetworkFactory`] built by [`network`]
//! from a DHT closure (`n` handles onto one fresh swarm) and a transport closure (one transport per
//! peer):
//!
//! ```
//! # use std::sync::Arc;
//! # use averager_core::transport::{MemoryTransport as MyTransport, Transport};
//! use averager_conformance::scenarios::{memory_dhts, network};
//!
//! averager_conformance::scenario_suite!(my_transport, network(memory_dhts, |_| async {
//!     Arc::new(MyTransport::default()) as Arc<dyn Transport>
//! }));
//! # fn main() {}
//! ```
//!
//! A DHT backend whose nodes start asynchronously and must join one swarm does that in its DHT
//! closure (start node 0, then `n - 1` nodes bootstrapped from it, and return them once they see
//! each other); peer `i` uses handle `i`.
//!
//! Every case builds its own peers under fixed prefixes, so a backend must not share records or
//! endpoints between the networks of two cases (each `#[test]` has its own runtime and calls the
//! factory afresh). Steps are bounded by [`STEP_WAIT`] and stage waits by ten seconds, inside the
//! crate's [`CASE_TIMEOUT`](crate::CASE_TIMEOUT); no case sleeps to synchronise, it polls.
//!
//! Scenarios 12 and 13 dial every peer from every other before they start: their sub-second
//! `request_timeout`s come from hivemind, whose peers are already connected through the DHT's
//! libp2p node, and a cold handshake on a loaded machine (a QUIC one takes over 0.3 s there) would
//! otherwise decide the case. The other scenarios dial inside matchmaking, within the default 3 s.
//!
//! In process a case takes a fraction of a second; over sockets a few seconds. Scenario 4 is one
//! case per mix of modes, so that a failure names its mix and the mixes run in parallel.

mod averaging;
mod control;
mod network;
mod state;

pub use self::averaging::{
    allgather, allreduce_grid, allreduce_once, allreduce_once_0_clients_0_aux,
    allreduce_once_0_clients_1_aux, allreduce_once_0_clients_2_aux, allreduce_once_0_clients_3_aux,
    allreduce_once_0_clients_4_aux, allreduce_once_1_clients_0_aux, allreduce_once_1_clients_1_aux,
    allreduce_once_1_clients_2_aux, allreduce_once_1_clients_3_aux, allreduce_once_2_clients_0_aux,
    allreduce_once_2_clients_1_aux, allreduce_once_2_clients_2_aux, allreduce_weighted,
};
pub use self::control::{
    averaging_cancel, averaging_cancel_with_target_2, averaging_cancel_without_target, averaging_trigger,
};
pub use self::network::{Network, NetworkFactory, STEP_WAIT, memory_dhts, network};
pub use self::state::load_state_from_peers;

use crate::Outcome;

/// Lists every case once, for [`scenario_suite!`](crate::scenario_suite) and [`run_all`]: it calls
/// the named macro of this crate with the given arguments followed by `[case, ...]`.
#[doc(hidden)]
#[macro_export]
macro_rules! __scenario_cases {
    ($callback:ident ! { $($args:tt)* }) => {
        $crate::$callback! { $($args)* [
            allreduce_once_0_clients_0_aux,
            allreduce_once_0_clients_1_aux,
            allreduce_once_0_clients_2_aux,
            allreduce_once_1_clients_0_aux,
            allreduce_once_1_clients_1_aux,
            allreduce_once_1_clients_2_aux,
            allreduce_once_2_clients_0_aux,
            allreduce_once_2_clients_1_aux,
            allreduce_once_2_clients_2_aux,
            allreduce_once_0_clients_4_aux,
            allreduce_once_1_clients_3_aux,
            allreduce_once_0_clients_3_aux,
            allreduce_weighted,
            allreduce_grid,
            allgather,
            load_state_from_peers,
            averaging_trigger,
            averaging_cancel_without_target,
            averaging_cancel_with_target_2,
        ] }
    };
}

/// Expands to a module `$name` with one `#[test]` per end-to-end scenario.
///
/// `$factory` is an expression evaluated inside each test, in the test module (which imports
/// `super::*`), giving a [`NetworkFactory`]:
///
/// ```
/// use std::sync::Arc;
/// use averager_conformance::scenarios::{memory_dhts, network};
/// use averager_core::transport::{MemoryTransport, Transport};
///
/// averager_conformance::scenario_suite!(memory, network(memory_dhts, |_| async {
///     Arc::new(MemoryTransport::default()) as Arc<dyn Transport>
/// }));
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! scenario_suite {
    ($name:ident, $factory:expr $(,)?) => {
        $crate::__scenario_cases! { __suite_tests! { scenarios, $name, $factory, [], } }
    };
}

/// Runs every case in turn on the current runtime, returning each case's name and outcome.
pub async fn run_all(factory: &impl NetworkFactory) -> Vec<(&'static str, Outcome)> {
    crate::__scenario_cases! { __suite_run_all! { scenarios, factory, } }
}
