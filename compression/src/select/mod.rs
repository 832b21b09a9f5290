//! protocol 7.3: adaptive selectors. Each chooses one of several codecs per tensor (by size, role or
//! key) and lets it write the message, so the wire names the chosen base codec and a receiver
//! decodes it through its registry without knowing the selector or its settings.
//!
//! Selectors are encoder-side configuration: unlike other codecs, their messages name the chosen
//! codec, not the selector (the `# Behavior` of `Compression::compress` names the codec that
//! wrote the buffer). Their `extract` decodes by the message's codec through
//! `Registry::global()`, so a selector also decodes what it sent.

mod per_tensor;
mod role;
mod size;

use std::sync::Arc;

use averager_core::averager::CodecSpec;
use averager_core::compression::{CodecCapabilities, Compression, ErrorBound, WireTensor};
use averager_core::registry::Registry;
use averager_core::tensor::{DType, Tensor, TensorView};
use averager_core::{Error, Result};

pub use per_tensor::{PerTensor, PerTensorCodecs, PerTensorSettings};
pub use role::{RoleAdaptive, RoleAdaptiveSettings};
pub use size::{SizeAdaptive, SizeAdaptiveSettings};

/// The names of this crate's selectors: none of them ever names a message.
const SELECTOR_NAMES: [&str; 3] = [SizeAdaptive::NAME, RoleAdaptive::NAME, PerTensor::NAME];

/// Builds the codec a setting names, nested selectors included.
fn build(spec: &CodecSpec) -> Result<Arc<dyn Compression>> {
    Registry::global().build_codec(spec.name(), &spec.settings())
}

/// Decodes `message` with the codec it names.
///
/// A message naming a selector is refused: the selector it resolves to would decode it the same
/// way, forever.
fn extract_by_wire(selector: &str, message: &WireTensor) -> Result<Tensor> {
    codec_by_wire(selector, message)?.extract(message)
}

/// The codec `message` names, through the global registry (its cache: no codec is built per
/// message), refusing selector names as [`extract_by_wire`] does.
fn codec_by_wire(selector: &str, message: &WireTensor) -> Result<Arc<dyn Compression>> {
    if SELECTOR_NAMES.contains(&message.codec.as_str()) {
        return Err(Error::codec(
            selector,
            format!("the message names the selector {:?} instead of a base codec", message.codec),
        ));
    }
    Registry::global().codec_for(message)
}

/// Whether every codec a selector may choose accepts the dtype and rank: the selector cannot know
/// which one a tensor gets from these alone.
fn all_accept<'a>(
    mut codecs: impl Iterator<Item = &'a Arc<dyn Compression>>,
    dtype: DType,
    ndim: usize,
) -> bool {
    codecs.all(|c| c.accepts(dtype, ndim))
}

/// [`Error::Codec`] for a tensor that `selector` does not accept.
fn check_accepted(selector: &dyn Compression, tensor: &TensorView<'_>) -> Result<()> {
    if selector.accepts(tensor.dtype(), tensor.shape().len()) {
        return Ok(());
    }
    Err(Error::codec(
        selector.name(),
        format!(
            "{} tensors of {} dimensions are refused by one of its codecs",
            tensor.dtype(),
            tensor.shape().len()
        ),
    ))
}

/// Lossless only when every choice is.
fn all_lossless<'a>(mut codecs: impl Iterator<Item = &'a Arc<dyn Compression>>) -> CodecCapabilities {
    CodecCapabilities { lossless: codecs.all(|c| c.capabilities().lossless) }
}

/// The loosest of the choices' bounds for `dtype`.
fn loosest_bound<'a>(codecs: impl Iterator<Item = &'a Arc<dyn Compression>>, dtype: DType) -> ErrorBound {
    codecs.map(|c| c.error_bound(dtype)).fold(ErrorBound::Exact, looser)
}

/// A bound that both `a` and `b` imply. Exact is the tightest; two elementwise bounds take the
/// larger tolerances; a mean-squared bound absorbs an elementwise one through the mean squared
/// error that `atol + rtol |x|` allows on standard-normal data (what a mean-squared bound is
/// checked on), doubled for the sampling spread of a finite tensor.
fn looser(a: ErrorBound, b: ErrorBound) -> ErrorBound {
    use ErrorBound::{Elementwise, Exact, MeanSquared};
    let elementwise_mse = |atol: f64, rtol: f64| {
        // E[(atol + rtol |x|)^2] for x ~ N(0, 1), where E|x| = sqrt(2 / pi) and E[x^2] = 1.
        2.0 * (atol * atol + 2.0 * atol * rtol * (2.0 / std::f64::consts::PI).sqrt() + rtol * rtol)
    };
    match (a, b) {
        (Exact, other) | (other, Exact) => other,
        (Elementwise { atol: a1, rtol: r1 }, Elementwise { atol: a2, rtol: r2 }) => {
            Elementwise { atol: a1.max(a2), rtol: r1.max(r2) }
        }
        (MeanSquared(m1), MeanSquared(m2)) => MeanSquared(m1.max(m2)),
        (MeanSquared(m), Elementwise { atol, rtol }) | (Elementwise { atol, rtol }, MeanSquared(m)) => {
            MeanSquared(m.max(elementwise_mse(atol, rtol)))
        }
    }
}

/// Implements [`Compression`] for a selector type with `fn select(&self, info) -> Result<&Arc<dyn
/// Compression>>` and `fn choices(&self) -> impl Iterator<Item = &Arc<dyn Compression>>`.
macro_rules! selector_compression {
    ($ty:ty) => {
        impl averager_core::compression::Compression for $ty {
            fn name(&self) -> &str {
                Self::NAME
            }

            /// Whether every codec this may choose accepts the dtype and rank.
            fn accepts(&self, dtype: averager_core::tensor::DType, ndim: usize) -> bool {
                $crate::select::all_accept(self.choices(), dtype, ndim)
            }

            /// The chosen codec's message, which names that codec (see the module docs). A dtype
            /// that another choice refuses is refused here too, whichever codec this tensor gets,
            /// so what a selector accepts does not depend on the tensor's size, role or key.
            fn compress(
                &self,
                tensor: &averager_core::tensor::TensorView<'_>,
                info: &averager_core::compression::CompressionInfo,
            ) -> averager_core::Result<averager_core::compression::WireTensor> {
                $crate::select::check_accepted(self, tensor)?;
                self.select(info)?.compress(tensor, info)
            }

            /// Decodes with the codec the message names, through the global registry.
            fn extract(
                &self,
                message: &averager_core::compression::WireTensor,
            ) -> averager_core::Result<averager_core::tensor::Tensor> {
                $crate::select::extract_by_wire(Self::NAME, message)
            }

            /// The chosen codec's `encode_into`, refusing what another choice refuses, as
            /// `compress` does.
            fn encode_into(
                &self,
                tensor: &averager_core::tensor::TensorView<'_>,
                info: &averager_core::compression::CompressionInfo,
                out: &mut averager_core::compression::BytesMut,
            ) -> averager_core::Result<averager_core::compression::WireTensor> {
                $crate::select::check_accepted(self, tensor)?;
                self.select(info)?.encode_into(tensor, info, out)
            }

            /// The `decode_into` of the codec the message names.
            fn decode_into(
                &self,
                message: &averager_core::compression::WireTensor,
                out: &mut [f32],
            ) -> averager_core::Result<()> {
                $crate::select::codec_by_wire(Self::NAME, message)?.decode_into(message, out)
            }

            /// The `decode_add_into` of the codec the message names.
            fn decode_add_into(
                &self,
                message: &averager_core::compression::WireTensor,
                weight: f32,
                out: &mut [f32],
            ) -> averager_core::Result<()> {
                $crate::select::codec_by_wire(Self::NAME, message)?.decode_add_into(message, weight, out)
            }

            /// The chosen codec's estimate; 1 (no compression) when there is none to choose,
            /// which `compress` then reports as an error.
            fn estimate_compression_ratio(&self, info: &averager_core::compression::CompressionInfo) -> f64 {
                self.select(info).map_or(1.0, |c| c.estimate_compression_ratio(info))
            }

            /// The loosest bound of the codecs this may choose.
            fn error_bound(
                &self,
                dtype: averager_core::tensor::DType,
            ) -> averager_core::compression::ErrorBound {
                $crate::select::loosest_bound(self.choices(), dtype)
            }

            fn capabilities(&self) -> averager_core::compression::CodecCapabilities {
                $crate::select::all_lossless(self.choices())
            }

            /// Messages name the codec chosen (protocol 7.3).
            fn delegates(&self) -> bool {
                true
            }
        }
    };
}
use selector_compression;

#[cfg(test)]
mod tests {
    use averager_core::compression::{CompressionInfo, CompressionType, NoCompression, TensorRole};
    use averager_core::registry::PluginConfig;

    use super::*;
    use crate::{Float16, Uniform8Bit};

    #[test]
    fn the_loosest_bound_absorbs_tighter_ones() {
        use ErrorBound::{Elementwise, Exact, MeanSquared};
        assert_eq!(looser(Exact, Exact), Exact);
        assert_eq!(looser(Exact, MeanSquared(0.1)), MeanSquared(0.1));
        assert_eq!(
            looser(Elementwise { atol: 1.0, rtol: 0.0 }, Elementwise { atol: 0.0, rtol: 0.5 }),
            Elementwise { atol: 1.0, rtol: 0.5 }
        );
        assert_eq!(looser(MeanSquared(1e-2), Elementwise { atol: 1e-8, rtol: 1e-3 }), MeanSquared(1e-2));
        assert_eq!(looser(Elementwise { atol: 1.0, rtol: 0.0 }, MeanSquared(1e-2)), MeanSquared(2.0));
    }

    #[test]
    fn selectors_decode_by_the_wire_and_refuse_selector_names() {
        let t = Tensor::from_f32(vec![4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let wire = Float16.compress(&t.view(), &CompressionInfo::for_tensor(0, &t.view())).unwrap();
        let selector = SizeAdaptive::new(2, Arc::new(NoCompression), Arc::new(Uniform8Bit));
        assert_eq!(selector.extract(&wire).unwrap(), Float16.extract(&wire).unwrap());
        for name in SELECTOR_NAMES {
            let forged =
                WireTensor { codec: name.into(), compression: CompressionType::None as i32, ..wire.clone() };
            assert!(matches!(selector.extract(&forged), Err(Error::Codec { .. })), "{name}");
            assert!(Registry::global().decode(&forged).is_err(), "{name}");
        }
        let unknown = WireTensor { codec: "acme-topk".into(), ..wire };
        assert!(matches!(selector.extract(&unknown), Err(Error::UnknownPlugin { .. })));
    }

    #[test]
    fn nested_selectors_build_from_json() {
        // protocol 10.2 scenario 15's averaging codec, as a configuration file would give it.
        let settings = serde_json::json!({
            "parameter": "float16",
            "gradient": {
                "name": "size-adaptive",
                "settings": { "threshold": 1000, "less": "float16", "greater_equal": "uniform8" }
            },
            "optimizer": "none",
            "default": "none"
        });
        let codec = Registry::global().build_codec(RoleAdaptive::NAME, &PluginConfig::new(settings)).unwrap();
        let chosen = |role, n: usize| {
            let t = Tensor::zeros(vec![n], DType::F32).unwrap();
            let info = CompressionInfo::for_tensor(0, &t.view()).with_role(role);
            let wire = codec.compress(&t.view(), &info).unwrap();
            (wire.codec, codec.estimate_compression_ratio(&info))
        };
        assert_eq!(chosen(TensorRole::Parameter, 10), ("float16".into(), 0.5));
        assert_eq!(chosen(TensorRole::Gradient, 999), ("float16".into(), 0.5));
        assert_eq!(chosen(TensorRole::Gradient, 1000), ("uniform8".into(), 0.25));
        assert_eq!(chosen(TensorRole::Optimizer, 5000), ("none".into(), 1.0));
        assert_eq!(chosen(TensorRole::Activation, 5000), ("none".into(), 1.0));
        assert_eq!(chosen(TensorRole::Unspecified, 5000), ("none".into(), 1.0));
        assert_eq!(codec.error_bound(DType::F32), Uniform8Bit.error_bound(DType::F32));
        assert!(!codec.capabilities().lossless);
        assert!(!codec.accepts(DType::I64, 1), "uniform8 refuses integers, so the selector must");

        let bad =
            serde_json::json!({ "gradient": { "name": "size-adaptive", "settings": { "less": "nope" } } });
        assert!(matches!(
            Registry::global().build_codec(RoleAdaptive::NAME, &PluginConfig::new(bad)),
            Err(Error::UnknownPlugin { .. })
        ));
        let typo = serde_json::json!({ "gradeint": "float16" });
        assert!(matches!(
            Registry::global().build_codec(RoleAdaptive::NAME, &PluginConfig::new(typo)),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn default_settings_build_every_selector() {
        for name in SELECTOR_NAMES {
            assert_eq!(Registry::global().codec(name).unwrap().name(), name);
        }
    }
}
