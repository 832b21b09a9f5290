//! Seeded inputs for the compression suite: random tensors of every dtype, constants, and the
//! shapes the cases use.

use averager_core::compression::Compression;
use averager_core::tensor::{DType, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The base seed of every case; a case mixes in its own name, so adding a case does not change the
/// inputs of another one and a failure reproduces run after run.
pub const SEED: u64 = 0x5eed_c0de_5eed_c0de;

/// The shape of the round-trip tensors (protocol 10.5, `serialize_tensor_properties`).
pub const ROUND_TRIP_SHAPE: [usize; 2] = [123, 45];

/// The shape of the tensors whose buffers the hostile-input cases truncate and mutate: small, so
/// every strict prefix of most encodings can be tried.
pub const HOSTILE_SHAPE: [usize; 2] = [16, 8];

/// Empty shapes that must round-trip to empty tensors.
pub const EMPTY_SHAPES: [&[usize]; 3] = [&[0], &[3, 0], &[0, 0]];

/// A generator seeded from [`SEED`] and `case`, the same on every run and platform.
pub fn case_rng(case: &str) -> StdRng {
    // FNV-1a: std's hashers are not guaranteed to stay the same across releases.
    let hash =
        case.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    StdRng::seed_from_u64(SEED ^ hash)
}

/// `n` independent standard-normal samples (Box-Muller, so no extra dependency is needed).
pub fn standard_normal(rng: &mut impl Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            // 1 - u lies in (0, 1], so the logarithm is finite.
            let u1 = 1.0 - rng.random::<f64>();
            let u2 = rng.random::<f64>();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

/// A random tensor of `dtype` and `shape`: standard-normal values for floating dtypes and for both
/// halves of complex64, integers in `-50..=50` (`0..=100` for uint8), fair coin flips for bool.
pub fn random_tensor(rng: &mut impl Rng, dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data = match dtype {
        DType::Complex64 => TensorData::from_f64(dtype, &standard_normal(rng, 2 * n)),
        DType::Bool => Ok(TensorData::Bool((0..n).map(|_| rng.random_bool(0.5)).collect())),
        DType::U8 => Ok(TensorData::U8((0..n).map(|_| rng.random_range(0..=100)).collect())),
        d if d.is_floating() => TensorData::from_f64(d, &standard_normal(rng, n)),
        d => {
            let values: Vec<f64> = (0..n).map(|_| f64::from(rng.random_range(-50i32..=50))).collect();
            TensorData::from_f64(d, &values)
        }
    };
    // Every dtype of DType::ALL is handled above, with exactly `n` elements.
    Tensor::new(shape.to_vec(), data.expect("random data for a known dtype")).expect("shape matches data")
}

/// A tensor of `dtype` and `shape` whose elements all equal `value` (complex64: `value - value*i`;
/// integers round, bool is `value != 0`).
pub fn constant_tensor(dtype: DType, shape: &[usize], value: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let data = match dtype {
        DType::Complex64 => TensorData::from_f64(dtype, &[value, -value].repeat(n)),
        d => TensorData::from_f64(d, &vec![value; n]),
    };
    Tensor::new(shape.to_vec(), data.expect("constant data for a known dtype")).expect("shape matches data")
}

/// The dtypes of [`DType::ALL`] that `codec` accepts for tensors with `ndim` dimensions.
pub fn accepted_dtypes(codec: &dyn Compression, ndim: usize) -> Vec<DType> {
    DType::ALL.into_iter().filter(|&d| codec.accepts(d, ndim)).collect()
}

/// Prefix lengths to try on a buffer of `len` bytes: all of them for short buffers, otherwise 0,
/// 1, 2, the middle, the last two and a seeded sample in between.
pub fn prefix_lengths(rng: &mut impl Rng, len: usize) -> Vec<usize> {
    const EXHAUSTIVE_UP_TO: usize = 1024;
    const SAMPLED: usize = 48;
    if len <= EXHAUSTIVE_UP_TO {
        return (0..len).collect();
    }
    let mut lengths = vec![0, 1, 2, len / 2, len - 2, len - 1];
    lengths.extend((0..SAMPLED).map(|_| rng.random_range(0..len)));
    lengths.sort_unstable();
    lengths.dedup();
    lengths
}
