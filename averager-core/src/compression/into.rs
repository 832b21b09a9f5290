//! The allocation-free codec methods' default implementations (over `compress` and `extract`)
//! and the small pieces native implementations share.

use bytes::BytesMut;

use super::{Compression, CompressionInfo, WireTensor};
use crate::error::{Error, Result};
use crate::tensor::TensorView;

/// [`Compression::encode_into`] through [`Compression::compress`]: one extra copy of the buffer.
///
/// # Errors
/// Whatever `compress` returns; `out` is then unchanged.
pub fn encode_via_compress<C: Compression + ?Sized>(
    codec: &C,
    tensor: &TensorView<'_>,
    info: &CompressionInfo,
    out: &mut BytesMut,
) -> Result<WireTensor> {
    let mut wire = codec.compress(tensor, info)?;
    out.extend_from_slice(&wire.buffer);
    wire.buffer = bytes::Bytes::new();
    Ok(wire)
}

/// [`Compression::decode_into`] through [`Compression::extract`]: a decoded tensor, then a copy.
///
/// # Errors
/// Whatever `extract` returns, a tensor without an f32 form, or an `out` of another length.
pub fn decode_via_extract<C: Compression + ?Sized>(
    codec: &C,
    message: &WireTensor,
    out: &mut [f32],
) -> Result<()> {
    let tensor = codec.extract(message)?;
    check_decode_len(codec.name(), tensor.numel(), out.len())?;
    let values = tensor.view().data().to_f32().map_err(|e| Error::codec(codec.name(), e.to_string()))?;
    out.copy_from_slice(&values);
    Ok(())
}

/// [`Compression::decode_add_into`] through [`Compression::decode_into`] into a temporary vector.
///
/// # Errors
/// As [`decode_via_extract`]; `out` is then unchanged.
pub fn decode_add_via_extract<C: Compression + ?Sized>(
    codec: &C,
    message: &WireTensor,
    weight: f32,
    out: &mut [f32],
) -> Result<()> {
    let mut decoded = vec![0f32; out.len()];
    codec.decode_into(message, &mut decoded)?;
    add_scaled(out, &decoded, weight);
    Ok(())
}

/// The error of a decode target whose length is not the message's element count.
///
/// # Errors
/// [`Error::Codec`] when `numel != out_len`.
pub fn check_decode_len(codec: &str, numel: usize, out_len: usize) -> Result<()> {
    if numel == out_len {
        Ok(())
    } else {
        Err(Error::codec(codec, format!("message holds {numel} values, the output has room for {out_len}")))
    }
}

/// `out[i] += weight * values[i]` in f32 (the shorter length decides), the step every
/// `decode_add_into` ends with.
pub fn add_scaled(out: &mut [f32], values: &[f32], weight: f32) {
    for (o, &v) in out.iter_mut().zip(values) {
        *o += weight * v;
    }
}
