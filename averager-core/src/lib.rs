#![doc = include_str!("../README.md")]

// The engine: crate-private, driven by the `Averager`.
pub(crate) mod allreduce;
pub(crate) mod buffer_pool;
pub(crate) mod matchmaking;

pub mod averager;
pub mod compression;
pub mod dht;
pub mod error;
pub mod plan;
pub mod reduce;
pub mod registry;
pub mod state;
pub mod tensor;
pub mod time;
pub mod transport;

#[doc(hidden)]
pub mod records;

pub use averager::{Averager, AveragerConfig, Gathered, Stage, StepControl, StepOptions, StepReport};
pub use averager_proto as proto;
pub use compression::{Compression, CompressionInfo, TensorRole};
pub use dht::Dht;
pub use error::{Error, ErrorKind, Operation, Result};
pub use matchmaking::PeerMode;
pub use reduce::Reducer;
pub use registry::Registry;
pub use tensor::{DType, Tensor, TensorView};
pub use transport::Transport;
