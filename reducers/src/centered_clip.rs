//! CenteredClip (Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust
//! Optimization", 2021): start from a robust center and move it repeatedly by the weighted mean of
//! the contributions' offsets, each offset clipped to a radius `tau`. A liar moves the center by
//! at most `tau` times its weight share per iteration, however large its values.

use averager_core::error::{Error, Result};
use averager_core::reduce::{PartAccumulator, PartSpec, Reducer, ReducerCapabilities};
use averager_core::registry::PluginConfig;
use serde::{Deserialize, Serialize};

use crate::contributions::{Contributions, Keeping};
use crate::median::median;

/// Most iterations a configuration may ask for: each one is a pass over every contribution, all
/// under the part reducer's lock.
pub const MAX_ITERATIONS: usize = 1000;

/// Settings of [`CenteredClipReducer`] (TOML: `reducer_settings = { tau = 0.5, iterations = 10 }`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CenteredClipSettings {
    /// The clipping radius, in the L2 norm of one part (the unit a reducer sees; a span is split
    /// into parts of at most `part_size_bytes`). Offsets longer than this are scaled down to it.
    pub tau: f64,
    /// The most center updates.
    pub iterations: usize,
    /// Stops early once an update moves the center by at most this (L2 norm of one part).
    pub tolerance: f64,
}

impl Default for CenteredClipSettings {
    fn default() -> Self {
        CenteredClipSettings { tau: 1.0, iterations: 20, tolerance: 1e-6 }
    }
}

/// CenteredClip around the coordinate-wise median.
///
/// From the center `v` (initially the weighted coordinate-wise median), each iteration sets
/// `v += sum_i w_i * (x_i - v) * min(1, tau / |x_i - v|) / sum_i w_i`. Each step is a convex
/// combination of `v` and the contributions, so every coordinate stays within the contributions'
/// range. A contribution whose offset is not finite (infinite or NaN values) is left out of that
/// iteration rather than poisoning the center.
#[derive(Debug, Clone, Copy, Default)]
pub struct CenteredClipReducer {
    settings: CenteredClipSettings,
}

impl CenteredClipReducer {
    /// The registry name.
    pub const NAME: &'static str = "centered-clip";

    /// A reducer with these settings.
    ///
    /// # Errors
    /// [`Error::Config`] when `tau` is not finite and positive, `iterations` is 0 or above
    /// [`MAX_ITERATIONS`], or `tolerance` is not finite and `>= 0`.
    pub fn new(settings: CenteredClipSettings) -> Result<Self> {
        let CenteredClipSettings { tau, iterations, tolerance } = settings;
        if !tau.is_finite() || tau <= 0.0 {
            return Err(Error::Config(format!("centered-clip: tau {tau} must be finite and > 0")));
        }
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(Error::Config(format!(
                "centered-clip: iterations {iterations} must be in 1..={MAX_ITERATIONS}"
            )));
        }
        if !tolerance.is_finite() || tolerance < 0.0 {
            return Err(Error::Config(format!(
                "centered-clip: tolerance {tolerance} must be finite and >= 0"
            )));
        }
        Ok(CenteredClipReducer { settings })
    }

    /// Builds the reducer from plugin settings.
    ///
    /// # Errors
    /// [`Error::Config`] for settings that do not parse or break a rule of [`Self::new`].
    pub fn from_config(config: &PluginConfig) -> Result<Self> {
        Self::new(config.parse().map_err(|e| crate::settings_error(Self::NAME, e))?)
    }

    /// The settings in use.
    pub fn settings(&self) -> CenteredClipSettings {
        self.settings
    }
}

impl Reducer for CenteredClipReducer {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn capabilities(&self) -> ReducerCapabilities {
        ReducerCapabilities { weighted_mean: false }
    }

    fn begin(&self, spec: &PartSpec) -> Result<Box<dyn PartAccumulator>> {
        let settings = self.settings;
        let contributions = Contributions::new(spec)?;
        Ok(Box::new(Keeping {
            contributions,
            aggregate: move |c: &Contributions| centered_clip(c, settings),
        }))
    }
}

fn centered_clip(c: &Contributions, s: CenteredClipSettings) -> Vec<f64> {
    let mut center = median(c);
    let mut step = vec![0.0; c.lanes];
    for _ in 0..s.iterations {
        step.iter_mut().for_each(|d| *d = 0.0);
        let mut total = 0.0;
        for (row, &w) in c.rows.iter().zip(&c.weights) {
            let dist = row.iter().zip(&center).map(|(x, v)| (x - v) * (x - v)).sum::<f64>().sqrt();
            if !dist.is_finite() {
                continue;
            }
            total += w;
            let scale = if dist > s.tau { s.tau / dist } else { 1.0 };
            for ((d, x), v) in step.iter_mut().zip(row).zip(&center) {
                *d += w * scale * (x - v);
            }
        }
        if total <= 0.0 {
            break;
        }
        let mut moved = 0.0;
        for (v, d) in center.iter_mut().zip(&step) {
            let delta = d / total;
            *v += delta;
            moved += delta * delta;
        }
        if moved.sqrt() <= s.tolerance {
            break;
        }
    }
    center
}

#[cfg(test)]
mod tests {
    use averager_core::reduce::PartOutcome;
    use averager_core::tensor::{DType, Tensor};

    use super::*;

    fn reduce(reducer: &dyn Reducer, parts: &[&[f32]]) -> Vec<f32> {
        let len = parts[0].len();
        let spec = PartSpec { len, dtype: DType::F32, expected_senders: parts.len() };
        let mut acc = reducer.begin(&spec).unwrap();
        for (s, p) in parts.iter().enumerate() {
            acc.add(s, &Tensor::from_f32(vec![len], p.to_vec()).unwrap().view(), 1.0).unwrap();
        }
        let PartOutcome::Reduced(t) = acc.finish().unwrap() else { panic!("expected a result") };
        t.as_f32().unwrap().to_vec()
    }

    #[test]
    fn one_liar_moves_the_center_by_little() {
        let clip = CenteredClipReducer::new(CenteredClipSettings { tau: 0.5, ..Default::default() }).unwrap();
        let honest: [&[f32]; 4] = [&[1.0, 2.0], &[1.2, 2.2], &[0.8, 1.8], &[1.0, 2.0]];
        let mut all = honest.to_vec();
        all.push(&[1e6, -1e6]);
        let got = reduce(&clip, &all);
        assert!((got[0] - 1.0).abs() < 0.2 && (got[1] - 2.0).abs() < 0.2, "{got:?}");
        // Infinite values are left out instead of turning the result into NaN.
        all.push(&[f32::INFINITY, 0.0]);
        let got = reduce(&clip, &all);
        assert!(got.iter().all(|x| x.is_finite()), "{got:?}");
    }

    #[test]
    fn bad_settings_are_config_errors() {
        for s in [
            CenteredClipSettings { tau: 0.0, ..Default::default() },
            CenteredClipSettings { tau: f64::NAN, ..Default::default() },
            CenteredClipSettings { iterations: 0, ..Default::default() },
            CenteredClipSettings { iterations: MAX_ITERATIONS + 1, ..Default::default() },
            CenteredClipSettings { tolerance: -1.0, ..Default::default() },
        ] {
            assert!(matches!(CenteredClipReducer::new(s), Err(Error::Config(_))), "{s:?}");
        }
        let config = PluginConfig::new(serde_json::json!({ "tau": 2.0, "radius": 1 }));
        assert!(matches!(CenteredClipReducer::from_config(&config), Err(Error::Config(_))));
        let config = PluginConfig::new(serde_json::json!({ "tau": 2.0, "iterations": 5 }));
        let s = CenteredClipReducer::from_config(&config).unwrap().settings();
        assert_eq!((s.tau, s.iterations), (2.0, 5));
    }
}
