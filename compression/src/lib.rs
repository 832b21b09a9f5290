#![doc = include_str!("../README.md")]

mod blockwise8;
mod bucket_table;
mod codebook;
mod decoded_f32;
mod float16;
#[cfg(any(feature = "zstd", feature = "lz4"))]
mod lossless;
mod meanstd16;
mod quantile8;
mod radix;
mod sample;
mod select;
mod sums;
#[cfg(test)]
mod test_support;
mod uniform8;

use std::sync::Arc;

pub use blockwise8::Blockwise8Bit;
pub use float16::Float16;
#[cfg(feature = "lz4")]
pub use lossless::{Lz4, Lz4Settings};
#[cfg(any(feature = "zstd", feature = "lz4"))]
pub use lossless::{MAX_DECODED_BYTES, decoded_cap};
#[cfg(feature = "zstd")]
pub use lossless::{Zstd, ZstdSettings};
pub use meanstd16::MeanStd16Bit;
pub use quantile8::Quantile8Bit;
pub use select::{
    PerTensor, PerTensorCodecs, PerTensorSettings, RoleAdaptive, RoleAdaptiveSettings, SizeAdaptive,
    SizeAdaptiveSettings,
};
pub use uniform8::Uniform8Bit;

// The protocol 7.2 formats. The selectors and lossless wrappers register themselves in their modules.
averager_core::register_codec!(
    Float16::NAME,
    "IEEE half precision, saturating at ±65504 (protocol 7.2 FLOAT16)",
    |_| Ok(Arc::new(Float16))
);
averager_core::register_codec!(
    MeanStd16Bit::NAME,
    "IEEE half precision of each last-axis row after removing its mean and std (protocol 7.2 MEANSTD_16BIT)",
    |_| Ok(Arc::new(MeanStd16Bit))
);
averager_core::register_codec!(
    Uniform8Bit::NAME,
    "8-bit uniform bins over ±3 sigma with a codebook of bin means (protocol 7.2 UNIFORM_8BIT)",
    |_| Ok(Arc::new(Uniform8Bit))
);
averager_core::register_codec!(
    Quantile8Bit::NAME,
    "8-bit equal-population buckets from estimated quantiles, codebook of bucket means (protocol 7.2 QUANTILE_8BIT)",
    |_| Ok(Arc::new(Quantile8Bit))
);
averager_core::register_codec!(
    Blockwise8Bit::NAME,
    "8-bit dynamic code scaled per block of 4096 by the absolute maximum (protocol 7.2 BLOCKWISE_8BIT)",
    |_| Ok(Arc::new(Blockwise8Bit))
);
