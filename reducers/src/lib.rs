//! Byzantine-robust reducers for averager, registered as plugins: `centered-clip`,
//! `trimmed-mean` and `median`.
//!
//! The weighted mean (the core's `mean`) lets one peer that sends huge values move every
//! member's result arbitrarily far. These reducers bound what a minority of senders can do to the
//! span a peer reduces, at some cost in precision when nobody lies. Choose one by name in
//! `AveragerConfig::reducer`, with its settings in `AveragerConfig::reducer_settings`:
//!
//! ```toml
//! reducer = "centered-clip"
//! reducer_settings = { tau = 1.0, iterations = 20 }
//! ```
//!
//! Each robust reducer must see every sender's contribution to a part before it can reduce it
//! (none is a running sum), so it keeps them: memory per part is the part size times the number
//! of senders. A robust reducer only protects the span its own peer reduces: a member that lies
//! as a *reducer* (returns garbage for its own span) is not caught here.

mod centered_clip;
mod contributions;
mod median;
mod trimmed;

use std::sync::Arc;

use averager_core::Error;

pub use centered_clip::{CenteredClipReducer, CenteredClipSettings, MAX_ITERATIONS};
pub use median::MedianReducer;
pub use trimmed::{TrimmedMeanReducer, TrimmedMeanSettings};

averager_core::register_reducer!(
    CenteredClipReducer::NAME,
    "CenteredClip: iterative clipping of offsets around the coordinate-wise median (settings: tau, iterations, tolerance)",
    |config| Ok(Arc::new(CenteredClipReducer::from_config(config)?))
);

averager_core::register_reducer!(
    TrimmedMeanReducer::NAME,
    "coordinate-wise trimmed mean: drops the `trim` smallest and largest values (settings: trim)",
    |config| Ok(Arc::new(TrimmedMeanReducer::from_config(config)?))
);

averager_core::register_reducer!(MedianReducer::NAME, "coordinate-wise weighted median", |_| Ok(Arc::new(
    MedianReducer
)));

/// Names the reducer whose settings did not parse (serde's message names only the field).
fn settings_error(reducer: &str, e: Error) -> Error {
    match e {
        Error::Config(msg) => Error::Config(format!("{reducer} settings: {msg}")),
        other => other,
    }
}
