//! protocol 7.3 PerTensor: a codec per tensor key (the tensor's index, or the name given in the
//! averager's `tensor_infos`).

use std::collections::BTreeMap;
use std::sync::Arc;

use averager_core::averager::CodecSpec;
use averager_core::compression::{Compression, CompressionInfo, TensorKey};
use averager_core::registry::PluginConfig;
use averager_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::{build, selector_compression};

/// The codecs of `per-tensor`: a sequence (by tensor index) or a map (by tensor name; a key that
/// is a number also matches that index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerTensorCodecs {
    /// `codecs[i]` for the tensor with index `i`.
    Sequence(Vec<CodecSpec>),
    /// `codecs[name]` for the tensor named `name` (or with index `name`, when it is a number).
    Map(BTreeMap<String, CodecSpec>),
}

impl Default for PerTensorCodecs {
    fn default() -> Self {
        PerTensorCodecs::Sequence(Vec::new())
    }
}

/// Settings of `per-tensor`: `{ "codecs": ["float16", "uniform8"] }` or `{ "codecs": { "w":
/// "float16", "b": "none" } }`, optionally with `"default": "<codec>"` for the tensors not listed.
///
/// Without `default`, a tensor that has no codec is an error at compress time (protocol 7.3). The
/// registry's default settings (no settings at all) are an empty list with default NONE, so that
/// `per-tensor` builds by name and sends everything uncompressed until configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerTensorSettings {
    /// The codecs by tensor key.
    #[serde(default)]
    pub codecs: PerTensorCodecs,
    /// The codec of tensors not in `codecs`; `None` makes them an error.
    #[serde(default)]
    pub default: Option<CodecSpec>,
}

impl Default for PerTensorSettings {
    fn default() -> Self {
        PerTensorSettings {
            codecs: PerTensorCodecs::default(),
            default: Some(CodecSpec::Name("none".into())),
        }
    }
}

/// Chooses by `info.key`: a codec per tensor index or name, with an optional fallback.
#[derive(Debug, Clone, Default)]
pub struct PerTensor {
    by_index: Vec<Arc<dyn Compression>>,
    by_name: BTreeMap<String, Arc<dyn Compression>>,
    fallback: Option<Arc<dyn Compression>>,
}

impl PerTensor {
    /// The registry name.
    pub const NAME: &'static str = "per-tensor";

    /// `codecs[i]` for the tensor with index `i`.
    pub fn by_index(codecs: Vec<Arc<dyn Compression>>) -> Self {
        PerTensor { by_index: codecs, ..Default::default() }
    }

    /// `codecs[name]` for the tensor named `name`; a name that is a number also matches that index.
    pub fn by_name(codecs: impl IntoIterator<Item = (String, Arc<dyn Compression>)>) -> Self {
        PerTensor { by_name: codecs.into_iter().collect(), ..Default::default() }
    }

    /// Gives tensors without a codec of their own `fallback` instead of an error.
    pub fn with_fallback(mut self, fallback: Arc<dyn Compression>) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// Builds the codecs `settings` names.
    ///
    /// # Errors
    /// The registry's error for a codec it cannot build.
    pub fn from_settings(settings: &PerTensorSettings) -> Result<Self> {
        let mut selector = match &settings.codecs {
            PerTensorCodecs::Sequence(specs) => {
                Self::by_index(specs.iter().map(build).collect::<Result<_>>()?)
            }
            PerTensorCodecs::Map(specs) => Self::by_name(
                specs.iter().map(|(k, spec)| Ok((k.clone(), build(spec)?))).collect::<Result<Vec<_>>>()?,
            ),
        };
        selector.fallback = settings.default.as_ref().map(build).transpose()?;
        Ok(selector)
    }

    /// The codec for the tensor `info` describes.
    ///
    /// # Errors
    /// [`Error::Codec`] when the key has no codec and there is no fallback.
    pub fn select(&self, info: &CompressionInfo) -> Result<&Arc<dyn Compression>> {
        let listed = match &info.key {
            TensorKey::Index(i) => self.by_index.get(*i).or_else(|| self.by_name.get(&i.to_string())),
            TensorKey::Name(name) => self.by_name.get(name),
        };
        listed.or(self.fallback.as_ref()).ok_or_else(|| {
            Error::codec(Self::NAME, format!("no codec for tensor {:?} and no default", info.key))
        })
    }

    fn choices(&self) -> impl Iterator<Item = &Arc<dyn Compression>> {
        self.by_index.iter().chain(self.by_name.values()).chain(self.fallback.as_ref())
    }

    fn build(config: &PluginConfig) -> Result<Arc<dyn Compression>> {
        Ok(Arc::new(Self::from_settings(&config.parse()?)?))
    }
}

selector_compression!(PerTensor);

averager_core::register_codec!(
    PerTensor::NAME,
    "chooses a codec by tensor index or name (protocol 7.3 PerTensor)",
    PerTensor::build
);

#[cfg(test)]
mod tests {
    use averager_core::tensor::{DType, Tensor};

    use super::*;

    fn settings(value: serde_json::Value) -> PerTensor {
        PerTensor::from_settings(&PluginConfig::new(value).parse().unwrap()).unwrap()
    }

    fn info(key: TensorKey) -> CompressionInfo {
        let t = Tensor::zeros(vec![4], DType::F32).unwrap();
        CompressionInfo { key, ..CompressionInfo::for_tensor(0, &t.view()) }
    }

    fn chosen(s: &PerTensor, key: TensorKey) -> Result<String> {
        let t = Tensor::zeros(vec![4], DType::F32).unwrap();
        s.compress(&t.view(), &info(key)).map(|w| w.codec)
    }

    #[test]
    fn a_sequence_selects_by_index_and_a_missing_key_is_an_error() {
        let s = settings(serde_json::json!({ "codecs": ["float16", "uniform8"] }));
        assert_eq!(chosen(&s, TensorKey::Index(0)).unwrap(), "float16");
        assert_eq!(chosen(&s, TensorKey::Index(1)).unwrap(), "uniform8");
        assert_eq!(s.estimate_compression_ratio(&info(TensorKey::Index(1))), 0.25);
        for key in [TensorKey::Index(2), TensorKey::Name("w".into())] {
            assert!(matches!(chosen(&s, key.clone()), Err(Error::Codec { .. })), "{key:?}");
            assert_eq!(s.estimate_compression_ratio(&info(key)), 1.0);
        }
    }

    #[test]
    fn a_map_selects_by_name_or_numeric_index_with_an_optional_default() {
        let s = settings(serde_json::json!({ "codecs": { "w": "float16", "1": "uniform8" } }));
        assert_eq!(chosen(&s, TensorKey::Name("w".into())).unwrap(), "float16");
        assert_eq!(chosen(&s, TensorKey::Index(1)).unwrap(), "uniform8");
        assert!(chosen(&s, TensorKey::Name("b".into())).is_err());

        let s = settings(serde_json::json!({ "codecs": { "w": "float16" }, "default": "uniform8" }));
        assert_eq!(chosen(&s, TensorKey::Name("b".into())).unwrap(), "uniform8");
        assert_eq!(chosen(&s, TensorKey::Index(7)).unwrap(), "uniform8");
    }

    #[test]
    fn no_settings_send_everything_uncompressed() {
        let s = PerTensor::from_settings(&PerTensorSettings::default()).unwrap();
        assert_eq!(chosen(&s, TensorKey::Index(3)).unwrap(), "none");
        assert!(s.capabilities().lossless);
        let empty: PerTensorSettings = PluginConfig::new(serde_json::json!({})).parse().unwrap();
        assert_eq!(empty.default, None);
    }
}
