//! The `Averager` (hivemind's `DecentralizedAverager`): its configuration today; the step API,
//! state sharing and shutdown next.

mod config;
mod schema;

pub use config::{AveragerConfig, AveragerConfigBuilder, CodecSpec, TensorSettings};
pub use schema::schema_hash;
