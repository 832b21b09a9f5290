//! The tensors the tool averages: reproducible random values per peer, their exact mean, and the
//! tensor file format of `node --tensors` and `demo --processes`.
//!
//! File format: raw little-endian f32, no header; the file is one flat tensor of
//! `len / 4` elements (numpy: `a.astype('<f4').tofile(path)`).

use std::path::Path;

use rand::{Rng, SeedableRng};

use crate::Result;
use crate::failure::{Context, Failure};

/// Peer `index`'s starting values: uniform in [-1, 1) plus `index`, so peers start far apart
/// (the spread across peers is about the peer count) and the mean is known exactly.
///
/// The same `(seed, index)` gives the same values in every process, which lets the demo compute
/// the exact mean of peers that run elsewhere.
pub(crate) fn peer_values(seed: u64, index: usize, floats: usize) -> Vec<f32> {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let offset = index as f32;
    (0..floats).map(|_| rng.random_range(-1.0f32..1.0) + offset).collect()
}

/// The exact mean, in f64, of values added one peer at a time.
pub(crate) struct ExactMean {
    sum: Vec<f64>,
    count: usize,
}

impl ExactMean {
    /// An empty mean over `floats` elements.
    pub(crate) fn new(floats: usize) -> Self {
        ExactMean { sum: vec![0.0; floats], count: 0 }
    }

    /// Adds one peer's values.
    pub(crate) fn add(&mut self, values: &[f32]) {
        for (s, v) in self.sum.iter_mut().zip(values) {
            *s += f64::from(*v);
        }
        self.count += 1;
    }

    /// The mean of everything added.
    pub(crate) fn finish(self) -> Vec<f64> {
        let n = self.count.max(1) as f64;
        self.sum.into_iter().map(|s| s / n).collect()
    }
}

/// Where peers stand relative to each other and to the exact mean.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Agreement {
    /// Max over elements of (max - min across peers).
    pub(crate) spread: f64,
    /// Max over peers and elements of |value - exact mean|.
    pub(crate) deviation: f64,
    /// Root mean square over peers and elements of (value - exact mean).
    pub(crate) rms: f64,
}

/// Accumulates [`Agreement`] one peer at a time, without keeping the peers' tensors.
pub(crate) struct AgreementMeter<'a> {
    mean: &'a [f64],
    lo: Vec<f32>,
    hi: Vec<f32>,
    deviation: f64,
    squares: f64,
    count: usize,
}

impl<'a> AgreementMeter<'a> {
    /// A meter against the exact `mean`.
    pub(crate) fn new(mean: &'a [f64]) -> Self {
        AgreementMeter {
            mean,
            lo: vec![f32::INFINITY; mean.len()],
            hi: vec![f32::NEG_INFINITY; mean.len()],
            deviation: 0.0,
            squares: 0.0,
            count: 0,
        }
    }

    /// Adds one peer's current values.
    ///
    /// # Errors
    /// When the peer holds a different number of elements than the mean.
    pub(crate) fn add(&mut self, values: &[f32]) -> Result<()> {
        if values.len() != self.mean.len() {
            return Err(Failure::new(format!(
                "a peer holds {} elements, expected {}",
                values.len(),
                self.mean.len()
            )));
        }
        let mut deviation = self.deviation;
        let mut squares = 0.0;
        for (((v, m), lo), hi) in values.iter().zip(self.mean).zip(&mut self.lo).zip(&mut self.hi) {
            *lo = lo.min(*v);
            *hi = hi.max(*v);
            let d = (f64::from(*v) - m).abs();
            squares += d * d;
            // A NaN must count as disagreement, not vanish in a comparison.
            if d.is_nan() {
                deviation = f64::INFINITY;
            } else if d > deviation {
                deviation = d;
            }
        }
        self.deviation = deviation;
        // NaN stays NaN here and is caught in `finish`.
        self.squares += squares;
        self.count += values.len();
        Ok(())
    }

    /// The spread and deviation over every peer added.
    pub(crate) fn finish(self) -> Agreement {
        let spread =
            self.lo.iter().zip(&self.hi).map(|(l, h)| f64::from(*h) - f64::from(*l)).fold(0.0, f64::max);
        let rms = (self.squares / self.count.max(1) as f64).sqrt();
        let rms = if rms.is_nan() { f64::INFINITY } else { rms };
        Agreement { spread, deviation: self.deviation, rms }
    }
}

/// Reads a tensor file (raw little-endian f32).
///
/// # Errors
/// When the file cannot be read, is empty, or its length is not a multiple of 4.
pub(crate) fn read_f32_file(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).context(format!("reading {}", path.display()))?;
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return Err(Failure::new(format!(
            "{}: {} bytes is not a non-empty raw little-endian f32 tensor (length must be a multiple of 4)",
            path.display(),
            bytes.len()
        )));
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Writes a tensor file (raw little-endian f32), replacing it atomically so that a reader never
/// sees half a tensor.
///
/// # Errors
/// When the file cannot be written.
pub(crate) fn write_f32_file(path: &Path, values: &[f32]) -> Result<()> {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).context(format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).context(format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_reproducible_and_offset() {
        let a = peer_values(7, 3, 1000);
        assert_eq!(a, peer_values(7, 3, 1000));
        assert_ne!(a, peer_values(7, 4, 1000));
        assert!(a.iter().all(|v| (2.0..4.0).contains(v)));
    }

    #[test]
    fn agreement_measures_spread_and_deviation() {
        let mut mean = ExactMean::new(2);
        mean.add(&[0.0, 2.0]);
        mean.add(&[2.0, 2.0]);
        let mean = mean.finish();
        assert_eq!(mean, vec![1.0, 2.0]);
        let mut meter = AgreementMeter::new(&mean);
        meter.add(&[0.5, 2.0]).unwrap();
        meter.add(&[1.0, 2.25]).unwrap();
        let a = meter.finish();
        assert_eq!((a.spread, a.deviation), (0.5, 0.5));
        let mut meter = AgreementMeter::new(&mean);
        meter.add(&[f32::NAN, 2.0]).unwrap();
        assert!(meter.finish().deviation.is_infinite());
        assert!(AgreementMeter::new(&mean).add(&[1.0]).is_err());
    }

    #[test]
    fn files_round_trip_and_bad_lengths_are_errors() {
        let dir = std::env::temp_dir().join(format!("averager-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.f32");
        write_f32_file(&path, &[1.0, -2.5, 3.25]).unwrap();
        assert_eq!(read_f32_file(&path).unwrap(), vec![1.0, -2.5, 3.25]);
        std::fs::write(&path, [0u8; 5]).unwrap();
        assert!(read_f32_file(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
