//! The coordinate-wise trimmed mean: up to `trim` liars per side cannot move a coordinate beyond
//! the range of the honest values, and the rest are averaged, so it stays close to the mean's
//! precision when nobody lies.

use averager_core::error::Result;
use averager_core::reduce::{PartAccumulator, PartSpec, Reducer, ReducerCapabilities};
use averager_core::registry::PluginConfig;
use serde::{Deserialize, Serialize};

use crate::contributions::{Contributions, Keeping, weighted_median};

/// Settings of [`TrimmedMeanReducer`] (TOML: `reducer_settings = { trim = 2 }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrimmedMeanSettings {
    /// Contributions dropped per coordinate at each end (the `trim` smallest and the `trim`
    /// largest).
    pub trim: usize,
}

impl Default for TrimmedMeanSettings {
    fn default() -> Self {
        TrimmedMeanSettings { trim: 1 }
    }
}

/// Per coordinate, drops the `trim` smallest and `trim` largest contributions and takes the
/// weighted mean of the others.
///
/// Trimming counts contributions, not weight: a liar cannot escape it by claiming a small weight.
/// When fewer than `2 * trim + 1` contributions arrive (a small group, or failed senders), the
/// trim shrinks to keep the middle one or two, that is, the result becomes the median.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrimmedMeanReducer {
    settings: TrimmedMeanSettings,
}

impl TrimmedMeanReducer {
    /// The registry name.
    pub const NAME: &'static str = "trimmed-mean";

    /// A reducer with these settings.
    pub fn new(settings: TrimmedMeanSettings) -> Self {
        TrimmedMeanReducer { settings }
    }

    /// Builds the reducer from plugin settings.
    ///
    /// # Errors
    /// [`Error::Config`](averager_core::Error::Config) for settings that do not parse.
    pub fn from_config(config: &PluginConfig) -> Result<Self> {
        let settings: TrimmedMeanSettings =
            config.parse().map_err(|e| crate::settings_error(Self::NAME, e))?;
        Ok(Self::new(settings))
    }
}

impl Reducer for TrimmedMeanReducer {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn capabilities(&self) -> ReducerCapabilities {
        ReducerCapabilities { weighted_mean: false }
    }

    fn begin(&self, spec: &PartSpec) -> Result<Box<dyn PartAccumulator>> {
        let trim = self.settings.trim;
        let contributions = Contributions::new(spec)?;
        Ok(Box::new(Keeping { contributions, aggregate: move |c: &Contributions| trimmed_mean(c, trim) }))
    }
}

fn trimmed_mean(c: &Contributions, trim: usize) -> Vec<f64> {
    let mut column = Vec::with_capacity(c.rows.len());
    (0..c.lanes)
        .map(|lane| {
            c.sorted_column(lane, &mut column);
            // Keep at least one value (two for an even count, like the median).
            let k = trim.min(column.len().saturating_sub(1) / 2);
            let kept = &column[k..column.len() - k];
            let total: f64 = kept.iter().map(|&(_, w)| w).sum();
            if total > 0.0 {
                let sum: f64 = kept.iter().map(|&(x, w)| w * (x / total)).sum();
                // Rounding can leave the kept range by an ulp; the promise is the range.
                let (lo, hi) = (kept[0].0, kept[kept.len() - 1].0);
                sum.clamp(lo.min(hi), hi.max(lo))
            } else {
                weighted_median(kept)
            }
        })
        .collect()
}
