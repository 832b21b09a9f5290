//! protocol 7.3 SizeAdaptive: one codec for small tensors, another for large ones.

use std::sync::Arc;

use averager_core::Result;
use averager_core::averager::CodecSpec;
use averager_core::compression::{Compression, CompressionInfo};
use averager_core::registry::PluginConfig;
use serde::{Deserialize, Serialize};

use super::{build, selector_compression};

/// Settings of `size-adaptive`: `{ "threshold": 1000, "less": "float16", "greater_equal":
/// "uniform8" }`; a codec is a registry name or `{ "name": ..., "settings": ... }`.
///
/// Missing fields default to a threshold of 65536 elements, NONE below it and UNIFORM_8BIT from
/// it on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SizeAdaptiveSettings {
    /// Tensors with at least this many elements get `greater_equal`.
    pub threshold: usize,
    /// The codec of smaller tensors.
    pub less: CodecSpec,
    /// The codec of tensors with at least `threshold` elements.
    pub greater_equal: CodecSpec,
}

impl Default for SizeAdaptiveSettings {
    fn default() -> Self {
        SizeAdaptiveSettings {
            threshold: SizeAdaptive::DEFAULT_THRESHOLD,
            less: CodecSpec::Name("none".into()),
            greater_equal: CodecSpec::Name("uniform8".into()),
        }
    }
}

/// Chooses `greater_equal` when the WHOLE tensor (`info.descriptor`) has at least `threshold`
/// elements, else `less`, so every part of a tensor gets the same codec.
#[derive(Debug, Clone)]
pub struct SizeAdaptive {
    threshold: usize,
    less: Arc<dyn Compression>,
    greater_equal: Arc<dyn Compression>,
}

impl SizeAdaptive {
    /// The registry name.
    pub const NAME: &'static str = "size-adaptive";

    /// The threshold of the default settings: 2^16 elements.
    pub const DEFAULT_THRESHOLD: usize = 1 << 16;

    /// A selector of `less` below `threshold` elements and `greater_equal` from it on.
    pub fn new(threshold: usize, less: Arc<dyn Compression>, greater_equal: Arc<dyn Compression>) -> Self {
        SizeAdaptive { threshold, less, greater_equal }
    }

    /// Builds the codecs `settings` names.
    ///
    /// # Errors
    /// The registry's error for a codec it cannot build.
    pub fn from_settings(settings: &SizeAdaptiveSettings) -> Result<Self> {
        Ok(Self::new(settings.threshold, build(&settings.less)?, build(&settings.greater_equal)?))
    }

    /// The codec for the tensor `info` describes.
    ///
    /// # Errors
    /// Never; the signature is every selector's.
    pub fn select(&self, info: &CompressionInfo) -> Result<&Arc<dyn Compression>> {
        Ok(if info.descriptor.numel() >= self.threshold { &self.greater_equal } else { &self.less })
    }

    fn choices(&self) -> impl Iterator<Item = &Arc<dyn Compression>> {
        [&self.less, &self.greater_equal].into_iter()
    }

    fn build(config: &PluginConfig) -> Result<Arc<dyn Compression>> {
        Ok(Arc::new(Self::from_settings(&config.parse()?)?))
    }
}

selector_compression!(SizeAdaptive);

averager_core::register_codec!(
    SizeAdaptive::NAME,
    "chooses a codec by the whole tensor's element count (protocol 7.3 SizeAdaptive)",
    SizeAdaptive::build
);

#[cfg(test)]
mod tests {
    use averager_core::compression::NoCompression;
    use averager_core::tensor::{DType, Tensor};

    use super::*;
    use crate::{Float16, Uniform8Bit};

    #[test]
    fn the_whole_tensors_size_decides_for_every_part() {
        let s = SizeAdaptive::new(1000, Arc::new(Float16), Arc::new(Uniform8Bit));
        let big = Tensor::zeros(vec![10, 100], DType::F32).unwrap();
        let small = Tensor::zeros(vec![999], DType::F32).unwrap();
        let whole = CompressionInfo::for_tensor(0, &big.view());
        for k in 0..4 {
            // A part of 300 elements of the 1000-element tensor still gets the large codec.
            let part = big.flat_view(k * 300..(k * 300 + 300).min(1000)).unwrap();
            assert_eq!(s.compress(&part, &whole.for_part(k, 300)).unwrap().codec, "uniform8");
        }
        let info = CompressionInfo::for_tensor(0, &small.view());
        assert_eq!(s.compress(&small.view(), &info).unwrap().codec, "float16");
        assert_eq!(s.estimate_compression_ratio(&info), 0.5);
        assert_eq!(s.estimate_compression_ratio(&whole.for_part(3, 300)), 0.25);
    }

    #[test]
    fn default_settings_are_none_below_65536_and_uniform8_from_it() {
        let s = SizeAdaptive::from_settings(&SizeAdaptiveSettings::default()).unwrap();
        let at = |n| CompressionInfo {
            descriptor: averager_core::compression::TensorDescriptor {
                shape: vec![n],
                dtype: Some(DType::F32),
                requires_grad: false,
            },
            ..Default::default()
        };
        assert_eq!(s.select(&at(65535)).unwrap().name(), NoCompression::NAME);
        assert_eq!(s.select(&at(65536)).unwrap().name(), Uniform8Bit::NAME);
        let partial: SizeAdaptiveSettings =
            PluginConfig::new(serde_json::json!({ "threshold": 10 })).parse().unwrap();
        assert_eq!(partial, SizeAdaptiveSettings { threshold: 10, ..Default::default() });
    }
}
