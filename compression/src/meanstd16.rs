//! protocol 7.2 MEANSTD_16BIT: each row of the last axis centred on its mean, scaled by its standard
//! deviation and rounded to IEEE half precision.
//!
//! Buffer: `y (f16 LE x numel) || means (f32 LE x S) || stds (f32 LE x S)`, where `S` is the
//! number of rows (the product of every dimension but the last).

use averager_core::compression::{
    BytesMut, CodecCapabilities, Compression, CompressionInfo, CompressionType, ErrorBound, WireTensor,
    add_scaled, check_decode_len, wire_dtype, wire_header, wire_shape,
};
use averager_core::tensor::{DType, Tensor, TensorData, TensorView};
use averager_core::{Error, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::decoded_f32::round_through;
use crate::float16::lanes::{narrow, widen};
use crate::sums::{centred_sum_of_squares, sum};

/// Elements converted per step: the stack buffer stays small (4 KiB), and the conversions run
/// on whole chunks with the CPU's f16 instructions (`float16::lanes`).
const CHUNK: usize = 1024;

/// The smallest standard deviation (float32's machine epsilon, hivemind's `FP32_EPS`): rows
/// without spread divide by it instead of by zero.
const MIN_STD: f32 = 1.192_092_9e-7;

/// Half precision after normalizing each row: 2 bytes per value plus 8 bytes per row.
///
/// Accepts float32, float64 and float16 tensors of at least one dimension; bfloat16 is refused,
/// as in hivemind. Each row of the last axis (length `d`) is centred on its mean and divided by
/// `max(||x - mean|| / sqrt(d), 1.1920929e-7)`, so the f16 rounding costs at most `2^-11` of a
/// value's distance from its row mean, whatever the row's scale. Decoding computes
/// `y * std + mean` in f32 and restores the original dtype.
///
/// \[averager\] 0-d tensors are refused with `Error::Codec` (hivemind fails on them), and rows of
/// length 0 write mean 0 and the minimum std instead of NaN.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanStd16Bit;

impl MeanStd16Bit {
    /// The registry name.
    pub const NAME: &'static str = "meanstd16";

    /// The declared mean squared error of float32 and float64 on standard-normal data
    /// (`error_bound` below says where it comes from).
    const MSE: f64 = 1e-6;

    /// The declared mean squared error of float16, whose decoding rounds once more.
    const MSE_F16: f64 = 3e-6;
}

/// The mean and the clamped standard deviation of one row, as transmitted (f32).
fn row_stats(row: &[f32]) -> (f32, f32) {
    if row.is_empty() {
        return (0.0, MIN_STD);
    }
    let d = row.len() as f64;
    // Centring on the transmitted (f32) mean means the decoder adds back exactly what was taken
    // away, so the f16 rounding is the only error.
    let mean = (sum(row) / d) as f32;
    let std = ((centred_sum_of_squares(row, mean) / d).sqrt() as f32).max(MIN_STD);
    (mean, std)
}

/// The stack buffer of the scaled values, shared by all rows of a tensor: short rows would
/// otherwise pay for initializing it once per row.
struct Scratch {
    scaled: [f32; CHUNK],
}

impl Scratch {
    fn new() -> Self {
        Scratch { scaled: [0.0; CHUNK] }
    }
}

/// Writes `clamp((x - mean) / std, ±65504)` of one row as f16 little-endian bytes to `out`
/// (`out.len() == 2 * row.len()`).
fn encode_row(row: &[f32], mean: f32, std: f32, out: &mut [u8], scratch: &mut Scratch) {
    for (src, out) in row.chunks(CHUNK).zip(out.chunks_mut(2 * CHUNK)) {
        let n = src.len();
        for (s, &x) in scratch.scaled[..n].iter_mut().zip(src) {
            *s = (x - mean) / std;
        }
        // `narrow` saturates to ±65504 and keeps NaN, as FLOAT16 does.
        narrow(&scratch.scaled[..n], out);
    }
}

/// Reads `y * std + mean` of at most [`CHUNK`] values from their f16 little-endian bytes into
/// `out` (`bytes.len() == 2 * out.len()`).
fn decode_chunk(bytes: &[u8], mean: f32, std: f32, out: &mut [f32]) {
    widen(bytes, out);
    for x in out.iter_mut() {
        *x = *x * std + mean;
    }
}

/// Reads `y * std + mean` of one row from its f16 little-endian bytes into `out`.
fn decode_row(bytes: &[u8], mean: f32, std: f32, out: &mut [f32]) {
    for (src, dst) in bytes.chunks(2 * CHUNK).zip(out.chunks_mut(CHUNK)) {
        decode_chunk(src, mean, std, dst);
    }
}

/// The little-endian f32 at index `i` of `bytes` (callers have checked the length).
fn f32_at(bytes: &[u8], i: usize) -> f32 {
    let b = bytes.get(4 * i..4 * i + 4).unwrap_or(&[0; 4]);
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A checked MEANSTD_16BIT message: its dtype, shape, element count, f16 values and per-row
/// statistics.
struct Parsed<'a> {
    dtype: DType,
    shape: Vec<usize>,
    numel: usize,
    ys: &'a [u8],
    means: &'a [u8],
    stds: &'a [u8],
}

impl Parsed<'_> {
    /// Calls `row(index, f16 bytes, mean, std)` for every non-empty row, in order.
    fn rows(&self, mut row: impl FnMut(usize, &[u8], f32, f32)) {
        if self.numel == 0 {
            return;
        }
        // `numel > 0` makes every row non-empty and their count `means.len() / 4`.
        let s = self.means.len() / 4;
        let d = self.numel / s;
        for (i, bytes) in self.ys.chunks(2 * d).enumerate() {
            row(i * d, bytes, f32_at(self.means, i), f32_at(self.stds, i));
        }
    }
}

/// Checks the dtype, the shape and the exact length before anything is allocated or written.
fn parse(message: &WireTensor) -> Result<Parsed<'_>> {
    let dtype = wire_dtype(MeanStd16Bit::NAME, message)?;
    if !matches!(dtype, DType::F32 | DType::F64 | DType::F16) {
        return Err(Error::codec(MeanStd16Bit::NAME, format!("{dtype} is not a MEANSTD_16BIT dtype")));
    }
    let (shape, numel) = wire_shape(MeanStd16Bit::NAME, message)?;
    let s = rows(&shape).ok_or_else(|| {
        Error::codec(MeanStd16Bit::NAME, format!("shape {shape:?} has no rows (0-d) or too many"))
    })?;
    let bytes = &message.buffer[..];
    let expected = numel.checked_mul(2).and_then(|y| s.checked_mul(8).and_then(|st| y.checked_add(st)));
    if expected != Some(bytes.len()) {
        return Err(Error::codec(
            MeanStd16Bit::NAME,
            format!("buffer of {} bytes does not hold {numel} f16 values and {s} rows of stats", bytes.len()),
        ));
    }
    // The length check makes these offsets `len - 8S` and `len - 4S`, as protocol 7.2 locates them.
    let (ys, stats) = bytes.split_at(2 * numel);
    let (means, stds) = stats.split_at(4 * s);
    Ok(Parsed { dtype, shape, numel, ys, means, stds })
}

/// The number of rows of `shape`: the product of every dimension but the last (1 for a 1-d
/// shape), or `None` when it overflows.
fn rows(shape: &[usize]) -> Option<usize> {
    let (_, leading) = shape.split_last()?;
    leading.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Compression for MeanStd16Bit {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn wire_type(&self) -> CompressionType {
        CompressionType::Meanstd16bit
    }

    fn accepts(&self, dtype: DType, ndim: usize) -> bool {
        matches!(dtype, DType::F32 | DType::F64 | DType::F16) && ndim >= 1
    }

    fn compress(&self, tensor: &TensorView<'_>, info: &CompressionInfo) -> Result<WireTensor> {
        let mut buffer = BytesMut::new();
        let header = self.encode_into(tensor, info, &mut buffer)?;
        Ok(WireTensor { buffer: buffer.freeze(), ..header })
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        let parsed = parse(message)?;
        let mut out = vec![0f32; parsed.numel];
        parsed.rows(|at, bytes, mean, std| {
            decode_row(bytes, mean, std, &mut out[at..at + bytes.len() / 2]);
        });
        let data = match parsed.dtype {
            DType::F32 => TensorData::F32(out),
            DType::F64 => TensorData::F64(out.into_iter().map(f64::from).collect()),
            _ => {
                let mut halves = vec![f16::ZERO; parsed.numel];
                halves.convert_from_f32_slice(&out);
                TensorData::F16(halves)
            }
        };
        Ok(Tensor::new(parsed.shape, data)?.with_requires_grad(message.requires_grad))
    }

    fn encode_into(
        &self,
        tensor: &TensorView<'_>,
        _info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Result<WireTensor> {
        let dtype = tensor.dtype();
        let shape = tensor.shape();
        if !self.accepts(dtype, shape.len()) {
            return Err(Error::codec(
                Self::NAME,
                format!(
                    "{dtype} tensors of {} dimensions are not accepted (float32, float64 or float16 with \
                     at least one dimension)",
                    shape.len()
                ),
            ));
        }
        let values = tensor.data().to_f32()?;
        let n = values.len();
        let d = shape.last().copied().unwrap_or(0);
        let s = rows(shape).ok_or_else(|| Error::codec(Self::NAME, format!("shape {shape:?} overflows")))?;
        // A shape with a zero last dimension has no elements but still `s` rows, each with
        // statistics: the buffer's length follows from the shape alone, as in hivemind.
        let len = s
            .checked_mul(8)
            .and_then(|stats| stats.checked_add(2 * n))
            .ok_or_else(|| Error::codec(Self::NAME, format!("shape {shape:?} overflows")))?;
        let start = out.len();
        out.resize(start + len, 0);
        let (ys, stats) = out[start..].split_at_mut(2 * n);
        let (means, stds) = stats.split_at_mut(4 * s);
        let mut scratch = Scratch::new();
        let mut rows_of_values = values.chunks(d.max(1));
        let mut rows_of_ys = ys.chunks_mut(2 * d.max(1));
        for (mean_out, std_out) in means.chunks_exact_mut(4).zip(stds.chunks_exact_mut(4)) {
            // With `d == 0` there are no values: every row is empty.
            let (row, out) = match (d, rows_of_values.next(), rows_of_ys.next()) {
                (1.., Some(row), Some(out)) => (row, out),
                _ => (&[][..], &mut [][..]),
            };
            let (mean, std) = row_stats(row);
            mean_out.copy_from_slice(&mean.to_le_bytes());
            std_out.copy_from_slice(&std.to_le_bytes());
            encode_row(row, mean, std, out, &mut scratch);
        }
        Ok(wire_header(tensor, dtype, CompressionType::Meanstd16bit, Self::NAME))
    }

    fn decode_into(&self, message: &WireTensor, out: &mut [f32]) -> Result<()> {
        let parsed = parse(message)?;
        check_decode_len(Self::NAME, parsed.numel, out.len())?;
        parsed.rows(|at, bytes, mean, std| {
            decode_row(bytes, mean, std, &mut out[at..at + bytes.len() / 2]);
        });
        round_through(Self::NAME, parsed.dtype, out)
    }

    fn decode_add_into(&self, message: &WireTensor, weight: f32, out: &mut [f32]) -> Result<()> {
        let parsed = parse(message)?;
        check_decode_len(Self::NAME, parsed.numel, out.len())?;
        let mut scratch = Scratch::new();
        let mut result = Ok(());
        parsed.rows(|at, bytes, mean, std| {
            let row = &mut out[at..at + bytes.len() / 2];
            for (src, dst) in bytes.chunks(2 * CHUNK).zip(row.chunks_mut(CHUNK)) {
                let decoded = &mut scratch.scaled[..dst.len()];
                decode_chunk(src, mean, std, decoded);
                // Accepted dtypes all have an f32 form, so this never fails here.
                if result.is_ok() {
                    result = round_through(Self::NAME, parsed.dtype, decoded);
                }
                add_scaled(dst, decoded, weight);
            }
        });
        result
    }

    /// `16 / bits(dtype)` (protocol 7.1; the 8 bytes of statistics per row are not counted, as in
    /// hivemind); a descriptor without a dtype counts as float32.
    fn estimate_compression_ratio(&self, info: &CompressionInfo) -> f64 {
        16.0 / info.descriptor.dtype.unwrap_or(DType::F32).bits() as f64
    }

    /// Mean squared: 1e-6 for float32 and float64, 3e-6 for float16.
    ///
    /// A scaled value `y = (x - mean) / std` is off by at most `2^-11 |y|` after the f16 rounding
    /// (in f16's subnormal range, below `2^-14`, by at most `2^-25`), and the `y` of a row have a
    /// mean square of exactly 1, so a row's mean squared error is at most `2^-22 = 2.4e-7` times
    /// its (biased) variance, and typically a fifth of that. Large standard-normal inputs land
    /// near 4e-8 (scenario 23's `randn(128, 128, 64)`: 4.3e-8); short rows vary more with their
    /// variance: in 100000 seeded samples per size, the largest was 7.0e-7 (3 elements; 1.5e-7
    /// at 45, 5.8e-8 at 1000). Decoding float16 rounds once more (`2^-11 |x|`): the largest there
    /// was 1.35e-6, also at 3 elements. Rows of one element and constant rows decode exactly.
    fn error_bound(&self, dtype: DType) -> ErrorBound {
        match dtype {
            DType::F16 => ErrorBound::MeanSquared(Self::MSE_F16),
            _ => ErrorBound::MeanSquared(Self::MSE),
        }
    }

    fn capabilities(&self) -> CodecCapabilities {
        CodecCapabilities { lossless: false }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::test_support::{mse, randn};

    fn encode(t: &Tensor) -> WireTensor {
        MeanStd16Bit.compress(&t.view(), &CompressionInfo::for_tensor(0, &t.view())).unwrap()
    }

    /// A NaN in a row makes its statistics NaN, and every value of that row decodes to NaN (the
    /// f16 conversion keeps NaN); the other rows are untouched.
    #[test]
    fn a_nan_spoils_its_row_only() {
        let t = Tensor::from_f32(
            vec![2, 20],
            (0..40).map(|i| if i == 3 { f32::NAN } else { i as f32 }).collect(),
        )
        .unwrap();
        let out = MeanStd16Bit.extract(&encode(&t)).unwrap();
        let out = out.as_f32().unwrap();
        assert!(out[..20].iter().all(|x| x.is_nan()), "{:?}", &out[..20]);
        for (i, x) in out[20..].iter().enumerate() {
            let want = (20 + i) as f32;
            assert!((x - want).abs() < 0.02, "{x} for {want}");
        }
    }

    #[test]
    fn byte_layout_of_a_small_tensor() {
        // Row 0 [1, 3]: mean 2, std 1, y = [-1, 1] (f16 0xbc00, 0x3c00). Row 1 is constant: mean
        // -1, std clamped to the minimum, y = [0, 0].
        let t = Tensor::from_f32(vec![2, 2], vec![1.0, 3.0, -1.0, -1.0]).unwrap().with_requires_grad(true);
        let wire = encode(&t);
        let mut expected = vec![0x00, 0xbc, 0x00, 0x3c, 0, 0, 0, 0];
        for stat in [2.0f32, -1.0, 1.0, MIN_STD] {
            expected.extend_from_slice(&stat.to_le_bytes());
        }
        assert_eq!(&wire.buffer[..], &expected[..]);
        assert_eq!((wire.dtype.as_str(), wire.codec.as_str()), ("float32", "meanstd16"));
        assert_eq!(wire.compression, CompressionType::Meanstd16bit as i32);
        assert_eq!(wire.size, vec![2, 2]);
        assert_eq!(MeanStd16Bit.extract(&wire).unwrap(), t);
    }

    #[test]
    fn each_row_of_the_last_axis_keeps_its_own_scale() {
        // Rows a million times apart in scale and offset: each keeps about 3 significant digits
        // of its deviation from its own mean.
        let mut rng = StdRng::seed_from_u64(11);
        let scales = [(1e-3f32, 0.0f32), (1.0, 5.0), (1e3, -2e3)];
        let values: Vec<f32> = scales
            .iter()
            .flat_map(|&(scale, offset)| randn(&mut rng, 64).into_iter().map(move |x| x * scale + offset))
            .collect();
        let t = Tensor::from_f32(vec![3, 64], values.clone()).unwrap();
        let wire = encode(&t);
        assert_eq!(wire.buffer.len(), 2 * 192 + 8 * 3);
        let back = MeanStd16Bit.extract(&wire).unwrap();
        for ((row, back), &(scale, offset)) in
            values.chunks(64).zip(back.as_f32().unwrap().chunks(64)).zip(&scales)
        {
            let mean = row.iter().sum::<f32>() / 64.0;
            for (&x, &d) in row.iter().zip(back) {
                // 2^-11 of the deviation from the row's mean, plus f32 roundings of the sums.
                let tolerance = (x - mean).abs() / 2048.0 + (scale + offset.abs()) * 1e-6;
                assert!((x - d).abs() <= tolerance, "{x} decoded to {d} (scale {scale})");
            }
        }
    }

    #[test]
    fn zero_d_tensors_bfloat16_and_integers_are_refused() {
        assert!(!MeanStd16Bit.accepts(DType::F32, 0));
        assert!(MeanStd16Bit.accepts(DType::F16, 1) && MeanStd16Bit.accepts(DType::F64, 3));
        let scalar = Tensor::from_f32(vec![], vec![1.0]).unwrap();
        let bf = Tensor::zeros(vec![3], DType::BF16).unwrap();
        let ints = Tensor::from_i64(vec![2], vec![1, 2]).unwrap();
        for t in [scalar, bf, ints] {
            let result = MeanStd16Bit.compress(&t.view(), &CompressionInfo::default());
            assert!(matches!(result, Err(Error::Codec { .. })), "{:?}", t.dtype());
        }
        // A forged 0-d message (hivemind's encoder fails on these, a forger can still send one).
        let wire = encode(&Tensor::from_f32(vec![1], vec![1.0]).unwrap());
        let forged = WireTensor { size: vec![], ..wire.clone() };
        assert!(matches!(MeanStd16Bit.extract(&forged), Err(Error::Codec { .. })));
        for dtype in ["bfloat16", "int64", "complex64"] {
            let forged = WireTensor { dtype: dtype.into(), ..wire.clone() };
            assert!(MeanStd16Bit.extract(&forged).is_err(), "{dtype}");
        }
    }

    #[test]
    fn empty_shapes_keep_one_row_of_stats_per_row() {
        // [3, 0]: three empty rows, each with mean 0 and the minimum std; [0, 5]: no rows;
        // [0]: one empty row.
        for (shape, rows) in [(vec![3, 0], 3), (vec![0, 5], 0), (vec![0], 1)] {
            let t = Tensor::zeros(shape.clone(), DType::F32).unwrap();
            let wire = encode(&t);
            assert_eq!(wire.buffer.len(), 8 * rows, "{shape:?}");
            let stds = &wire.buffer[4 * rows..];
            assert!(stds.chunks_exact(4).all(|b| b == MIN_STD.to_le_bytes()));
            assert_eq!(MeanStd16Bit.extract(&wire).unwrap(), t);
        }
    }

    #[test]
    fn float64_and_float16_keep_their_dtype() {
        let mut rng = StdRng::seed_from_u64(5);
        let values = randn(&mut rng, 1000);
        let f64s: Vec<f64> = values.iter().map(|&x| f64::from(x)).collect();
        let t = Tensor::from_f64(vec![10, 100], f64s.clone()).unwrap();
        let back = MeanStd16Bit.extract(&encode(&t)).unwrap();
        let err = f64s.iter().zip(back.as_f64().unwrap()).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / 1000.0;
        assert!(err < MeanStd16Bit::MSE, "f64 mse {err}");

        let halves: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
        let t = Tensor::from_f16(vec![1000], halves.clone()).unwrap();
        let wire = encode(&t);
        assert_eq!((wire.dtype.as_str(), wire.buffer.len()), ("float16", 2008));
        let back = MeanStd16Bit.extract(&wire).unwrap();
        let original: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
        let decoded: Vec<f32> = back.as_f16().unwrap().iter().map(|h| h.to_f32()).collect();
        assert!(mse(&original, &decoded) < MeanStd16Bit::MSE_F16);
    }

    #[test]
    fn ratio_is_sixteen_bits_over_the_dtype() {
        for (dtype, ratio) in [(DType::F16, 1.0), (DType::F32, 0.5), (DType::F64, 0.25)] {
            let t = Tensor::zeros(vec![4], dtype).unwrap();
            let info = CompressionInfo::for_tensor(0, &t.view());
            assert_eq!(MeanStd16Bit.estimate_compression_ratio(&info), ratio);
        }
    }

    #[test]
    fn malformed_buffers_are_errors() {
        let wire = encode(&Tensor::from_f32(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 7.0]).unwrap());
        assert_eq!(wire.buffer.len(), 12 + 16);
        for len in [0, 12, 27, 29, 12 + 8, 40] {
            let buffer: Vec<u8> = wire.buffer.iter().copied().chain(std::iter::repeat(0)).take(len).collect();
            let forged = WireTensor { buffer: buffer.into(), ..wire.clone() };
            assert!(matches!(MeanStd16Bit.extract(&forged), Err(Error::Codec { .. })), "{len}");
        }
        // Shapes whose row count overflows although they have no elements, and huge ones.
        for size in [vec![u32::MAX, u32::MAX, u32::MAX, 0], vec![u32::MAX, u32::MAX], vec![u32::MAX, 2]] {
            let forged = WireTensor { size, ..wire.clone() };
            assert!(matches!(MeanStd16Bit.extract(&forged), Err(Error::Codec { .. })));
        }
    }

    /// protocol 10.5 scenario 23: `randn(128, 128, 64)` round-trips with mse < 5e-8, and
    /// `zeros(5, 5)` decodes to finite values.
    #[test]
    fn scenario_23_tensor_compression() {
        let mut rng = StdRng::seed_from_u64(23);
        let values = randn(&mut rng, 128 * 128 * 64);
        let t = Tensor::from_f32(vec![128, 128, 64], values.clone()).unwrap();
        let back = MeanStd16Bit.extract(&encode(&t)).unwrap();
        assert_eq!(back.shape(), &[128, 128, 64]);
        let err = mse(&values, back.as_f32().unwrap());
        assert!(err > 0.0 && err < 5e-8, "mse {err}");

        let zeros = MeanStd16Bit.extract(&encode(&Tensor::zeros(vec![5, 5], DType::F32).unwrap())).unwrap();
        assert!(zeros.as_f32().unwrap().iter().all(|&x| x == 0.0));
    }
}
