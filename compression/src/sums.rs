//! Sums the codecs' statistics need (means, standard deviations), in f64 over f32 values.

/// Independent accumulators: they break the dependency chain of one running sum, so the loops
/// vectorize (and the rounding error grows more slowly).
pub(crate) const LANES: usize = 8;

/// Sum of `values` in f64.
pub(crate) fn sum(values: &[f32]) -> f64 {
    let mut lanes = [0f64; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (acc, &x) in lanes.iter_mut().zip(chunk) {
            *acc += f64::from(x);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    lanes.iter().sum::<f64>() + tail
}

/// Sum of `(x - mean)^2` in f64, with the difference taken in f32 as the codecs' scaling passes
/// take it.
pub(crate) fn centred_sum_of_squares(values: &[f32], mean: f32) -> f64 {
    let mut lanes = [0f64; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (acc, &x) in lanes.iter_mut().zip(chunk) {
            let c = f64::from(x - mean);
            *acc += c * c;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x - mean).powi(2)).sum();
    lanes.iter().sum::<f64>() + tail
}
