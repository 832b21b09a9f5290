//! The `Averager` (hivemind's `DecentralizedAverager`): its configuration today; the step API,
//! state sharing and shutdown next.

mod config;
mod schema;
mod step_control;
mod step_options;

pub use config::{AveragerConfig, AveragerConfigBuilder, CodecSpec, TensorSettings};
pub use schema::schema_hash;
pub use step_control::{Stage, StepControl};
pub use step_options::StepOptions;
