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

/// Values per f32 block of [`moments`]: 128 per lane.
const MOMENT_BLOCK: usize = 1024;

/// Independent f32 accumulators of [`moments`]: two vectors of four for each sum, enough to hide the
/// latency of each addition.
const MOMENT_LANES: usize = 8;

/// Values averaged for the shift of [`moments`]: enough to land within a few standard deviations
/// of the mean, few enough to cost nothing.
const SHIFT_SAMPLE: usize = 64;

/// The sum of `values` and their sum of squares around their mean, in f64, from ONE pass: sums
/// of `x - shift` and of its square, where `shift` is the mean of a few strided values. With the
/// shift near the mean, `sum (x - shift)^2 - (sum (x - shift))^2 / n` loses only a few of f64's
/// digits, where the textbook `sum x^2 - n mean^2` would lose all of f32's for data far from 0.
///
/// Non-finite values make the sum of squares non-finite (callers treat that as "no spread").
pub(crate) fn moments(values: &[f32]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let step = n.div_ceil(SHIFT_SAMPLE);
    let picked = values.iter().step_by(step);
    let shift = (picked.clone().map(|&x| f64::from(x)).sum::<f64>() / picked.count() as f64) as f32;
    let (mut s1, mut s2) = (0f64, 0f64);
    for block in values.chunks(MOMENT_BLOCK) {
        // f32 within a block, so the loops run four values per instruction (f64 would be two,
        // and the widening keeps the compiler from vectorizing at all); f64 across blocks, so
        // the rounding error stays that of a 128-value sum per lane. Two loops over the block
        // (which stays in L1) rather than one: with both sums in one loop the compiler pairs
        // each lane's two sums in a vector instead of four lanes of one sum.
        let mut a = [0f32; MOMENT_LANES];
        let mut b = [0f32; MOMENT_LANES];
        let (chunks, rest) = block.as_chunks::<MOMENT_LANES>();
        for chunk in chunks {
            for i in 0..MOMENT_LANES {
                a[i] += chunk[i] - shift;
            }
        }
        for chunk in chunks {
            for i in 0..MOMENT_LANES {
                let d = chunk[i] - shift;
                b[i] += d * d;
            }
        }
        for &x in rest {
            let d = x - shift;
            a[0] += d;
            b[0] += d * d;
        }
        s1 += a.iter().map(|&v| f64::from(v)).sum::<f64>();
        s2 += b.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    let total = f64::from(shift) * n as f64 + s1;
    // Rounding may leave a hair below zero for data without spread.
    let centred = (s2 - s1 * s1 / n as f64).max(0.0);
    if centred.is_finite() && centred > 0.0 {
        (total, centred)
    } else {
        // f32 squares overflow beyond about 1.8e19 from the shift and vanish below 1e-23, and a
        // constant tensor has no spread at all: two f64 passes settle these rare cases.
        let total = sum(values);
        (total, centred_sum_of_squares(values, (total / n as f64) as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_moments_match_two_passes_far_from_zero() {
        // Values around 1e4 with a spread of about 1e-2: the naive one-pass formula loses it all.
        let values: Vec<f32> = (0..100_003).map(|i| 1e4 + ((i * 7919) % 1000) as f32 * 1e-5 - 5e-3).collect();
        let (total, centred) = moments(&values);
        let reference_total = sum(&values);
        let mean = reference_total / values.len() as f64;
        let reference_centred: f64 = values.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum();
        assert!(
            (total - reference_total).abs() <= 1e-12 * reference_total.abs(),
            "{total} {reference_total}"
        );
        // f32 sums of 64 values per lane: a few parts in a million.
        assert!(
            (centred - reference_centred).abs() <= 1e-5 * reference_centred,
            "{centred} {reference_centred}"
        );
        assert_eq!(moments(&[2.5; 17]), (42.5, 0.0));
        // Beyond f32's squares: the f64 passes take over.
        let (total, centred) = moments(&[-1e30, 1e30]);
        assert!(total == 0.0 && (centred / 2e60 - 1.0).abs() < 1e-6, "{total} {centred}");
        assert_eq!(moments(&[]), (0.0, 0.0));
        assert!(!moments(&[1.0, f32::NAN]).1.is_finite());
    }
}
