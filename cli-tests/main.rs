//! End-to-end tests of the `averager` binary: each runs the built program as a person or a script
//! would, with small tensors so the suite stays quick on a 2-core machine.

mod bench;
mod common;
mod demo;
mod errors;
#[cfg(feature = "kad")]
mod metrics;
#[cfg(feature = "kad")]
mod node;
mod plan;
#[cfg(feature = "kad")]
mod processes;
mod sim;
