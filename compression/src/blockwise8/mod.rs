//! protocol 7.2 BLOCKWISE_8BIT: blocks of 4096 values scaled by their absolute maximum, each value
//! replaced by the index of the nearest entry of bitsandbytes' 256-entry signed dynamic code.
//!
//! Buffer: `B (i64 LE, blocks) || K (i64 LE, = 256) || absmax (f32 LE x B) || code (f32 LE x K)
//! || q (u8 x numel)`.

use averager_core::compression::{
    BytesMut, CodecCapabilities, Compression, CompressionInfo, CompressionType, ErrorBound, WireTensor,
    add_scaled, check_decode_len, wire_dtype, wire_header, wire_shape,
};
use averager_core::tensor::{DType, Tensor, TensorData, TensorView};
use averager_core::{Error, Result};

use crate::decoded_f32::round_through;

mod code;

use code::TABLES;

/// Values per block (bitsandbytes' and hivemind's block size).
const BLOCK: usize = 4096;

/// Entries of the code.
const CODE_LEN: usize = 256;

/// The index of the code's 0 entry: 127 negative entries sort before it.
const ZERO_INDEX: u8 = 127;

/// Bytes of the two i64 counts that open the buffer.
const COUNTS: usize = 16;

/// Independent maxima of the absmax pass, so it vectorizes.
const LANES: usize = 8;

/// Blockwise 8-bit quantization with a logarithmic code: 1 byte per value plus 4 bytes per block
/// of 4096 and a 1040-byte header.
///
/// Accepts every real dtype (floating, integer and bool; not complex64) of any rank. Each value
/// is divided by its block's absolute maximum and replaced by the nearest of 256 fixed code
/// values, which are dense near 0 (seven decades, from `5.5e-7` up to 1) so small values keep
/// their relative precision. Decoding multiplies the code value by the block's absmax and casts
/// to the original dtype (integers round to nearest, bool is `!= 0`).
///
/// The code is bitsandbytes' signed dynamic map with 7 exponent bits, with its first entry set to
/// -1.0 as hivemind's encoder does, so each block's most negative extreme decodes exactly too.
///
/// \[averager\] An all-zero block writes absmax 0 and the index of the 0 entry (hivemind divides
/// by zero); no external library is needed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Blockwise8Bit;

impl Blockwise8Bit {
    /// The registry name.
    pub const NAME: &'static str = "blockwise8";

    /// The declared mean squared error of floating dtypes on standard-normal data (`error_bound`
    /// below says where it comes from).
    const MSE: f64 = 1e-3;

    /// The declared mean squared error of integer dtypes, whose values decode within 1 of the
    /// input while a block's absmax is below 141.
    const MSE_INT: f64 = 1.0;
}

/// The largest `|x|` of a block, ignoring NaN.
fn absmax(block: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = block.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            let a = x.abs();
            // A comparison (not `f32::max`) compiles to the vector max instruction; NaN never wins.
            *m = if a > *m { a } else { *m };
        }
    }
    let tail = chunks.remainder().iter().fold(0f32, |m, &x| if x.abs() > m { x.abs() } else { m });
    lanes.iter().fold(tail, |m, &x| if x > m { x } else { m })
}

/// The little-endian f32 at index `i` of `bytes` (callers have checked the length).
fn f32_at(bytes: &[u8], i: usize) -> f32 {
    let b = bytes.get(4 * i..4 * i + 4).unwrap_or(&[0; 4]);
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads the little-endian i64 at the start of `bytes` (at least 8 long).
fn read_i64(bytes: &[u8]) -> Option<i64> {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes.get(..8)?);
    Some(i64::from_le_bytes(b))
}

/// The buffer length for `numel` values in `blocks` blocks, or `None` when it overflows.
fn buffer_len(numel: usize, blocks: usize) -> Option<usize> {
    blocks.checked_mul(4)?.checked_add(COUNTS + 4 * CODE_LEN)?.checked_add(numel)
}

/// A checked BLOCKWISE_8BIT message: dtype, shape, per-block scales, code and indices.
struct Parsed<'a> {
    dtype: DType,
    shape: Vec<usize>,
    scales: &'a [u8],
    code: [f32; CODE_LEN],
    q: &'a [u8],
}

impl Parsed<'_> {
    /// Calls `block(index of its first value, its indices, code entries times its absmax)` for
    /// every block, in order.
    fn blocks(&self, mut block: impl FnMut(usize, &[u8], &[f32; CODE_LEN])) {
        let mut table = [0f32; CODE_LEN];
        for (i, q) in self.q.chunks(BLOCK).enumerate() {
            let scale = f32_at(self.scales, i);
            for (t, &c) in table.iter_mut().zip(&self.code) {
                *t = c * scale;
            }
            block(i * BLOCK, q, &table);
        }
    }
}

/// Checks the counts and the exact length before anything is allocated or written.
fn parse(message: &WireTensor) -> Result<Parsed<'_>> {
    let dtype = wire_dtype(Blockwise8Bit::NAME, message)?;
    if !dtype.is_real() {
        return Err(Error::codec(Blockwise8Bit::NAME, format!("{dtype} is not a real dtype")));
    }
    let (shape, numel) = wire_shape(Blockwise8Bit::NAME, message)?;
    let bytes = &message.buffer[..];
    let (Some(b), Some(k)) = (read_i64(bytes), bytes.get(8..).and_then(read_i64)) else {
        return Err(Error::codec(
            Blockwise8Bit::NAME,
            format!("buffer of {} bytes has no header", bytes.len()),
        ));
    };
    let blocks = numel.div_ceil(BLOCK);
    if u64::try_from(b).ok() != Some(blocks as u64) {
        return Err(Error::codec(
            Blockwise8Bit::NAME,
            format!("{b} blocks declared, {numel} values need {blocks}"),
        ));
    }
    if k != CODE_LEN as i64 {
        return Err(Error::codec(Blockwise8Bit::NAME, format!("code of {k} entries, expected {CODE_LEN}")));
    }
    if buffer_len(numel, blocks) != Some(bytes.len()) {
        return Err(Error::codec(
            Blockwise8Bit::NAME,
            format!("buffer of {} bytes does not hold {numel} values in {blocks} blocks", bytes.len()),
        ));
    }
    let (scales, rest) = bytes[COUNTS..].split_at(4 * blocks);
    let (code_bytes, q) = rest.split_at(4 * CODE_LEN);
    let mut code = [0f32; CODE_LEN];
    for (i, entry) in code.iter_mut().enumerate() {
        *entry = f32_at(code_bytes, i);
    }
    Ok(Parsed { dtype, shape, scales, code, q })
}

impl Compression for Blockwise8Bit {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn wire_type(&self) -> CompressionType {
        CompressionType::Blockwise8bit
    }

    fn accepts(&self, dtype: DType, _ndim: usize) -> bool {
        dtype.is_real()
    }

    fn compress(&self, tensor: &TensorView<'_>, info: &CompressionInfo) -> Result<WireTensor> {
        let mut buffer = BytesMut::new();
        let header = self.encode_into(tensor, info, &mut buffer)?;
        Ok(WireTensor { buffer: buffer.freeze(), ..header })
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        let parsed = parse(message)?;
        let mut out = vec![0f32; parsed.q.len()];
        parsed.blocks(|at, q, table| {
            for (x, &b) in out[at..at + q.len()].iter_mut().zip(q) {
                *x = table[usize::from(b)];
            }
        });
        let data = match parsed.dtype {
            DType::F32 => TensorData::F32(out),
            dtype => TensorData::from_f32(dtype, &out)?,
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
        if !dtype.is_real() {
            return Err(Error::codec(
                Self::NAME,
                format!("{dtype} tensors are not accepted (real dtypes only)"),
            ));
        }
        let values = tensor.data().to_f32()?;
        let n = values.len();
        let blocks = n.div_ceil(BLOCK);
        let tables = &*TABLES;
        // The tensor holds at least `n` bytes in memory, so this length cannot overflow.
        let start = out.len();
        out.resize(start + COUNTS + 4 * blocks + 4 * CODE_LEN + n, 0);
        let (counts, rest) = out[start..].split_at_mut(COUNTS);
        counts[..8].copy_from_slice(&(blocks as i64).to_le_bytes());
        counts[8..].copy_from_slice(&(CODE_LEN as i64).to_le_bytes());
        let (scales, rest) = rest.split_at_mut(4 * blocks);
        let (code, q) = rest.split_at_mut(4 * CODE_LEN);
        for (entry, out) in tables.code.iter().zip(code.chunks_exact_mut(4)) {
            out.copy_from_slice(&entry.to_le_bytes());
        }
        for ((src, dst), scale) in
            values.chunks(BLOCK).zip(q.chunks_mut(BLOCK)).zip(scales.chunks_exact_mut(4))
        {
            let m = absmax(src);
            scale.copy_from_slice(&m.to_le_bytes());
            if m == 0.0 {
                // [averager]: nothing to scale; every value is 0.
                dst.fill(ZERO_INDEX);
                continue;
            }
            // One division per block; the product may be an ulp past ±1, which still rounds to
            // the end entries.
            let inverse = 1.0 / m;
            tables.nearest_scaled(src, inverse, dst);
        }
        Ok(wire_header(tensor, dtype, CompressionType::Blockwise8bit, Self::NAME))
    }

    fn decode_into(&self, message: &WireTensor, out: &mut [f32]) -> Result<()> {
        let parsed = parse(message)?;
        check_decode_len(Self::NAME, parsed.q.len(), out.len())?;
        parsed.blocks(|at, q, table| {
            for (x, &b) in out[at..at + q.len()].iter_mut().zip(q) {
                *x = table[usize::from(b)];
            }
        });
        round_through(Self::NAME, parsed.dtype, out)
    }

    fn decode_add_into(&self, message: &WireTensor, weight: f32, out: &mut [f32]) -> Result<()> {
        let parsed = parse(message)?;
        check_decode_len(Self::NAME, parsed.q.len(), out.len())?;
        if matches!(parsed.dtype, DType::F32 | DType::F64) {
            // No rounding between decoding and adding: the weight goes into the 256 entries once,
            // which gives the same products as weighting every decoded value.
            parsed.blocks(|at, q, table| {
                let weighted = table.map(|t| weight * t);
                for (x, &b) in out[at..at + q.len()].iter_mut().zip(q) {
                    *x += weighted[usize::from(b)];
                }
            });
            return Ok(());
        }
        let mut decoded = [0f32; BLOCK];
        parsed.blocks(|at, q, table| {
            let decoded = &mut decoded[..q.len()];
            for (x, &b) in decoded.iter_mut().zip(q) {
                *x = table[usize::from(b)];
            }
            // `parse` admits real dtypes only, which all have an f32 form.
            if round_through(Self::NAME, parsed.dtype, decoded).is_ok() {
                add_scaled(&mut out[at..at + q.len()], decoded, weight);
            }
        });
        Ok(())
    }

    /// `8 / bits(dtype)` with `bits(bool) = 8` (protocol 7.1; the header and the 4 bytes per block
    /// are not counted); a descriptor without a dtype counts as float32.
    fn estimate_compression_ratio(&self, info: &CompressionInfo) -> f64 {
        8.0 / info.descriptor.dtype.unwrap_or(DType::F32).bits() as f64
    }

    /// Mean squared 1e-3 for floating dtypes, 1.0 for integers; bool round-trips exactly.
    ///
    /// Neighbouring code entries are at most 0.0211 apart (between -1.0 and the next entry;
    /// 0.0141 in the rest of the top decade), so a value is off by at most 1.06% of its block's
    /// absmax, less near zero where the code is dense. On standard-normal data (blockwise absmax
    /// about 4) that gives about 1.6e-4 (scenario 23's `randn(128, 128, 64)`: 1.7e-4); in 100000
    /// seeded samples per size from 1 to 10000 elements the largest was 4.4e-4. The error scales
    /// with the square of the absmax, as any MeanSquared bound scales with the data.
    ///
    /// Integers round after decoding: they come back exactly while a block's absmax is below 47
    /// (the error before rounding stays below 0.5) and within 1 while it is below 141, which
    /// covers the small integers the conformance suite draws; larger integers err by about 1% of
    /// their block's absmax. Booleans are 0 or 1 with absmax 1 or 0, which the code holds
    /// exactly.
    fn error_bound(&self, dtype: DType) -> ErrorBound {
        match dtype {
            DType::Bool => ErrorBound::Exact,
            d if d.is_floating() => ErrorBound::MeanSquared(Self::MSE),
            _ => ErrorBound::MeanSquared(Self::MSE_INT),
        }
    }

    fn capabilities(&self) -> CodecCapabilities {
        CodecCapabilities { lossless: false }
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::test_support::{mse, randn};
    use code::nearest_by_scan;

    /// Offset of the code in a buffer of `blocks` blocks.
    fn code_offset(blocks: usize) -> usize {
        COUNTS + 4 * blocks
    }

    fn encode(t: &Tensor) -> WireTensor {
        Blockwise8Bit.compress(&t.view(), &CompressionInfo::for_tensor(0, &t.view())).unwrap()
    }

    #[test]
    fn byte_layout_of_a_small_tensor() {
        // absmax 4: the scaled values are 0.5, -1, 0.25, 0.
        let t = Tensor::from_f32(vec![2, 2], vec![2.0, -4.0, 1.0, 0.0]).unwrap().with_requires_grad(true);
        let wire = encode(&t);
        assert_eq!(wire.buffer.len(), 16 + 4 + 1024 + 4);
        assert_eq!(&wire.buffer[..8], &1i64.to_le_bytes());
        assert_eq!(&wire.buffer[8..16], &256i64.to_le_bytes());
        assert_eq!(&wire.buffer[16..20], &4f32.to_le_bytes());
        let code: Vec<f32> = wire.buffer[code_offset(1)..code_offset(1) + 1024]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(&code[..], &TABLES.code[..]);
        let code = &TABLES.code;
        let q = &wire.buffer[code_offset(1) + 1024..];
        assert_eq!((q[1], q[3]), (0, ZERO_INDEX));
        assert_eq!((q[0], q[2]), (nearest_by_scan(code, 0.5), nearest_by_scan(code, 0.25)));
        assert_eq!((wire.dtype.as_str(), wire.codec.as_str()), ("float32", "blockwise8"));
        assert_eq!(wire.compression, CompressionType::Blockwise8bit as i32);
        let back = Blockwise8Bit.extract(&wire).unwrap();
        let expected = [code[usize::from(q[0])] * 4.0, -4.0, code[usize::from(q[2])] * 4.0, 0.0];
        assert_eq!(back.as_f32().unwrap(), &expected);
        assert!(back.requires_grad());
    }

    #[test]
    fn blocks_have_their_own_scale_and_zero_blocks_decode_to_zero() {
        // Block 0 all zeros, block 1 around 1e-3, block 2 (short) around 1e3.
        let mut rng = StdRng::seed_from_u64(12);
        let mut values = vec![0f32; BLOCK];
        values.extend(randn(&mut rng, BLOCK).iter().map(|x| x * 1e-3));
        values.extend(randn(&mut rng, 100).iter().map(|x| x * 1e3));
        let t = Tensor::from_f32(vec![values.len()], values.clone()).unwrap();
        let wire = encode(&t);
        assert_eq!(&wire.buffer[..8], &3i64.to_le_bytes());
        assert_eq!(&wire.buffer[16..20], &0f32.to_le_bytes());
        let q = &wire.buffer[code_offset(3) + 1024..];
        assert!(q[..BLOCK].iter().all(|&b| b == ZERO_INDEX));
        let back = Blockwise8Bit.extract(&wire).unwrap();
        let back = back.as_f32().unwrap();
        assert!(back[..BLOCK].iter().all(|&x| x == 0.0));
        for (range, scale) in [(BLOCK..2 * BLOCK, 1e-3), (2 * BLOCK..values.len(), 1e3)] {
            let absmax = values[range.clone()].iter().fold(0f32, |m, x| m.max(x.abs()));
            for (&x, &d) in values[range.clone()].iter().zip(&back[range]) {
                assert!((x - d).abs() <= 0.0106 * absmax, "{x} decoded to {d} (scale {scale})");
            }
        }
    }

    #[test]
    fn integers_and_bools_decode_to_their_dtype() {
        let mut rng = StdRng::seed_from_u64(13);
        let small: Vec<i64> = (0..5000).map(|_| rng.random_range(-46..=46)).collect();
        let t = Tensor::from_i64(vec![50, 100], small).unwrap();
        let wire = encode(&t);
        assert_eq!((wire.dtype.as_str(), wire.buffer.len()), ("int64", 16 + 8 + 1024 + 5000));
        assert_eq!(Blockwise8Bit.extract(&wire).unwrap(), t);

        let bytes: Vec<u8> = (0..5000).map(|_| rng.random_range(0..=140)).collect();
        let t = Tensor::from_u8(vec![5000], bytes.clone()).unwrap();
        let back = Blockwise8Bit.extract(&encode(&t)).unwrap();
        assert!(bytes.iter().zip(back.as_u8().unwrap()).all(|(&x, &d)| x.abs_diff(d) <= 1));

        let bools: Vec<bool> = (0..5000).map(|_| rng.random_bool(0.5)).collect();
        let t = Tensor::from_bool(vec![5000], bools).unwrap();
        assert_eq!(Blockwise8Bit.extract(&encode(&t)).unwrap(), t);
        assert_eq!(Blockwise8Bit.error_bound(DType::Bool), ErrorBound::Exact);
    }

    #[test]
    fn complex_is_refused() {
        assert!(!Blockwise8Bit.accepts(DType::Complex64, 1));
        assert!(DType::ALL.iter().filter(|&&d| d != DType::Complex64).all(|&d| Blockwise8Bit.accepts(d, 0)));
        let t = Tensor::zeros(vec![2], DType::Complex64).unwrap();
        assert!(matches!(
            Blockwise8Bit.compress(&t.view(), &CompressionInfo::default()),
            Err(Error::Codec { .. })
        ));
        let wire = encode(&Tensor::zeros(vec![2], DType::F32).unwrap());
        let forged = WireTensor { dtype: "complex64".into(), ..wire };
        assert!(matches!(Blockwise8Bit.extract(&forged), Err(Error::Codec { .. })));
    }

    #[test]
    fn empty_scalar_and_constant_tensors() {
        let empty = Tensor::zeros(vec![3, 0], DType::F32).unwrap();
        let wire = encode(&empty);
        assert_eq!(wire.buffer.len(), 16 + 1024);
        assert_eq!(&wire.buffer[..8], &0i64.to_le_bytes());
        assert_eq!(Blockwise8Bit.extract(&wire).unwrap(), empty);
        for value in [-2.5f32, 3.0, 0.0] {
            let scalar = Tensor::from_f32(vec![], vec![value]).unwrap();
            assert_eq!(Blockwise8Bit.extract(&encode(&scalar)).unwrap(), scalar);
            // ±absmax hits the code's ±1 entries, so constants decode exactly.
            let constant = Tensor::from_f32(vec![5000], vec![value; 5000]).unwrap();
            assert_eq!(Blockwise8Bit.extract(&encode(&constant)).unwrap(), constant);
        }
    }

    #[test]
    fn bfloat16_and_float64_keep_their_dtype() {
        let mut rng = StdRng::seed_from_u64(7);
        let values = randn(&mut rng, 4096);
        let bf =
            Tensor::from_bf16(vec![64, 64], values.iter().map(|&x| bf16::from_f32(x)).collect()).unwrap();
        let wire = encode(&bf);
        assert_eq!(wire.dtype, "bfloat16");
        let back = Blockwise8Bit.extract(&wire).unwrap();
        let back: Vec<f32> = back.as_bf16().unwrap().iter().map(|x| x.to_f32()).collect();
        let original: Vec<f32> = bf.as_bf16().unwrap().iter().map(|x| x.to_f32()).collect();
        assert!(mse(&original, &back) < Blockwise8Bit::MSE, "bf16 mse {}", mse(&original, &back));

        let f64s: Vec<f64> = values.iter().map(|&x| f64::from(x)).collect();
        let t = Tensor::from_f64(vec![4096], f64s.clone()).unwrap();
        let back = Blockwise8Bit.extract(&encode(&t)).unwrap();
        let err = f64s.iter().zip(back.as_f64().unwrap()).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / 4096.0;
        assert!(err < Blockwise8Bit::MSE, "f64 mse {err}");
    }

    #[test]
    fn ratio_is_eight_bits_over_the_dtype() {
        for (dtype, ratio) in [
            (DType::BF16, 0.5),
            (DType::F32, 0.25),
            (DType::F64, 0.125),
            (DType::I64, 0.125),
            (DType::I32, 0.25),
            (DType::U8, 1.0),
            (DType::Bool, 1.0),
        ] {
            let t = Tensor::zeros(vec![4], dtype).unwrap();
            let info = CompressionInfo::for_tensor(0, &t.view());
            assert_eq!(Blockwise8Bit.estimate_compression_ratio(&info), ratio, "{dtype}");
        }
    }

    #[test]
    fn malformed_buffers_are_errors() {
        let wire = encode(&Tensor::from_f32(vec![5000], vec![1.0; 5000]).unwrap());
        let valid = wire.buffer.to_vec();
        let with = |at: usize, bytes: &[u8]| {
            let mut b = valid.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            b
        };
        for buffer in [
            with(0, &1i64.to_le_bytes()),
            with(0, &3i64.to_le_bytes()),
            with(0, &(-2i64).to_le_bytes()),
            with(8, &255i64.to_le_bytes()),
            with(8, &i64::MIN.to_le_bytes()),
            valid[..valid.len() - 1].to_vec(),
            [&valid[..], &[0]].concat(),
            valid[..12].to_vec(),
            vec![],
        ] {
            let forged = WireTensor { buffer: buffer.into(), ..wire.clone() };
            assert!(matches!(Blockwise8Bit.extract(&forged), Err(Error::Codec { .. })));
        }
        assert!(Blockwise8Bit.extract(&WireTensor { dtype: "float8".into(), ..wire.clone() }).is_err());
        let huge = WireTensor { size: vec![u32::MAX, u32::MAX], ..wire };
        assert!(matches!(Blockwise8Bit.extract(&huge), Err(Error::Codec { .. })));
    }

    /// protocol 10.5 scenario 23: `randn(128, 128, 64)` round-trips with mse < 8e-4, and
    /// `zeros(5, 5)` decodes to finite values (\[averager\]: hivemind leaves BLOCKWISE out).
    #[test]
    fn scenario_23_tensor_compression() {
        let mut rng = StdRng::seed_from_u64(23);
        let values = randn(&mut rng, 128 * 128 * 64);
        let t = Tensor::from_f32(vec![128, 128, 64], values.clone()).unwrap();
        let back = Blockwise8Bit.extract(&encode(&t)).unwrap();
        assert_eq!(back.shape(), &[128, 128, 64]);
        let err = mse(&values, back.as_f32().unwrap());
        assert!(err > 0.0 && err < 8e-4, "mse {err}");

        let zeros = Blockwise8Bit.extract(&encode(&Tensor::zeros(vec![5, 5], DType::F32).unwrap())).unwrap();
        assert!(zeros.as_f32().unwrap().iter().all(|&x| x == 0.0));
    }
}
