//! The `Averager` (hivemind's `DecentralizedAverager`): its configuration today; the step API,
//! state sharing and shutdown next.

mod config;

pub use config::{AveragerConfig, AveragerConfigBuilder, CodecSpec, TensorSettings};
