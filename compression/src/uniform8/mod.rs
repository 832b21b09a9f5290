//! protocol 7.2 UNIFORM_8BIT: 256 equal-width bins spanning ±3 standard deviations around the mean,
//! each decoded as the mean of the values it holds.
//!
//! Buffer: `K (i64 LE, = 256) || codebook (f32 LE x K) || q (u8 x numel)`.

use averager_core::compression::{CompressionType, ErrorBound};
use averager_core::tensor::DType;

use crate::codebook::{self, BINS, BinSums, Emit};
use crate::sums::{moments, sum};

mod histogram;

use histogram::Histogram;

/// The bin that holds the mean (hivemind's zero point, `n_bins / 2`).
const ZERO_POINT: f32 = 128.0;

/// The quantized range, in standard deviations (hivemind's `RANGE_IN_SIGMAS`).
const RANGE_IN_SIGMAS: f64 = 6.0;

/// Elements per step of the quantizing pass: bin indices of a chunk are computed in a loop the
/// compiler can vectorize, then accumulated into the codebook sums (or the histogram).
const CHUNK: usize = 1024;

/// 8-bit uniform quantization with a codebook of bin means: 1 byte per value plus a 1032-byte
/// header.
///
/// Accepts every floating dtype (bfloat16 included) of any rank. Bins are `6 sigma / 256` wide,
/// centred on the mean; values beyond ±3 sigma go to the outermost bins. Each bin decodes to the
/// mean of the values in it, so the error is at most a bin's width inside the range.
///
/// From 16384 values on, the means of the 254 inner bins come from a histogram of 16 sub-cells
/// per bin (sub-cell centres times counts) and lie within half a sub-cell, `width / 32`, of the
/// exact means; the two outer bins' are exact. This adds at most `width^2 / 1024` (5.4e-7
/// sigma^2) to the mean squared error, and saves the per-value f64 sums that were half of the
/// encoder's time. A value within about 2^-16 of a bin's width from a border may take either
/// neighbouring bin.
///
/// \[averager\] A tensor without spread (constant, one element, or with a non-finite variance)
/// puts every value in bin 128, which then decodes to the tensor's mean: constants round-trip
/// exactly instead of depending on a division by zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct Uniform8Bit;

impl Uniform8Bit {
    /// The registry name.
    pub const NAME: &'static str = "uniform8";

    /// The declared mean squared error on standard-normal data (`error_bound` below says where
    /// it comes from).
    const MSE: f64 = 1e-2;

    /// protocol 10.5 scenario 23's bound, which holds for large tensors such as its
    /// `randn(128, 128, 64)` but not for every small one.
    #[cfg(test)]
    const SCENARIO_23_MSE: f64 = 8e-4;
}

/// Adding 1.5 * 2^23 to an f32 of magnitude below 2^22 rounds it to an integer in the current
/// rounding mode, which is nearest-even, and leaves that integer in the low mantissa bits:
/// `round_ties_even` without a libm call or a float-to-int conversion, so the quantizing loop
/// vectorizes on CPUs without SSE4.1's `roundps`.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// The bit pattern of [`ROUND_MAGIC`]: subtracting it from `(y + ROUND_MAGIC).to_bits()` gives
/// `round_ties_even(y)` as an integer.
const ROUND_MAGIC_BITS: i32 = 0x4b40_0000;

/// `clamp(round_half_even(y) + 128, 0, 255)`, with NaN in bin 0.
#[inline(always)]
fn bin_of(y: f32) -> u8 {
    // Clamping to [-128, 127] first keeps the bins: values beyond round to the end bins anyway.
    // `max` and `min` drop a NaN operand, so NaN becomes -128 (bin 0); not `clamp`, which keeps
    // NaN. The rounded value then needs no second clamp, so the loop stays branch-free and
    // vectorizes.
    #[allow(clippy::manual_clamp)]
    let y = y.max(-128.0).min(127.0);
    let rounded = ((y + ROUND_MAGIC).to_bits() as i32).wrapping_sub(ROUND_MAGIC_BITS);
    (rounded + ZERO_POINT as i32) as u8
}

/// `q[i] = bin_of((values[i] - mu) * inverse)` for one chunk: a loop without bounds checks or
/// branches, which the compiler vectorizes.
fn bins(values: &[f32], mu: f32, inverse: f32, q: &mut [u8]) {
    for (b, &x) in q.iter_mut().zip(values) {
        *b = bin_of((x - mu) * inverse);
    }
}

/// Hands the bin index of every value to `emit` and returns the codebook: the mean of the values
/// in each bin (within half a sub-cell from [`histogram::MIN_VALUES`] values on), 0 for empty
/// bins.
fn quantize(values: &[f32], emit: &mut Emit<'_>) -> [f32; BINS] {
    let n = values.len();
    // One pass for the mean and the spread: the tensor is read from memory twice in all
    // (statistics, then bins), not three times.
    let (total, centred) = moments(values);
    let mu = (total / n as f64) as f32;
    let sigma = (centred / (n as f64 - 1.0)).sqrt();
    let scale = (RANGE_IN_SIGMAS * sigma / BINS as f64) as f32;
    // A multiplication instead of a division per value; the bins may differ from dividing for
    // values within an ulp of a border, which no decoder can tell.
    let inverse = 1.0 / scale;

    let mut sums = BinSums::new();
    let mut q = [0u8; CHUNK];
    let spread = scale > 0.0 && scale.is_finite() && inverse.is_finite();
    // Small tensors keep exact means: the histogram's fixed cost would not pay off there.
    let histogram = spread && n >= histogram::MIN_VALUES && u32::try_from(n).is_ok();
    if let Some(mut histogram) = histogram.then(|| Histogram::new(mu, inverse)).flatten() {
        for src in values.chunks(CHUNK) {
            let q = &mut q[..src.len()];
            histogram.add(src, q);
            emit(q);
        }
        return histogram.means();
    }
    if spread {
        for src in values.chunks(CHUNK) {
            let q = &mut q[..src.len()];
            bins(src, mu, inverse, q);
            sums.add(src, q);
            emit(q);
        }
    } else {
        // [averager]: no spread to quantize (constant, `numel <= 1`, or non-finite values).
        q.fill(ZERO_POINT as u8);
        for src in values.chunks(CHUNK) {
            emit(&q[..src.len()]);
        }
        sums.set(ZERO_POINT as usize, sum(values), n as u64);
    }

    sums.means()
}

codebook::codebook_compression!(Uniform8Bit, CompressionType::Uniform8bit, quantize, {
    /// 1e-2 for every dtype: it holds for all but about one in 200000 standard-normal samples of
    /// any size, the small parts of an all-reduce included.
    ///
    /// On standard-normal data the bins are 6/256 wide, so rounding inside ±3 sigma costs about
    /// `width^2 / 12 = 4.6e-5`; the 0.27% of values beyond ±3 sigma share the two outer bins and add
    /// about 2.1e-4, so large tensors land near 2.6e-4, inside scenario 23's 8e-4. Small inputs
    /// vary more, because one far outlier sharing an outer bin dominates: in 400000 seeded samples
    /// per size, 1.5% of 1000-element inputs exceed 8e-4 (the largest 5.4e-3), and 64- to
    /// 256-element inputs reach 1.6e-2 about once per 200000 samples. Inputs of up to ten
    /// elements are never clipped (Samuelson's inequality keeps them within ±3 sigma).
    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::MeanSquared(Self::MSE)
    }
});

#[cfg(test)]
mod tests;
