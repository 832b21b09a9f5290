#![doc = include_str!("../README.md")]

use std::sync::Arc;

use averager::compression::{CompressionType, ErrorBound, WireTensor, wire_dtype, wire_shape};
use averager::tensor::{DType, TensorData};
use averager::{Compression, CompressionInfo, Error, Result, Tensor, TensorView};

/// Symmetric 8-bit quantization scaled by the tensor's largest magnitude.
///
/// Buffer: `absmax (f32 LE) || q (i8 x numel)`; a value decodes as `q * absmax / 127`.
/// Accepts float32 and float64 of any rank.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcmeInt8;

impl AcmeInt8 {
    /// The name on the wire and in the registry. Prefixing it with the crate's owner keeps it
    /// from colliding with another plugin's name (which the registry reports as an error).
    pub const NAME: &'static str = "acme-int8";
}

// The one line that makes the codec available by name in every binary that links this crate.
averager::register_codec!(AcmeInt8::NAME, "symmetric int8 scaled by absmax (example plugin)", |_| Ok(
    Arc::new(AcmeInt8)
));

impl Compression for AcmeInt8 {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn accepts(&self, dtype: DType, _ndim: usize) -> bool {
        matches!(dtype, DType::F32 | DType::F64)
    }

    fn compress(&self, tensor: &TensorView<'_>, _info: &CompressionInfo) -> Result<WireTensor> {
        if !self.accepts(tensor.dtype(), tensor.shape().len()) {
            return Err(Error::codec(Self::NAME, format!("{} is not accepted", tensor.dtype())));
        }
        let values = tensor.data().to_f32()?;
        let absmax = values.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if absmax > 0.0 && absmax.is_finite() { 127.0 / absmax } else { 0.0 };
        let mut buffer = Vec::with_capacity(4 + values.len());
        buffer.extend_from_slice(&absmax.to_le_bytes());
        buffer.extend(values.iter().map(|x| (x * scale).round().clamp(-127.0, 127.0) as i8 as u8));
        Ok(WireTensor {
            buffer: buffer.into(),
            size: tensor.shape().iter().map(|&d| d as u32).collect(),
            requires_grad: tensor.requires_grad(),
            dtype: tensor.dtype().name().to_string(),
            // Not one of protocol 7.2's formats: the enum stays NONE and `codec` names it.
            compression: CompressionType::None as i32,
            chunks: 0,
            codec: Self::NAME.to_string(),
        })
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        let dtype = wire_dtype(Self::NAME, message)?;
        if !self.accepts(dtype, message.size.len()) {
            return Err(Error::codec(Self::NAME, format!("{dtype} is not accepted")));
        }
        // Check the length before allocating anything: the shape comes from a remote peer.
        let (shape, numel) = wire_shape(Self::NAME, message)?;
        let bytes = &message.buffer[..];
        if numel.checked_add(4) != Some(bytes.len()) {
            return Err(Error::codec(
                Self::NAME,
                format!("{} bytes cannot hold {numel} values", bytes.len()),
            ));
        }
        let absmax = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let step = absmax / 127.0;
        let values: Vec<f32> = bytes[4..].iter().map(|&b| f32::from(b as i8) * step).collect();
        Ok(Tensor::new(shape, TensorData::from_f32(dtype, &values)?)?
            .with_requires_grad(message.requires_grad))
    }

    fn estimate_compression_ratio(&self, info: &CompressionInfo) -> f64 {
        8.0 / info.descriptor.dtype.unwrap_or(DType::F32).bits() as f64
    }

    /// On standard-normal data the step is `absmax / 127` (absmax about 4 to 5), so rounding
    /// costs about `step^2 / 12`, near 1e-4; 1e-3 leaves room for small inputs.
    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::MeanSquared(1e-3)
    }
}
