//! protocol 7.2, the layout UNIFORM_8BIT and QUANTILE_8BIT share:
//! `K (i64 LE, = 256) || codebook (f32 LE x K) || q (u8 x numel)`. The two codecs differ only in
//! how they assign values to the 256 entries; writing, checking and decoding the layout is here.

use averager_core::compression::{
    BytesMut, CompressionInfo, CompressionType, WireTensor, check_decode_len, wire_dtype, wire_header,
    wire_shape,
};
use averager_core::tensor::{DType, Tensor, TensorData, TensorView};
use averager_core::{Error, Result};
use half::{bf16, f16};

/// Number of codebook entries.
pub(crate) const BINS: usize = 256;

/// Bytes before the indices: `K` and the codebook.
pub(crate) const HEADER: usize = 8 + 4 * BINS;

/// Entry `b` = the mean of the values with index `b` (0 for an empty bucket), from per-bucket sums.
pub(crate) fn means(sums: &[f64; BINS], counts: &[u64; BINS]) -> [f32; BINS] {
    let mut codebook = [0f32; BINS];
    for ((entry, &s), &c) in codebook.iter_mut().zip(sums).zip(counts) {
        if c > 0 {
            *entry = (s / c as f64) as f32;
        }
    }
    codebook
}

/// Independent copies of the per-bin sums: neighbouring values often share a bin, and with one
/// copy each addition would wait for the previous one's store.
pub(crate) const SUM_LANES: usize = 4;

/// Per-bin sums and counts of the values given so far, for [`means`].
///
/// A bin's sum and count sit side by side as one `[f64; 2]`, so adding a value is one vector
/// load, addition and store instead of two of each (counts in f64 are exact up to 2^53).
pub(crate) struct BinSums {
    lanes: [[[f64; 2]; BINS]; SUM_LANES],
}

impl BinSums {
    /// No values yet.
    pub(crate) fn new() -> Self {
        BinSums { lanes: [[[0.0; 2]; BINS]; SUM_LANES] }
    }

    /// Adds each of `values` to the bin `q` gives it: the `i`-th of each run of [`SUM_LANES`]
    /// values to copy `i`, a last incomplete run to copy 0 ([`Self::add_one`] callers follow the
    /// same order, so the sums come out the same bits).
    pub(crate) fn add(&mut self, values: &[f32], q: &[u8]) {
        let (v, v_rest) = values.as_chunks::<SUM_LANES>();
        let (b, b_rest) = q.as_chunks::<SUM_LANES>();
        for (xs, bs) in v.iter().zip(b) {
            self.add_run(bs, xs);
        }
        for (&x, &bin) in v_rest.iter().zip(b_rest) {
            self.add_one(0, bin, f64::from(x));
        }
    }

    /// Adds a run of [`SUM_LANES`] values, one to each copy of the sums.
    #[inline(always)]
    pub(crate) fn add_run(&mut self, bins: &[u8; SUM_LANES], values: &[f32; SUM_LANES]) {
        // Widened as a run before the additions: no faster for uniform8 (the compiler still
        // widens each value on its own there), but the quantile lookup, which hands its runs
        // here, measured about 10% faster than adding value by value.
        let wide = values.map(f64::from);
        for lane in 0..SUM_LANES {
            self.add_one(lane, bins[lane], wide[lane]);
        }
    }

    /// Adds `x` to `bin` in copy `lane` of the sums (taken modulo [`SUM_LANES`]).
    #[inline(always)]
    pub(crate) fn add_one(&mut self, lane: usize, bin: u8, x: f64) {
        let entry = &mut self.lanes[lane % SUM_LANES][usize::from(bin)];
        *entry = [entry[0] + x, entry[1] + 1.0];
    }

    /// Puts `count` values summing to `sum` in `bin`.
    pub(crate) fn set(&mut self, bin: usize, sum: f64, count: u64) {
        let entry = &mut self.lanes[0][bin];
        *entry = [entry[0] + sum, entry[1] + count as f64];
    }

    /// The codebook: each bin's mean, 0 for empty bins.
    pub(crate) fn means(&self) -> [f32; BINS] {
        let mut sums = [0f64; BINS];
        let mut counts = [0u64; BINS];
        for lane in &self.lanes {
            for ((sum, count), entry) in sums.iter_mut().zip(&mut counts).zip(lane) {
                *sum += entry[0];
                *count += entry[1] as u64;
            }
        }
        means(&sums, &counts)
    }
}

/// Where a quantizer hands over the indices it computed, a chunk at a time, in order.
pub(crate) type Emit<'a> = dyn FnMut(&[u8]) + 'a;

/// Encodes a floating tensor: `quantize(values, emit)` passes one index per value to `emit`, in
/// order, and returns the codebook.
pub(crate) fn encode(
    name: &str,
    wire_type: CompressionType,
    tensor: &TensorView<'_>,
    quantize: impl FnOnce(&[f32], &mut Emit<'_>) -> [f32; BINS],
) -> Result<WireTensor> {
    let mut buffer = BytesMut::new();
    let header = encode_into(name, wire_type, tensor, quantize, &mut buffer)?;
    Ok(WireTensor { buffer: buffer.freeze(), ..header })
}

/// [`encode`], appending the buffer to `out` and returning the message without it.
pub(crate) fn encode_into(
    name: &str,
    wire_type: CompressionType,
    tensor: &TensorView<'_>,
    quantize: impl FnOnce(&[f32], &mut Emit<'_>) -> [f32; BINS],
    out: &mut BytesMut,
) -> Result<WireTensor> {
    let dtype = tensor.dtype();
    if !dtype.is_floating() {
        return Err(Error::codec(name, format!("{dtype} tensors are not accepted (floating dtypes only)")));
    }
    // Borrowed for float32 input; other dtypes are converted once, as the passes over the values
    // would otherwise convert them several times.
    let values = tensor.data().to_f32()?;
    let start = out.len();
    out.reserve(HEADER + values.len());
    out.resize(start + HEADER, 0);
    // The indices are appended as they come instead of overwriting a zero-filled buffer, which
    // would write the whole output twice.
    let codebook = quantize(&values, &mut |q: &[u8]| out.extend_from_slice(q));
    let (k, entries) = out[start..start + HEADER].split_at_mut(8);
    k.copy_from_slice(&(BINS as i64).to_le_bytes());
    for (entry, out) in codebook.iter().zip(entries.chunks_exact_mut(4)) {
        out.copy_from_slice(&entry.to_le_bytes());
    }
    Ok(wire_header(tensor, dtype, wire_type, name))
}

/// A checked message in this layout: its dtype, shape, codebook and indices.
struct Parsed<'a> {
    dtype: DType,
    shape: Vec<usize>,
    codebook: [f32; BINS],
    q: &'a [u8],
}

/// Checks `K` and the exact length before anything is allocated or written.
fn parse<'a>(name: &str, message: &'a WireTensor) -> Result<Parsed<'a>> {
    let dtype = wire_dtype(name, message)?;
    if !dtype.is_floating() {
        return Err(Error::codec(name, format!("{dtype} is not a floating dtype")));
    }
    let (shape, numel) = wire_shape(name, message)?;
    let bytes = &message.buffer[..];
    if numel.checked_add(HEADER) != Some(bytes.len()) {
        return Err(Error::codec(
            name,
            format!(
                "buffer of {} bytes does not hold {numel} values and a {HEADER}-byte header",
                bytes.len()
            ),
        ));
    }
    let (header, q) = bytes.split_at(HEADER);
    let (k, entries) = header.split_at(8);
    let mut k_bytes = [0u8; 8];
    k_bytes.copy_from_slice(k);
    let k = i64::from_le_bytes(k_bytes);
    if k != BINS as i64 {
        return Err(Error::codec(name, format!("codebook of {k} entries, expected {BINS}")));
    }
    let mut codebook = [0f32; BINS];
    for (entry, b) in codebook.iter_mut().zip(entries.chunks_exact(4)) {
        *entry = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    Ok(Parsed { dtype, shape, codebook, q })
}

/// Decodes a floating tensor in this layout, checking `K` and the exact length before allocating.
pub(crate) fn decode(name: &str, message: &WireTensor) -> Result<Tensor> {
    let Parsed { dtype, shape, codebook, q } = parse(name, message)?;
    let data = match dtype {
        DType::F32 => TensorData::F32(gather(q, &codebook)),
        DType::F64 => TensorData::F64(gather(q, &codebook.map(f64::from))),
        DType::F16 => TensorData::F16(gather(q, &codebook.map(f16::from_f32))),
        _ => TensorData::BF16(gather(q, &codebook.map(bf16::from_f32))),
    };
    Ok(Tensor::new(shape, data)?.with_requires_grad(message.requires_grad))
}

/// The codebook as `decode` gives its entries in `dtype`, widened back to f32 (f64 widens and
/// narrows exactly; f16 and bf16 round).
fn f32_table(dtype: DType, codebook: [f32; BINS]) -> [f32; BINS] {
    match dtype {
        DType::F16 => codebook.map(|e| f16::from_f32(e).to_f32()),
        DType::BF16 => codebook.map(|e| bf16::from_f32(e).to_f32()),
        _ => codebook,
    }
}

/// `Compression::decode_into` for this layout: one table lookup per value.
pub(crate) fn decode_into(name: &str, message: &WireTensor, out: &mut [f32]) -> Result<()> {
    let Parsed { dtype, codebook, q, .. } = parse(name, message)?;
    check_decode_len(name, q.len(), out.len())?;
    let table = f32_table(dtype, codebook);
    // Eight indices per load, taken apart in registers: one load per value (the table's) instead
    // of two (decode 10 -> 11 GB/s per core on cached parts).
    let (outs, out_rest) = out.as_chunks_mut::<8>();
    let (qs, q_rest) = q.as_chunks::<8>();
    for (o, b) in outs.iter_mut().zip(qs) {
        let word = u64::from_le_bytes(*b);
        let at = |i: u32| table[(word >> (8 * i)) as u8 as usize];
        *o = [at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7)];
    }
    for (o, &b) in out_rest.iter_mut().zip(q_rest) {
        *o = table[usize::from(b)];
    }
    Ok(())
}

/// `Compression::decode_add_into` for this layout: the weight is applied to the 256 entries once,
/// which gives the same products as applying it to every decoded value.
pub(crate) fn decode_add_into(name: &str, message: &WireTensor, weight: f32, out: &mut [f32]) -> Result<()> {
    let Parsed { dtype, codebook, q, .. } = parse(name, message)?;
    check_decode_len(name, q.len(), out.len())?;
    let table = f32_table(dtype, codebook).map(|e| weight * e);
    // Eight indices per load, as in `decode_into`.
    let (outs, out_rest) = out.as_chunks_mut::<8>();
    let (qs, q_rest) = q.as_chunks::<8>();
    for (o, b) in outs.iter_mut().zip(qs) {
        let word = u64::from_le_bytes(*b);
        for (i, o) in o.iter_mut().enumerate() {
            *o += table[(word >> (8 * i)) as u8 as usize];
        }
    }
    for (o, &b) in out_rest.iter_mut().zip(q_rest) {
        *o += table[usize::from(b)];
    }
    Ok(())
}

/// `8 / bits(dtype)` (protocol 7.1; the 1032-byte header is not counted, as in hivemind); a
/// descriptor without a dtype counts as float32.
pub(crate) fn ratio(info: &CompressionInfo) -> f64 {
    8.0 / info.descriptor.dtype.unwrap_or(DType::F32).bits() as f64
}

/// `out[i] = table[q[i]]`: the decoding gather, in the output's own type.
fn gather<T: Copy>(q: &[u8], table: &[T; BINS]) -> Vec<T> {
    q.iter().map(|&b| table[usize::from(b)]).collect()
}

/// `impl Compression` for a codec that writes this layout: `$ty` (with a `NAME` constant) under
/// `$wire`, assigning values to entries with `$quantize`; everything but the assignment is this
/// module's, so the codecs differ only in `$quantize` and in the items given in braces (their
/// `error_bound`, whose documentation is each codec's own).
macro_rules! codebook_compression {
    ($ty:ty, $wire:expr, $quantize:path, { $($own:tt)* }) => {
        impl averager_core::compression::Compression for $ty {
            fn name(&self) -> &str {
                Self::NAME
            }

            fn wire_type(&self) -> averager_core::compression::CompressionType {
                $wire
            }

            fn accepts(&self, dtype: averager_core::tensor::DType, _ndim: usize) -> bool {
                dtype.is_floating()
            }

            fn compress(
                &self,
                tensor: &averager_core::tensor::TensorView<'_>,
                _info: &averager_core::compression::CompressionInfo,
            ) -> averager_core::Result<averager_core::compression::WireTensor> {
                $crate::codebook::encode(Self::NAME, $wire, tensor, $quantize)
            }

            fn extract(
                &self,
                message: &averager_core::compression::WireTensor,
            ) -> averager_core::Result<averager_core::tensor::Tensor> {
                $crate::codebook::decode(Self::NAME, message)
            }

            fn encode_into(
                &self,
                tensor: &averager_core::tensor::TensorView<'_>,
                _info: &averager_core::compression::CompressionInfo,
                out: &mut averager_core::compression::BytesMut,
            ) -> averager_core::Result<averager_core::compression::WireTensor> {
                $crate::codebook::encode_into(Self::NAME, $wire, tensor, $quantize, out)
            }

            fn decode_into(
                &self,
                message: &averager_core::compression::WireTensor,
                out: &mut [f32],
            ) -> averager_core::Result<()> {
                $crate::codebook::decode_into(Self::NAME, message, out)
            }

            fn decode_add_into(
                &self,
                message: &averager_core::compression::WireTensor,
                weight: f32,
                out: &mut [f32],
            ) -> averager_core::Result<()> {
                $crate::codebook::decode_add_into(Self::NAME, message, weight, out)
            }

            /// `8 / bits(dtype)` (protocol 7.1; the 1032-byte header is not counted, as in hivemind).
            fn estimate_compression_ratio(&self, info: &averager_core::compression::CompressionInfo) -> f64 {
                $crate::codebook::ratio(info)
            }

            fn capabilities(&self) -> averager_core::compression::CodecCapabilities {
                averager_core::compression::CodecCapabilities { lossless: false }
            }

            $($own)*
        }
    };
}
pub(crate) use codebook_compression;

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer written by hand from protocol 7.2's layout: `K = 256` as i64 LE, 256 f32 LE
    /// entries, one index per value. Decoders of both 8-bit codecs must read exactly these bytes;
    /// 19 values, so the eight-at-a-time loop and its remainder both run.
    #[test]
    fn golden_bytes_decode() {
        let mut bytes = 256i64.to_le_bytes().to_vec();
        for k in 0..BINS {
            bytes.extend_from_slice(&(k as f32 * 0.5 - 64.0).to_le_bytes());
        }
        assert_eq!(bytes.len(), HEADER);
        assert_eq!(&bytes[..12], &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0xc2]);
        let q: Vec<u8> = (0..19u8).map(|i| i.wrapping_mul(37)).collect();
        bytes.extend_from_slice(&q);
        let expected: Vec<f32> = q.iter().map(|&b| f32::from(b) * 0.5 - 64.0).collect();
        let message = WireTensor {
            buffer: bytes.into(),
            compression: CompressionType::Quantile8bit as i32,
            dtype: "float32".into(),
            size: vec![19],
            ..WireTensor::default()
        };
        let mut out = vec![0f32; 19];
        decode_into("quantile8", &message, &mut out).unwrap();
        assert_eq!(out, expected);
        let mut acc = vec![1f32; 19];
        decode_add_into("quantile8", &message, 2.0, &mut acc).unwrap();
        let doubled: Vec<f32> = expected.iter().map(|&e| 1.0 + 2.0 * e).collect();
        assert_eq!(acc, doubled);
        assert_eq!(decode("quantile8", &message).unwrap().as_f32().unwrap(), &expected[..]);
    }
}
