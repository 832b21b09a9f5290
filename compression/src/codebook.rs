//! protocol 7.2, the layout UNIFORM_8BIT and QUANTILE_8BIT share:
//! `K (i64 LE, = 256) || codebook (f32 LE x K) || q (u8 x numel)`. The two codecs differ only in
//! how they assign values to the 256 entries; writing, checking and decoding the layout is here.

use averager_core::compression::{CompressionInfo, CompressionType, WireTensor, wire_dtype, wire_shape};
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

/// Encodes a floating tensor: `quantize(values, q)` fills one index per value and returns the
/// codebook.
pub(crate) fn encode(
    name: &str,
    wire_type: CompressionType,
    tensor: &TensorView<'_>,
    quantize: impl FnOnce(&[f32], &mut [u8]) -> [f32; BINS],
) -> Result<WireTensor> {
    let dtype = tensor.dtype();
    if !dtype.is_floating() {
        return Err(Error::codec(name, format!("{dtype} tensors are not accepted (floating dtypes only)")));
    }
    // Borrowed for float32 input; other dtypes are converted once, as the passes over the values
    // would otherwise convert them several times.
    let values = tensor.data().to_f32()?;
    let mut buffer = vec![0u8; HEADER + values.len()];
    let (header, q) = buffer.split_at_mut(HEADER);
    let codebook = quantize(&values, q);
    let (k, entries) = header.split_at_mut(8);
    k.copy_from_slice(&(BINS as i64).to_le_bytes());
    for (entry, out) in codebook.iter().zip(entries.chunks_exact_mut(4)) {
        out.copy_from_slice(&entry.to_le_bytes());
    }
    Ok(WireTensor {
        buffer: buffer.into(),
        size: tensor.shape().iter().map(|&d| d as u32).collect(),
        requires_grad: tensor.requires_grad(),
        dtype: dtype.name().to_string(),
        compression: wire_type as i32,
        chunks: 0,
        codec: name.to_string(),
    })
}

/// Decodes a floating tensor in this layout, checking `K` and the exact length before allocating.
pub(crate) fn decode(name: &str, message: &WireTensor) -> Result<Tensor> {
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
    let data = match dtype {
        DType::F32 => TensorData::F32(gather(q, &codebook)),
        DType::F64 => TensorData::F64(gather(q, &codebook.map(f64::from))),
        DType::F16 => TensorData::F16(gather(q, &codebook.map(f16::from_f32))),
        _ => TensorData::BF16(gather(q, &codebook.map(bf16::from_f32))),
    };
    Ok(Tensor::new(shape, data)?.with_requires_grad(message.requires_grad))
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
