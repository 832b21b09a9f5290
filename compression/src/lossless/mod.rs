//! protocol 0 and 7.1: lossless wrappers. An inner codec encodes the tensor, then zstd or lz4
//! compresses its buffer; the message is named `zstd+<inner>` or `lz4+<inner>` (protocol 0's
//! `Tensor.codec`, e.g. `zstd+uniform8`) so that a receiver finds the wrapper, and through it the
//! inner codec, in its registry.
//!
//! The `compression` enum of a wrapped message is NONE: a decoder that reads only the enum must not
//! mistake a zstd frame for a FLOAT16 buffer, and protocol 0 says a codec outside protocol 7.2 sets `codec`
//! and leaves the enum at NONE.
//!
//! Decoding never trusts the size a frame declares: it is checked against [`decoded_cap`] (what
//! any inner codec could need for the declared shape, at most [`MAX_DECODED_BYTES`]) and against the
//! most the compressed bytes can expand to, before anything is allocated.

#[cfg(feature = "lz4")]
mod lz4;
#[cfg(feature = "zstd")]
mod zstd;

use std::cell::RefCell;
use std::sync::Arc;

use averager_core::averager::CodecSpec;
use averager_core::compression::{
    BytesMut, Compression, CompressionInfo, CompressionType, WireTensor, builtin_codec_name, wire_shape,
};
use averager_core::registry::Registry;
use averager_core::tensor::{Tensor, TensorView};
use averager_core::{Error, Result};

#[cfg(feature = "lz4")]
pub use lz4::{Lz4, Lz4Settings};
#[cfg(feature = "zstd")]
pub use zstd::{Zstd, ZstdSettings};

/// The most bytes a wrapper decompresses for one message, whatever the declared shape: 1 GiB.
///
/// Parts of an all-reduce are far smaller (`part_size_bytes`, 512 KiB by default); a whole state
/// tensor whose inner encoding exceeds this cannot travel through a wrapper.
pub const MAX_DECODED_BYTES: usize = 1 << 30;

/// Bytes per declared element that an inner codec may legitimately use. protocol 7.2's largest is
/// MEANSTD_16BIT on rows of one element (2 bytes of f16 plus an f32 mean and std per row: 10);
/// 16 leaves room for third-party codecs of similar overhead.
const MAX_BYTES_PER_ELEMENT: usize = 16;

/// Fixed headroom for headers such as codebooks (UNIFORM_8BIT's is 1032 bytes).
const HEADER_HEADROOM: usize = 64 * 1024;

/// The most decompressed bytes a message of `codec` may hold: 16 bytes per
/// declared element plus 64 KiB, overflow-checked and never above [`MAX_DECODED_BYTES`].
///
/// # Errors
/// [`Error::Codec`] when the declared shape's element count overflows.
pub fn decoded_cap(codec: &str, message: &WireTensor) -> Result<usize> {
    let (_, numel) = wire_shape(codec, message)?;
    // A shape whose bytes do not even fit a usize is forged: refuse it rather than granting the
    // largest cap.
    let cap = numel
        .checked_mul(MAX_BYTES_PER_ELEMENT)
        .and_then(|b| b.checked_add(HEADER_HEADROOM))
        .ok_or_else(|| Error::codec(codec, format!("a shape of {numel} elements cannot be decoded")))?;
    Ok(cap.min(MAX_DECODED_BYTES))
}

/// Whether `name` is a lossless wrapper (plain or `<format>+<inner>`): wrappers do not nest, since
/// compressing compressed bytes gains nothing and nesting would let a forged name chain
/// decompressions.
fn is_wrapper(name: &str) -> bool {
    ["zstd", "lz4"].iter().any(|p| name == *p || name.strip_prefix(p).is_some_and(|r| r.starts_with('+')))
}

/// The inner codec of a wrapper built from settings: the named (and configured) codec, looked
/// up in the global registry so that codecs of other crates work once they are linked.
fn build_inner(spec: &CodecSpec) -> Result<Arc<dyn Compression>> {
    if is_wrapper(spec.name()) {
        return Err(Error::Config(format!("lossless wrappers do not nest (inner codec {:?})", spec.name())));
    }
    Registry::global().build_codec(spec.name(), &spec.settings())
}

/// What a lossless format does to a buffer; the wrapper around it is shared.
trait Framing: Send + Sync + std::fmt::Debug + 'static {
    /// The wire name's prefix before `+`: `zstd` or `lz4`.
    const PREFIX: &'static str;

    fn compress(&self, data: &[u8]) -> Result<Vec<u8>>;

    /// Decompresses `data`, refusing (before allocating) anything that would exceed `cap` bytes.
    fn decompress(&self, data: &[u8], cap: usize) -> Result<Vec<u8>>;

    /// Appends what [`Framing::compress`] returns to `out`, without a buffer of its own; on an
    /// error `out` keeps its length.
    fn compress_into(&self, data: &[u8], out: &mut BytesMut) -> Result<()>;

    /// [`Framing::decompress`] into `out`, which is cleared first and reuses its allocation.
    fn decompress_into(&self, data: &[u8], cap: usize, out: &mut BytesMut) -> Result<()>;
}

/// The most a thread keeps in its scratch buffer between calls: enough for all-reduce parts
/// (512 KiB by default) many times over, while one huge whole-tensor message does not pin its
/// size for the thread's lifetime.
const KEEP_SCRATCH: usize = 16 << 20;

thread_local! {
    /// The inner codec's buffer, reused per thread so that the `_into` methods allocate nothing
    /// per part once it has grown.
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// This thread's scratch buffer, empty. Taken out of the thread-local rather than borrowed, so a
/// codec that somehow re-enters a wrapper gets a fresh one instead of a borrow panic.
fn take_scratch() -> BytesMut {
    let mut scratch = SCRATCH.with_borrow_mut(std::mem::take);
    scratch.clear();
    scratch
}

/// Returns a scratch buffer for the next call, unless it grew past [`KEEP_SCRATCH`].
fn give_back(scratch: BytesMut) {
    if scratch.capacity() <= KEEP_SCRATCH {
        SCRATCH.with_borrow_mut(|slot| {
            if slot.capacity() < scratch.capacity() {
                *slot = scratch;
            }
        });
    }
}

/// An inner codec and a lossless format around its buffer.
#[derive(Debug)]
struct Wrapped<F: Framing> {
    /// `<prefix>+<inner>` for a wrapper of one inner codec; the bare prefix for one built from the
    /// plain registry name, which like a selector (protocol 7.3) is an encoder-side configuration whose
    /// messages name the concrete wrapper.
    name: String,
    inner: Arc<dyn Compression>,
    framing: F,
}

impl<F: Framing> Wrapped<F> {
    fn new(inner: Arc<dyn Compression>, framing: F) -> Self {
        Wrapped { name: format!("{}+{}", F::PREFIX, inner.name()), inner, framing }
    }

    /// The wrapper of the concrete registry name `<prefix>+<inner_name>`: `configured` may name
    /// the inner codec only to repeat it.
    fn concrete(inner_name: &str, configured: Option<&CodecSpec>, framing: F) -> Result<Self> {
        if let Some(spec) = configured
            && spec.name() != inner_name
        {
            return Err(Error::Config(format!(
                "{}+{inner_name} wraps {inner_name}, not {}; use the plain name {:?} to choose the inner codec",
                F::PREFIX,
                spec.name(),
                F::PREFIX
            )));
        }
        let inner = match configured {
            Some(spec) => build_inner(spec)?,
            None => Registry::global().codec(inner_name)?,
        };
        Ok(Self::new(inner, framing))
    }

    /// The wrapper of the plain registry name: the inner codec comes from the settings (NONE
    /// when absent).
    fn plain(configured: Option<&CodecSpec>, framing: F) -> Result<Self> {
        let inner = match configured {
            Some(spec) => build_inner(spec)?,
            None => Registry::global().codec("none")?,
        };
        Ok(Wrapped { name: F::PREFIX.to_string(), inner, framing })
    }

    fn compress(&self, tensor: &TensorView<'_>, info: &CompressionInfo) -> Result<WireTensor> {
        let inner = self.inner.compress(tensor, info)?;
        let codec = self.concrete_name(&inner)?;
        let buffer = self.framing.compress(&inner.buffer)?;
        Ok(WireTensor { buffer: buffer.into(), compression: CompressionType::None as i32, codec, ..inner })
    }

    /// `compress` through the inner codec's `encode_into` and a reused per-thread buffer.
    fn encode_into(
        &self,
        tensor: &TensorView<'_>,
        info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Result<WireTensor> {
        let mut scratch = take_scratch();
        let result = self.inner.encode_into(tensor, info, &mut scratch).and_then(|inner| {
            let codec = self.concrete_name(&inner)?;
            self.framing.compress_into(&scratch, out)?;
            Ok(WireTensor { compression: CompressionType::None as i32, codec, ..inner })
        });
        give_back(scratch);
        result
    }

    /// The wire name of a message whose buffer the inner codec wrote: the wrapper of the codec
    /// that actually wrote it (the inner codec itself, or the one a selector chose), so the
    /// receiver decodes through the concrete wrapper of that codec.
    fn concrete_name(&self, inner: &WireTensor) -> Result<String> {
        let inner_name = if inner.codec.is_empty() {
            CompressionType::try_from(inner.compression).map(builtin_codec_name).map_err(|_| {
                Error::codec(
                    &self.name,
                    format!("inner codec wrote unknown compression id {}", inner.compression),
                )
            })?
        } else {
            inner.codec.as_str()
        };
        Ok(format!("{}+{inner_name}", F::PREFIX))
    }

    /// The inner codec's name in a message's `<prefix>+<inner>`, refusing other names and nested
    /// wrappers.
    fn inner_name<'m>(&self, message: &'m WireTensor) -> Result<&'m str> {
        let inner_name = message
            .codec
            .strip_prefix(F::PREFIX)
            .and_then(|rest| rest.strip_prefix('+'))
            .filter(|rest| !rest.is_empty())
            .ok_or_else(|| {
                Error::codec(
                    &self.name,
                    format!("message names codec {:?}, not {}+<inner>", message.codec, F::PREFIX),
                )
            })?;
        if is_wrapper(inner_name) {
            return Err(Error::codec(&self.name, format!("nested wrapper {:?} refused", message.codec)));
        }
        Ok(inner_name)
    }

    /// The codec that decodes the inner message, and the enum id that message carries.
    fn inner_codec(&self, inner_name: &str) -> Result<(Arc<dyn Compression>, CompressionType)> {
        if inner_name == self.inner.name() {
            Ok((self.inner.clone(), self.inner.wire_type()))
        } else {
            // A plain wrapper around a selector decodes what the selector chose. The name is
            // strictly shorter than the message's, so nested lookups end.
            Ok((Registry::global().codec(inner_name)?, CompressionType::None))
        }
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        let inner_name = self.inner_name(message)?;
        let cap = decoded_cap(&self.name, message)?;
        let buffer = self.framing.decompress(&message.buffer, cap)?;
        let (codec, wire_type) = self.inner_codec(inner_name)?;
        let inner = WireTensor {
            buffer: buffer.into(),
            compression: wire_type as i32,
            codec: inner_name.to_string(),
            ..message.clone()
        };
        codec.extract(&inner)
    }

    /// Decompresses into this thread's scratch buffer and hands the inner message to `decode`
    /// (the inner codec's `decode_into` or `decode_add_into`), which writes the caller's output.
    fn decode_with(
        &self,
        message: &WireTensor,
        decode: impl FnOnce(&dyn Compression, &WireTensor) -> Result<()>,
    ) -> Result<()> {
        let inner_name = self.inner_name(message)?;
        let cap = decoded_cap(&self.name, message)?;
        let (codec, wire_type) = self.inner_codec(inner_name)?;
        let mut scratch = take_scratch();
        let result = self.framing.decompress_into(&message.buffer, cap, &mut scratch).and_then(|()| {
            let size = scratch.len();
            let inner = WireTensor {
                buffer: scratch.split().freeze(),
                compression: wire_type as i32,
                codec: inner_name.to_string(),
                size: message.size.clone(),
                requires_grad: message.requires_grad,
                dtype: message.dtype.clone(),
                chunks: message.chunks,
            };
            let result = decode(&*codec, &inner);
            // With the frozen buffer gone, reserving takes its allocation back.
            drop(inner);
            scratch.reserve(size);
            result
        });
        give_back(scratch);
        result
    }
}

/// Implements [`Compression`] for a public wrapper type whose field `0` is a `Wrapped`.
macro_rules! wrapper_compression {
    ($ty:ty) => {
        impl averager_core::compression::Compression for $ty {
            fn name(&self) -> &str {
                &self.0.name
            }

            /// NONE: see the module docs.
            fn wire_type(&self) -> averager_core::compression::CompressionType {
                averager_core::compression::CompressionType::None
            }

            fn accepts(&self, dtype: averager_core::tensor::DType, ndim: usize) -> bool {
                self.0.inner.accepts(dtype, ndim)
            }

            fn compress(
                &self,
                tensor: &averager_core::tensor::TensorView<'_>,
                info: &averager_core::compression::CompressionInfo,
            ) -> averager_core::Result<averager_core::compression::WireTensor> {
                self.0.compress(tensor, info)
            }

            fn extract(
                &self,
                message: &averager_core::compression::WireTensor,
            ) -> averager_core::Result<averager_core::tensor::Tensor> {
                self.0.extract(message)
            }

            fn encode_into(
                &self,
                tensor: &averager_core::tensor::TensorView<'_>,
                info: &averager_core::compression::CompressionInfo,
                out: &mut averager_core::compression::BytesMut,
            ) -> averager_core::Result<averager_core::compression::WireTensor> {
                self.0.encode_into(tensor, info, out)
            }

            /// Decompresses into a reused per-thread buffer, then the inner codec's `decode_into`.
            fn decode_into(
                &self,
                message: &averager_core::compression::WireTensor,
                out: &mut [f32],
            ) -> averager_core::Result<()> {
                self.0.decode_with(message, |codec, inner| codec.decode_into(inner, out))
            }

            /// Decompresses into a reused per-thread buffer, then the inner codec's
            /// `decode_add_into`; `out` is untouched unless the inner message decodes.
            fn decode_add_into(
                &self,
                message: &averager_core::compression::WireTensor,
                weight: f32,
                out: &mut [f32],
            ) -> averager_core::Result<()> {
                self.0.decode_with(message, |codec, inner| codec.decode_add_into(inner, weight, out))
            }

            /// The inner codec's estimate: lossless gains depend on the data, and parts sized as
            /// if there were none still fit the byte budget (up to the format's few bytes of
            /// framing).
            fn estimate_compression_ratio(&self, info: &averager_core::compression::CompressionInfo) -> f64 {
                self.0.inner.estimate_compression_ratio(info)
            }

            fn error_bound(
                &self,
                dtype: averager_core::tensor::DType,
            ) -> averager_core::compression::ErrorBound {
                self.0.inner.error_bound(dtype)
            }

            fn capabilities(&self) -> averager_core::compression::CodecCapabilities {
                self.0.inner.capabilities()
            }

            /// A wrapper built from settings (`zstd`, `lz4`) writes its concrete name
            /// (`zstd+<inner>`), as does any wrapper around a selector.
            fn delegates(&self) -> bool {
                !self.0.name.contains('+') || self.0.inner.delegates()
            }
        }
    };
}
pub(crate) use wrapper_compression;

/// Registers `<prefix>` (inner codec from the settings) and `<prefix>+<inner>` for every format of
/// protocol 7.2, each with the constructor `$build(inner_name_or_none, config)`. Wrappers of codecs that
/// a build lacks still register, and building one says which inner codec is missing.
macro_rules! register_wrappers {
    ($prefix:literal, $what:literal, $build:path) => {
        averager_core::register_codec!(
            $prefix,
            concat!($what, " around the inner codec of its settings; messages name ", $prefix, "+<inner>"),
            |config| $build(None, config)
        );
        $crate::lossless::register_wrappers!(@each $prefix, $what, $build,
            "none", "float16", "meanstd16", "uniform8", "quantile8", "blockwise8");
    };
    (@each $prefix:literal, $what:literal, $build:path, $($inner:literal),*) => {
        $(
            averager_core::register_codec!(
                concat!($prefix, "+", $inner),
                concat!($what, " around ", $inner),
                |config| $build(Some($inner), config)
            );
        )*
    };
}
pub(crate) use register_wrappers;

#[cfg(test)]
mod nesting_tests {
    use super::*;

    #[test]
    fn wrappers_do_not_nest_and_overflowing_shapes_get_no_cap() {
        assert!(is_wrapper("zstd") && is_wrapper("lz4+none") && is_wrapper("zstd+lz4+none"));
        assert!(!is_wrapper("none") && !is_wrapper("zstdx") && !is_wrapper("uniform8"));
        let forged = WireTensor {
            size: vec![u32::MAX, u32::MAX, u32::MAX],
            dtype: "float32".into(),
            ..Default::default()
        };
        assert!(decoded_cap("lz4+none", &forged).is_err());
        assert!(build_inner(&CodecSpec::from("lz4+none")).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_7_2_format_has_a_wrapper_of_each_enabled_kind() {
        let names: Vec<_> = Registry::global().codecs().into_iter().map(|c| c.name).collect();
        let prefixes = [cfg!(feature = "zstd").then_some("zstd"), cfg!(feature = "lz4").then_some("lz4")];
        for wire in [
            CompressionType::None,
            CompressionType::Float16,
            CompressionType::Meanstd16bit,
            CompressionType::Uniform8bit,
            CompressionType::Quantile8bit,
            CompressionType::Blockwise8bit,
        ] {
            for prefix in prefixes.into_iter().flatten() {
                let name = format!("{prefix}+{}", builtin_codec_name(wire));
                assert!(names.contains(&name.as_str()), "{name} is not registered");
                assert!(names.contains(&prefix));
            }
        }
    }

    #[test]
    fn the_cap_follows_the_declared_shape_and_saturates() {
        let message = |size: Vec<u32>| WireTensor { size, dtype: "float32".into(), ..Default::default() };
        assert_eq!(decoded_cap("t", &message(vec![10, 10])).unwrap(), 1600 + HEADER_HEADROOM);
        assert_eq!(decoded_cap("t", &message(vec![])).unwrap(), 16 + HEADER_HEADROOM);
        assert_eq!(decoded_cap("t", &message(vec![u32::MAX])).unwrap(), MAX_DECODED_BYTES);
        assert!(decoded_cap("t", &message(vec![u32::MAX, u32::MAX, u32::MAX])).is_err());
    }
}
