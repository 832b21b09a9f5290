//! protocol 7.2 NONE: raw little-endian element bytes.

use averager_proto::{CompressionType, Tensor as WireTensor};
use half::bf16;

use bytes::BytesMut;

use super::{
    CodecCapabilities, Compression, CompressionInfo, ErrorBound, check_decode_len, decode_add_via_extract,
    decode_via_extract, encode_via_compress, wire_dtype, wire_shape,
};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, TensorData, TensorSlice, TensorView};

/// The identity codec: the element bytes as they are, for every dtype.
///
/// bfloat16 is written as f32 (4 bytes per value) in legacy mode, which is hivemind's default and
/// ours; set the environment variable `USE_LEGACY_BFLOAT16=0` to write raw 2-byte values. The
/// decoder accepts both, telling them apart by the buffer's length.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCompression;

impl NoCompression {
    /// The registry name.
    pub const NAME: &'static str = "none";
}

fn legacy_bfloat16() -> bool {
    std::env::var("USE_LEGACY_BFLOAT16").map(|v| v != "0").unwrap_or(true)
}

/// The message of `tensor` without its buffer.
fn header(tensor: &TensorView<'_>) -> WireTensor {
    super::wire_header(tensor, tensor.dtype(), CompressionType::None, NoCompression::NAME)
}

/// The NONE buffer of `tensor`.
fn encode_bytes(tensor: &TensorView<'_>) -> Vec<u8> {
    let data = tensor.data();
    let mut buffer = Vec::new();
    match data {
        TensorSlice::BF16(values) if legacy_bfloat16() => {
            buffer.reserve(values.len() * 4);
            for v in values {
                buffer.extend_from_slice(&v.to_f32().to_le_bytes());
            }
        }
        _ => data.write_le_bytes(&mut buffer),
    }
    buffer
}

/// Appends the little-endian bytes of `values` to `out`.
fn append_f32(values: &[f32], out: &mut BytesMut) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        out.reserve(values.len() * 4);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// The buffer of a float32 message checked against an output of `out_len` values; `None` for
/// other dtypes, which take the general path.
fn f32_payload(message: &WireTensor, out_len: usize) -> Result<Option<&[u8]>> {
    if wire_dtype(NoCompression::NAME, message)? != DType::F32 {
        return Ok(None);
    }
    let (_, numel) = wire_shape(NoCompression::NAME, message)?;
    check_decode_len(NoCompression::NAME, numel, out_len)?;
    if numel.checked_mul(4) != Some(message.buffer.len()) {
        return Err(Error::codec(
            NoCompression::NAME,
            format!("buffer of {} bytes does not hold {numel} float32 values", message.buffer.len()),
        ));
    }
    Ok(Some(&message.buffer[..]))
}

impl Compression for NoCompression {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn accepts(&self, _dtype: DType, _ndim: usize) -> bool {
        true
    }

    fn compress(&self, tensor: &TensorView<'_>, _info: &CompressionInfo) -> Result<WireTensor> {
        Ok(WireTensor { buffer: encode_bytes(tensor).into(), ..header(tensor) })
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        let dtype = wire_dtype(Self::NAME, message)?;
        let (shape, numel) = wire_shape(Self::NAME, message)?;
        let len = message.buffer.len();
        let data = if dtype == DType::BF16 && numel > 0 && len / numel == 4 && len.is_multiple_of(numel) {
            // Legacy bfloat16: each value travels as an f32.
            let f32s = TensorData::from_le_bytes(DType::F32, &message.buffer)?;
            match f32s {
                TensorData::F32(v) => TensorData::BF16(v.into_iter().map(bf16::from_f32).collect()),
                _ => return Err(Error::Internal("f32 decoding returned another dtype".into())),
            }
        } else {
            let expected = numel.checked_mul(dtype.size_bytes());
            if expected != Some(len) {
                return Err(Error::codec(
                    Self::NAME,
                    format!("buffer of {len} bytes does not hold {numel} {dtype} values"),
                ));
            }
            TensorData::from_le_bytes(dtype, &message.buffer)?
        };
        Ok(Tensor::new(shape, data)?.with_requires_grad(message.requires_grad))
    }

    fn encode_into(
        &self,
        tensor: &TensorView<'_>,
        info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Result<WireTensor> {
        match tensor.data() {
            TensorSlice::F32(values) => {
                append_f32(values, out);
                Ok(header(tensor))
            }
            _ => encode_via_compress(self, tensor, info, out),
        }
    }

    fn decode_into(&self, message: &WireTensor, out: &mut [f32]) -> Result<()> {
        match f32_payload(message, out.len())? {
            Some(bytes) => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                Ok(())
            }
            None => decode_via_extract(self, message, out),
        }
    }

    fn decode_add_into(&self, message: &WireTensor, weight: f32, out: &mut [f32]) -> Result<()> {
        match f32_payload(message, out.len())? {
            Some(bytes) => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o += weight * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                Ok(())
            }
            None => decode_add_via_extract(self, message, weight, out),
        }
    }

    fn encode_difference_into(
        &self,
        average: &[f32],
        part: &WireTensor,
        _info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Option<Result<WireTensor>> {
        let bytes = match f32_payload(part, average.len()) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let len = average.len() * 4;
        out.reserve(len);
        let start = out.len();
        // Straight into the spare capacity, in one pass over the average and the part: through a
        // block on the stack copied out afterwards, the copy took a tenth of a 4-peer
        // all-reduce's user CPU (zeroing the bytes before writing them would cost a pass too).
        let spare = &mut out.spare_capacity_mut()[..len];
        for ((dst, &a), b) in spare.chunks_exact_mut(4).zip(average).zip(bytes.chunks_exact(4)) {
            let difference = a - f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            for (dst, byte) in dst.iter_mut().zip(difference.to_le_bytes()) {
                dst.write(byte);
            }
        }
        // SAFETY: `reserve` made room for `len` bytes after `start`, and the loop wrote every one
        // of them: `bytes` holds 4 per value of `average` (checked by `f32_payload`), so the zip
        // runs over all `len / 4` chunks.
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(start + len)
        };
        let shape = [average.len()];
        let view = match TensorView::new(&shape[..], TensorSlice::F32(average)) {
            Ok(view) => view,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(header(&view)))
    }

    fn estimate_compression_ratio(&self, _info: &CompressionInfo) -> f64 {
        1.0
    }

    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::Exact
    }

    fn capabilities(&self) -> CodecCapabilities {
        CodecCapabilities { lossless: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfloat16_decodes_from_both_layouts() {
        let t = Tensor::from_bf16(vec![2], vec![bf16::from_f32(1.5), bf16::from_f32(-2.0)]).unwrap();
        let info = CompressionInfo::default();
        let wire = NoCompression.compress(&t.view(), &info).unwrap();
        assert_eq!(NoCompression.extract(&wire).unwrap(), t);
        let mut raw = Vec::new();
        t.view().data().write_le_bytes(&mut raw);
        let wire = WireTensor { buffer: raw.into(), ..wire };
        assert_eq!(NoCompression.extract(&wire).unwrap(), t);
    }

    #[test]
    fn a_huge_declared_shape_with_a_small_buffer_is_an_error() {
        let wire = WireTensor {
            buffer: vec![0u8; 4].into(),
            size: vec![u32::MAX, u32::MAX],
            dtype: "float32".into(),
            ..Default::default()
        };
        assert!(NoCompression.extract(&wire).is_err());
    }
}
