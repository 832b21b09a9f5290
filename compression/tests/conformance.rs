//! The compression conformance suite on every codec of this crate.

use std::sync::Arc;

use averager_compression::{
    Blockwise8Bit, Float16, MeanStd16Bit, PerTensor, Quantile8Bit, RoleAdaptive, SizeAdaptive, Uniform8Bit,
};
use averager_core::compression::Compression;

averager_conformance::compression_suite!(float16, || Arc::new(Float16) as Arc<dyn Compression>, lacks: [lossless]);
averager_conformance::compression_suite!(uniform8, || Arc::new(Uniform8Bit) as Arc<dyn Compression>, lacks: [lossless]);
averager_conformance::compression_suite!(meanstd16, || Arc::new(MeanStd16Bit) as Arc<dyn Compression>, lacks: [lossless]);
averager_conformance::compression_suite!(quantile8, || Arc::new(Quantile8Bit) as Arc<dyn Compression>, lacks: [lossless]);
averager_conformance::compression_suite!(blockwise8, || Arc::new(Blockwise8Bit) as Arc<dyn Compression>, lacks: [lossless]);

// The lossless wrappers, built by their wire names as a receiver builds them.
#[cfg(feature = "zstd")]
averager_conformance::compression_suite!(zstd_none, || averager_core::Registry::global()
    .codec("zstd+none")
    .unwrap());
#[cfg(feature = "zstd")]
averager_conformance::compression_suite!(zstd_uniform8, || averager_core::Registry::global()
    .codec("zstd+uniform8")
    .unwrap(), lacks: [lossless]);
#[cfg(feature = "lz4")]
averager_conformance::compression_suite!(lz4_none, || averager_core::Registry::global()
    .codec("lz4+none")
    .unwrap());
#[cfg(feature = "lz4")]
averager_conformance::compression_suite!(lz4_float16, || averager_core::Registry::global()
    .codec("lz4+float16")
    .unwrap(), lacks: [lossless]);

// The plain wrappers, built from settings, write their concrete `<format>+<inner>` name.
#[cfg(feature = "zstd")]
averager_conformance::compression_suite!(zstd_plain, || averager_core::Registry::global()
    .codec("zstd")
    .unwrap());
#[cfg(feature = "lz4")]
averager_conformance::compression_suite!(lz4_plain, || averager_core::Registry::global()
    .codec("lz4")
    .unwrap());

/// protocol 7.3's selectors. Their messages name the codec they chose, not themselves (they declare
/// `delegates()`, and the suite checks headers against the named codec); [`selector_round_trips`]
/// additionally checks each message against the codec the selector should have chosen.
mod selectors {
    use std::sync::Arc;

    use averager_compression::{PerTensor, RoleAdaptive, SizeAdaptive};
    use averager_conformance::compression::checks::{
        bit_equal, check_finite, check_same_layout, check_wire_header, check_within_bound, compress_caught,
        describe, extract_caught, in_context,
    };
    use averager_conformance::compression::fixtures::{
        EMPTY_SHAPES, ROUND_TRIP_SHAPE, accepted_dtypes, case_rng, constant_tensor, random_tensor,
    };
    use averager_conformance::{Failure, Outcome};
    use averager_core::compression::{Compression, CompressionInfo, TensorRole};
    use averager_core::registry::{PluginConfig, Registry};
    use averager_core::tensor::{Tensor, TensorView};

    /// A selector and the codec it chooses for an info.
    pub(super) trait Selector: Compression {
        fn chosen(&self, info: &CompressionInfo) -> Arc<dyn Compression>;
    }

    macro_rules! selector {
        ($ty:ty) => {
            impl Selector for $ty {
                fn chosen(&self, info: &CompressionInfo) -> Arc<dyn Compression> {
                    self.select(info).expect("the suite's tensors all have a codec").clone()
                }
            }
        };
    }
    selector!(SizeAdaptive);
    selector!(RoleAdaptive);
    selector!(PerTensor);

    /// Compresses with the selector, checks the header against the chosen codec, decodes with the
    /// selector and the registry, and checks layout and both the selector's and the chosen
    /// codec's bounds.
    fn check(
        selector: &dyn Selector,
        tensor: &TensorView<'_>,
        info: &CompressionInfo,
    ) -> Result<Tensor, Failure> {
        let chosen = selector.chosen(info);
        let context =
            format!("selector {:?} choosing {:?}, {}", selector.name(), chosen.name(), describe(tensor));
        let wire = compress_caught(selector, tensor, info)?
            .map_err(|e| Failure::new(format!("{context}: compress failed: {e}")))?;
        // A nested selector's choice is checked by its own suite; here its message must name a
        // registered base codec.
        let base = if [SizeAdaptive::NAME, RoleAdaptive::NAME, PerTensor::NAME].contains(&chosen.name()) {
            Registry::global().codec(&wire.codec).map_err(|e| Failure::new(format!("{context}: {e}")))?
        } else {
            chosen.clone()
        };
        check_wire_header(&*base, tensor, &wire).map_err(in_context(&context))?;
        let decoded = extract_caught(selector, &wire, "its own message")?
            .map_err(|e| Failure::new(format!("{context}: extract failed: {e}")))?;
        let via_registry = Registry::global()
            .decode(&wire)
            .map_err(|e| Failure::new(format!("{context}: Registry::decode: {e}")))?;
        if !bit_equal(&decoded.view(), &via_registry.view()) {
            return Err(Failure::new(format!("{context}: the registry decodes differently")));
        }
        check_same_layout(tensor, &decoded).map_err(in_context(&context))?;
        for bound in [selector.error_bound(tensor.dtype()), chosen.error_bound(tensor.dtype())] {
            check_within_bound(bound, tensor, &decoded).map_err(in_context(&context))?;
        }
        Ok(decoded)
    }

    /// The suite's round-trip cases (every accepted dtype, ranks 0 to 3, every role, empty
    /// tensors, scalars, parts, constants) with the header checked against the chosen codec.
    pub(super) async fn selector_round_trips(selector: &dyn Selector) -> Outcome {
        let mut rng = case_rng("selector_round_trips");
        let whole = |t: &Tensor, key| CompressionInfo::for_tensor(key, &t.view());
        let dtypes = accepted_dtypes(selector, ROUND_TRIP_SHAPE.len());
        if dtypes.is_empty() {
            return Err(Failure::new(format!("selector {:?} accepts no 2-d dtype", selector.name())));
        }
        for dtype in dtypes {
            for requires_grad in [false, true] {
                let t = random_tensor(&mut rng, dtype, &ROUND_TRIP_SHAPE).with_requires_grad(requires_grad);
                check(selector, &t.view(), &whole(&t, 0))?;
            }
            for role in [
                TensorRole::Activation,
                TensorRole::Parameter,
                TensorRole::Gradient,
                TensorRole::Optimizer,
                TensorRole::Unspecified,
            ] {
                let t = random_tensor(&mut rng, dtype, &ROUND_TRIP_SHAPE);
                check(selector, &t.view(), &whole(&t, 1).with_role(role))
                    .map_err(in_context(format!("{role:?}")))?;
            }
            let t = random_tensor(&mut rng, dtype, &ROUND_TRIP_SHAPE).with_requires_grad(true);
            for (k, start) in (0..t.numel()).step_by(1000).enumerate() {
                let part = t.flat_view(start..t.numel().min(start + 1000))?;
                check(selector, &part, &whole(&t, 2).for_part(k, 1000))
                    .map_err(in_context(format!("part {k}")))?;
            }
            for shape in [&[5, 5][..], &ROUND_TRIP_SHAPE] {
                for value in [0.0, 1.5, -3.0] {
                    let t = constant_tensor(dtype, shape, value);
                    let decoded = check(selector, &t.view(), &whole(&t, 0))?;
                    check_finite(&decoded).map_err(in_context(format!("constant {value}")))?;
                }
            }
        }
        for shape in [&[][..], &[7], &[3, 5], &[2, 3, 4]].into_iter().chain(EMPTY_SHAPES) {
            for dtype in accepted_dtypes(selector, shape.len()) {
                let t = random_tensor(&mut rng, dtype, shape).with_requires_grad(true);
                check(selector, &t.view(), &whole(&t, 0))?;
            }
        }
        Ok(())
    }

    /// A selector built from settings as the registry would build it.
    pub(super) fn settings<T: serde::de::DeserializeOwned + Default>(value: serde_json::Value) -> T {
        PluginConfig::new(value).parse().expect("valid settings")
    }
}

/// The whole suite for `$build` (an expression of a concrete selector type), plus
/// [`selectors::selector_round_trips`], which also checks each message against the chosen codec.
/// Selectors declare `delegates()`, so the suite checks their headers against the codec each
/// message names.
macro_rules! selector_suite {
    ($name:ident, $build:expr $(, lacks: $lacks:tt)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            averager_conformance::compression_suite!(suite, || Arc::new($build) as Arc<dyn Compression> $(, lacks: $lacks)?);

            #[test]
            fn selector_round_trips() {
                let selector = $build;
                averager_conformance::run_case("selector_round_trips", async move {
                    selectors::selector_round_trips(&selector).await
                });
            }
        }
    };
}

// Default settings, as `Registry::global().codec(name)` builds them.
selector_suite!(size_adaptive, SizeAdaptive::from_settings(&Default::default()).unwrap(), lacks: [lossless]);
selector_suite!(role_adaptive, RoleAdaptive::from_settings(&Default::default()).unwrap());
selector_suite!(per_tensor, PerTensor::from_settings(&Default::default()).unwrap());

// Settings under which the suite's tensors reach every choice.
selector_suite!(
    size_adaptive_1000,
    SizeAdaptive::from_settings(&selectors::settings(serde_json::json!({
        "threshold": 1000, "less": "float16", "greater_equal": "uniform8"
    })))
    .unwrap(),
    lacks: [lossless]
);
selector_suite!(
    role_adaptive_scenario_15,
    RoleAdaptive::from_settings(&selectors::settings(serde_json::json!({
        "parameter": "float16",
        "gradient": { "name": "size-adaptive", "settings": { "threshold": 1000, "less": "float16", "greater_equal": "uniform8" } },
        "optimizer": "none",
        "default": "none"
    })))
    .unwrap(),
    lacks: [lossless]
);
selector_suite!(
    per_tensor_sequence,
    PerTensor::from_settings(&selectors::settings(serde_json::json!({
        "codecs": ["float16", "uniform8", "none"]
    })))
    .unwrap(),
    lacks: [lossless]
);
