#![doc = include_str!("../README.md")]

mod float16;
mod uniform8;

use std::sync::Arc;

pub use float16::Float16;
pub use uniform8::Uniform8Bit;

averager_core::register_codec!(
    Float16::NAME,
    "IEEE half precision, saturating at ±65504 (SPEC 7.2 FLOAT16)",
    |_| Ok(Arc::new(Float16))
);

averager_core::register_codec!(
    Uniform8Bit::NAME,
    "8-bit uniform bins over ±3 sigma with a codebook of bin means (SPEC 7.2 UNIFORM_8BIT)",
    |_| Ok(Arc::new(Uniform8Bit))
);

#[cfg(any(feature = "zstd", feature = "lz4"))]
mod lossless;
mod select;

#[cfg(feature = "lz4")]
pub use lossless::{Lz4, Lz4Settings};
#[cfg(any(feature = "zstd", feature = "lz4"))]
pub use lossless::{MAX_DECODED_BYTES, decoded_cap};
#[cfg(feature = "zstd")]
pub use lossless::{Zstd, ZstdSettings};
pub use select::{
    PerTensor, PerTensorCodecs, PerTensorSettings, RoleAdaptive, RoleAdaptiveSettings, SizeAdaptive,
    SizeAdaptiveSettings,
};
