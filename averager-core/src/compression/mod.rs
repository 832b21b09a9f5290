//! protocol 7.1: the codec interface, [`CompressionInfo`] and tensor roles.
//!
//! A codec turns a tensor (or a part of one) into a wire [`WireTensor`] and back. The receiver
//! finds the decoder by the name written in `WireTensor.codec` (or, for built-in codecs sent by
//! older peers, by the `compression` enum), through the [registry](crate::registry).

mod info;
mod into;
mod none;
mod streaming;

use std::fmt::Debug;

pub use averager_proto::{CompressionType, Tensor as WireTensor};
pub use bytes::BytesMut;
pub use info::{CompressionInfo, TensorDescriptor, TensorKey, TensorRole};
pub use into::{
    add_scaled, check_decode_len, decode_add_via_extract, decode_via_extract, encode_via_compress,
};
pub use none::NoCompression;
pub use streaming::{STREAM_CHUNK_BYTES, combine_from_streaming, split_for_streaming};

use crate::error::Result;
use crate::tensor::{DType, Tensor, TensorView};

/// How close a codec's round trip stays to its input, as declared by the codec.
///
/// The conformance suite checks every declaration on standard-normal data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorBound {
    /// Decoding returns exactly the input.
    Exact,
    /// Every element satisfies `|decoded - x| <= atol + rtol * |x|`.
    Elementwise {
        /// Absolute tolerance.
        atol: f64,
        /// Relative tolerance.
        rtol: f64,
    },
    /// The mean squared error over standard-normal input is at most this value.
    MeanSquared(f64),
}

/// What a codec offers, so the conformance suite tests only what it promises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecCapabilities {
    /// Whether every accepted dtype round-trips bit-exactly.
    pub lossless: bool,
}

/// A compression codec: encodes tensors for the wire and decodes what peers sent.
///
/// Codecs are synchronous on purpose: encoding and decoding are CPU-bound work on one part at a
/// time, so an `async fn` here would only hide that. The core encodes the parts a peer sends on
/// blocking threads, one part ahead of the transport (protocol 4.4); a received part, a reply and
/// a reply's delta are decoded or encoded on the task serving that stream, each call bounded by
/// the part size (`part_size_bytes`).
pub trait Compression: Send + Sync + Debug + 'static {
    /// The stable wire name, written to `WireTensor.codec` (e.g. `"none"`, `"float16"`).
    ///
    /// # Behavior
    /// Constant for the codec's lifetime; it is the key a receiver looks up in its registry.
    fn name(&self) -> &str;

    /// The proto enum id written to `WireTensor.compression`; `NONE` for codecs outside protocol 7.2.
    fn wire_type(&self) -> CompressionType {
        CompressionType::None
    }

    /// Whether this codec can encode tensors of `dtype` with `ndim` dimensions.
    ///
    /// # Behavior
    /// [`Compression::compress`] returns an error for anything this refuses.
    fn accepts(&self, dtype: DType, ndim: usize) -> bool;

    /// Encodes `tensor` (a whole tensor or a part, see `info`).
    ///
    /// # Behavior
    /// The result names this codec in `codec`, carries the shape and the original dtype name, and
    /// leaves `chunks` at 0. An unaccepted dtype is an [`Error::Codec`](crate::Error::Codec).
    fn compress(&self, tensor: &TensorView<'_>, info: &CompressionInfo) -> Result<WireTensor>;

    /// Decodes a wire tensor produced by this codec (possibly on another machine).
    ///
    /// # Behavior
    /// The output has the original dtype, shape and `requires_grad`. Untrusted input never panics
    /// and never allocates more than the buffer's length justifies: garbage, truncated or
    /// inconsistent buffers give an [`Error::Codec`](crate::Error::Codec).
    fn extract(&self, message: &WireTensor) -> Result<Tensor>;

    /// Encoded bits per original bit for the tensor `info` describes (protocol 7.1), used only to size
    /// parts (protocol 4.3). Must be positive and finite.
    fn estimate_compression_ratio(&self, info: &CompressionInfo) -> f64;

    /// How close a round trip stays to the input for `dtype`.
    fn error_bound(&self, dtype: DType) -> ErrorBound;

    /// Whether this codec's messages name another registered codec rather than this one.
    ///
    /// # Behavior
    /// A selector (protocol 7.3) names the codec it chose, and a wrapper built from settings names
    /// its concrete form (`zstd+uniform8`); receivers decode by the name on the wire, so every
    /// name such a codec writes must be registered too. Plain codecs write their own name.
    fn delegates(&self) -> bool {
        false
    }

    /// What the codec offers.
    fn capabilities(&self) -> CodecCapabilities {
        CodecCapabilities { lossless: false }
    }

    /// Encodes like [`Compression::compress`], appending the buffer to `out` instead of
    /// allocating one, so a caller can reuse one buffer for every part it sends.
    ///
    /// # Behavior
    /// Returns the message `compress` would return with an empty `buffer`; the bytes that buffer
    /// would hold are appended to `out` (what `out` held before stays). On error `out` keeps its
    /// original length. The default calls `compress` and copies; built-in codecs write in place.
    fn encode_into(
        &self,
        tensor: &TensorView<'_>,
        info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Result<WireTensor> {
        encode_via_compress(self, tensor, info, out)
    }

    /// Encodes a reducer's reply in one pass, where the codec has a fused form: the f32 values
    /// `average[i] - decoded[i]`, `decoded` being `part` (a message of this codec) decoded, appended
    /// to `out` as [`Compression::encode_into`] would append them.
    ///
    /// # Behavior
    /// `None`, the default, means the codec has no fused form: the caller then decodes, subtracts
    /// and encodes in steps. `Some` must be bit-equal to those steps (the subtraction in f32). A
    /// `part` that is not f32 or whose element count is not `average.len()` is an
    /// [`Error::Codec`](crate::Error::Codec) (or `None`, for a dtype the fused form does not
    /// cover); on an error `out` keeps its original length.
    fn encode_difference_into(
        &self,
        average: &[f32],
        part: &WireTensor,
        info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Option<Result<WireTensor>> {
        let _ = (average, part, info, out);
        None
    }

    /// Decodes `message` straight into `out` as f32 values, one per element in row-major order.
    ///
    /// # Behavior
    /// `out` ends up bit-equal to [`Compression::extract`]'s values converted to f32. An `out`
    /// whose length is not the message's element count, or a dtype without an f32 form, is an
    /// [`Error::Codec`](crate::Error::Codec); untrusted input is refused as by `extract`, and `out`
    /// may then hold anything. The default calls `extract` and copies.
    fn decode_into(&self, message: &WireTensor, out: &mut [f32]) -> Result<()> {
        decode_via_extract(self, message, out)
    }

    /// Decodes `message` and accumulates it into `out`: `out[i] += weight * decoded[i]`, each
    /// step in f32, so a reducer needs no buffer per sender.
    ///
    /// # Behavior
    /// The result is bit-equal to decoding with [`Compression::decode_into`] and then adding
    /// `weight * decoded[i]`. Errors as `decode_into`, and on an error `out` is unchanged (the
    /// message is checked before anything is added). The default decodes into a temporary vector.
    fn decode_add_into(&self, message: &WireTensor, weight: f32, out: &mut [f32]) -> Result<()> {
        decode_add_via_extract(self, message, weight, out)
    }
}

/// The shape of a wire tensor as `usize`s, with its element count, refusing absurd sizes.
///
/// Codecs call this before allocating anything for a decoded tensor.
///
/// # Errors
/// [`Error::Codec`](crate::Error::Codec) when the element count overflows.
pub fn wire_shape(codec: &str, message: &WireTensor) -> Result<(Vec<usize>, usize)> {
    let shape: Vec<usize> = message.size.iter().map(|&d| d as usize).collect();
    let n = crate::tensor::numel(&shape).map_err(|e| crate::Error::codec(codec, e.to_string()))?;
    Ok((shape, n))
}

/// The message a codec sends for `tensor`, without its buffer: shape, dtype (`dtype`, the
/// tensor's own unless the codec says otherwise), `requires_grad`, and the codec's wire type and
/// registry name. The inverse of [`wire_shape`] and [`wire_dtype`].
pub fn wire_header(tensor: &TensorView<'_>, dtype: DType, wire: CompressionType, codec: &str) -> WireTensor {
    WireTensor {
        buffer: Default::default(),
        size: tensor.shape().iter().map(|&d| d as u32).collect(),
        requires_grad: tensor.requires_grad(),
        dtype: dtype.name().to_string(),
        compression: wire as i32,
        chunks: 0,
        codec: codec.to_string(),
    }
}

/// The dtype named by a wire tensor.
///
/// # Errors
/// [`Error::Codec`](crate::Error::Codec) for an unknown name.
pub fn wire_dtype(codec: &str, message: &WireTensor) -> Result<DType> {
    DType::from_name(&message.dtype).map_err(|e| crate::Error::codec(codec, e.to_string()))
}

/// The registry name of a built-in codec, by its proto enum id (used to decode messages that set
/// only `compression`).
pub fn builtin_codec_name(wire: CompressionType) -> &'static str {
    match wire {
        CompressionType::None => "none",
        CompressionType::Float16 => "float16",
        CompressionType::Meanstd16bit => "meanstd16",
        CompressionType::Uniform8bit => "uniform8",
        CompressionType::Quantile8bit => "quantile8",
        CompressionType::Blockwise8bit => "blockwise8",
    }
}
