//! The cases on well-formed input: round trips, empty and 0-d tensors, parts, constants, ratios,
//! refusals, capabilities and the registry.

use averager_core::Error;
use averager_core::compression::{CompressionInfo, ErrorBound, TensorDescriptor, TensorRole};
use averager_core::registry::Registry;
use averager_core::tensor::{DType, Tensor};

use super::CodecFactory;
use super::checks::{
    bit_equal, check_finite, check_round_trip, check_wire_header, compress_caught, describe, extract_caught,
    in_context,
};
use super::fixtures::{
    EMPTY_SHAPES, ROUND_TRIP_SHAPE, accepted_dtypes, case_rng, constant_tensor, random_tensor,
};
use crate::{Failure, Outcome, ensure};

/// Shapes of 0 to 3 dimensions, for the promises that hold whatever the rank.
const SHAPES_BY_RANK: [&[usize]; 4] = [&[], &[7], &[3, 5], &[2, 3, 4]];

/// Every role of protocol 7.1, so role-adaptive codecs are exercised on each of their choices.
const ROLES: [TensorRole; 5] = [
    TensorRole::Activation,
    TensorRole::Parameter,
    TensorRole::Gradient,
    TensorRole::Optimizer,
    TensorRole::Unspecified,
];

/// Elements per part in the part cases: several full parts and a shorter last one.
const PART_LEN: usize = 1000;

/// Promise of `extract`: "The output has the original dtype, shape and `requires_grad`", with
/// values within the codec's `error_bound(dtype)`; checked for every accepted dtype on a (123, 45)
/// tensor, with and without `requires_grad`. A codec that accepts no 2-d dtype fails: the suite
/// would check nothing.
pub async fn round_trip_every_accepted_dtype(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("round_trip_every_accepted_dtype");
    let dtypes = accepted_dtypes(&*codec, ROUND_TRIP_SHAPE.len());
    ensure!(!dtypes.is_empty(), "codec {:?} accepts no dtype for 2-d tensors", codec.name());
    for dtype in dtypes {
        for requires_grad in [false, true] {
            let tensor = random_tensor(&mut rng, dtype, &ROUND_TRIP_SHAPE).with_requires_grad(requires_grad);
            check_round_trip(&*codec, &tensor.view(), &CompressionInfo::for_tensor(0, &tensor.view()))?;
        }
    }
    Ok(())
}

/// Promise of `compress`: "The result names this codec in `codec`, carries the shape and the
/// original dtype name, and leaves `chunks` at 0" (and `compression` is the codec's wire type),
/// for tensors of 0 to 3 dimensions.
pub async fn message_names_codec_shape_and_dtype(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("message_names_codec_shape_and_dtype");
    for shape in SHAPES_BY_RANK {
        for dtype in accepted_dtypes(&*codec, shape.len()) {
            let tensor = random_tensor(&mut rng, dtype, shape).with_requires_grad(true);
            let view = tensor.view();
            let context = format!("codec {:?}, {}", codec.name(), describe(&view));
            let wire = compress_caught(&*codec, &view, &CompressionInfo::for_tensor(0, &view))?
                .map_err(|e| Failure::new(format!("{context}: compress of an accepted dtype failed: {e}")))?;
            check_wire_header(&*codec, &view, &wire).map_err(in_context(&context))?;
        }
    }
    Ok(())
}

/// Promise of `extract` for every role: a role-adaptive codec keeps the round-trip promise with
/// each codec it may choose.
pub async fn every_role_round_trips(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("every_role_round_trips");
    for role in ROLES {
        for dtype in accepted_dtypes(&*codec, ROUND_TRIP_SHAPE.len()) {
            let tensor = random_tensor(&mut rng, dtype, &ROUND_TRIP_SHAPE);
            let info = CompressionInfo::for_tensor(1, &tensor.view()).with_role(role);
            check_round_trip(&*codec, &tensor.view(), &info).map_err(in_context(format!("role {role:?}")))?;
        }
    }
    Ok(())
}

/// Promise of `extract` on empty tensors: shapes `[0]`, `[3, 0]` and `[0, 0]` decode to empty
/// tensors of the same shape and dtype.
pub async fn empty_tensors_round_trip(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    for shape in EMPTY_SHAPES {
        for dtype in accepted_dtypes(&*codec, shape.len()) {
            let tensor = Tensor::zeros(shape.to_vec(), dtype)?;
            check_round_trip(&*codec, &tensor.view(), &CompressionInfo::for_tensor(0, &tensor.view()))?;
        }
    }
    Ok(())
}

/// Promise of `extract` on 0-d tensors (shape `[]`): they decode to a 0-d tensor holding their
/// one value, within the bound.
pub async fn scalars_round_trip(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("scalars_round_trip");
    for dtype in accepted_dtypes(&*codec, 0) {
        for requires_grad in [false, true] {
            let tensor = random_tensor(&mut rng, dtype, &[]).with_requires_grad(requires_grad);
            check_round_trip(&*codec, &tensor.view(), &CompressionInfo::for_tensor(0, &tensor.view()))?;
        }
    }
    Ok(())
}

/// Promise of `compress` for parts (protocol 7.1): a flat part encoded with
/// `CompressionInfo::for_part` round-trips like a whole tensor, while the info's descriptor still
/// describes the whole tensor.
pub async fn parts_round_trip_like_whole_tensors(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("parts_round_trip_like_whole_tensors");
    for dtype in accepted_dtypes(&*codec, 1) {
        let whole = random_tensor(&mut rng, dtype, &ROUND_TRIP_SHAPE).with_requires_grad(true);
        let whole_info = CompressionInfo::for_tensor(2, &whole.view());
        for (k, start) in (0..whole.numel()).step_by(PART_LEN).enumerate() {
            let part = whole.flat_view(start..whole.numel().min(start + PART_LEN))?;
            let info = whole_info.for_part(k, PART_LEN);
            ensure!(
                info.descriptor == TensorDescriptor::of(&whole.view()),
                "CompressionInfo::for_part changed the descriptor to {:?}",
                info.descriptor
            );
            check_round_trip(&*codec, &part, &info).map_err(in_context(format!("part {k} of {PART_LEN}")))?;
        }
    }
    Ok(())
}

/// Promise of `extract` on degenerate data (protocol 10.5: `zeros(5, 5)` with every codec): constant
/// tensors, zero or not, decode to finite values within the bound.
pub async fn constant_tensors_decode_to_finite_values(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let shapes: [&[usize]; 2] = [&[5, 5], &ROUND_TRIP_SHAPE];
    for shape in shapes {
        for dtype in accepted_dtypes(&*codec, shape.len()) {
            for value in [0.0, 1.5, -3.0] {
                let tensor = constant_tensor(dtype, shape, value);
                let decoded = check_round_trip(
                    &*codec,
                    &tensor.view(),
                    &CompressionInfo::for_tensor(0, &tensor.view()),
                )
                .map_err(in_context(format!("constant {value}")))?;
                check_finite(&decoded).map_err(in_context(format!(
                    "codec {:?}, {} constant {value}",
                    codec.name(),
                    describe(&tensor.view())
                )))?;
            }
        }
    }
    Ok(())
}

/// Promise of `estimate_compression_ratio`: "Must be positive and finite", for every accepted
/// dtype, role, whole tensors and each of their parts.
pub async fn compression_ratio_is_positive_and_finite(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    for dtype in accepted_dtypes(&*codec, ROUND_TRIP_SHAPE.len()) {
        let tensor = Tensor::zeros(ROUND_TRIP_SHAPE.to_vec(), dtype)?;
        for role in ROLES {
            let whole = CompressionInfo::for_tensor(0, &tensor.view()).with_role(role);
            let parts = (0..tensor.numel().div_ceil(PART_LEN)).map(|k| whole.for_part(k, PART_LEN));
            for info in std::iter::once(whole.clone()).chain(parts) {
                let ratio = codec.estimate_compression_ratio(&info);
                ensure!(
                    ratio.is_finite() && ratio > 0.0,
                    "codec {:?} estimates ratio {ratio} for {dtype} {:?}, role {role:?}, part {:?}",
                    codec.name(),
                    ROUND_TRIP_SHAPE,
                    info.part_size.map(|_| info.part_index)
                );
            }
        }
    }
    Ok(())
}

/// Promise of `accepts`: "`compress` returns an error for anything this refuses", an
/// `Error::Codec` and never a panic, for every dtype and ranks 0 to 3. A codec that accepts
/// everything passes with nothing to check.
pub async fn unaccepted_dtypes_are_refused(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("unaccepted_dtypes_are_refused");
    for shape in SHAPES_BY_RANK {
        for dtype in DType::ALL.into_iter().filter(|&d| !codec.accepts(d, shape.len())) {
            let tensor = random_tensor(&mut rng, dtype, shape);
            let view = tensor.view();
            let result = compress_caught(&*codec, &view, &CompressionInfo::for_tensor(0, &view))?;
            ensure!(
                matches!(result, Err(Error::Codec { .. })),
                "codec {:?} refuses {} but compress gave {:?} instead of Error::Codec",
                codec.name(),
                describe(&view),
                result.map(|w| format!("a message of {} bytes", w.buffer.len()))
            );
        }
    }
    Ok(())
}

/// Promise of `capabilities().lossless`: "every accepted dtype round-trips bit-exactly", so a
/// lossless codec declares `ErrorBound::Exact` for each of them (the round-trip cases then check
/// the bits).
pub async fn lossless_codecs_declare_exact_bounds(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    if !codec.capabilities().lossless {
        return Ok(());
    }
    for dtype in DType::ALL.into_iter().filter(|&d| (0..=3).any(|ndim| codec.accepts(d, ndim))) {
        let bound = codec.error_bound(dtype);
        ensure!(
            bound == ErrorBound::Exact,
            "codec {:?} says it is lossless but declares {bound:?} for {dtype}",
            codec.name()
        );
    }
    Ok(())
}

/// Promise of registration (protocol 0): when `Registry::global()` knows the codec's name, a receiver
/// decoding by the message's `codec` field gets what `codec.extract` gives. Registration is
/// optional: the suite macro reports this case as ignored for a codec declared `lacks: [registered]`.
pub async fn registry_decodes_like_the_codec(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let registered = match Registry::global().codec(codec.name()) {
        Ok(registered) => registered,
        Err(Error::UnknownPlugin { .. }) => return Ok(()),
        Err(e) => return Err(Failure::new(format!("registry lookup of {:?} failed: {e}", codec.name()))),
    };
    let mut rng = case_rng("registry_decodes_like_the_codec");
    for dtype in accepted_dtypes(&*codec, ROUND_TRIP_SHAPE.len()) {
        let tensor = random_tensor(&mut rng, dtype, &ROUND_TRIP_SHAPE).with_requires_grad(true);
        let view = tensor.view();
        let context = format!("codec {:?}, {}", codec.name(), describe(&view));
        let wire = compress_caught(&*codec, &view, &CompressionInfo::for_tensor(0, &view))?
            .map_err(|e| Failure::new(format!("{context}: compress failed: {e}")))?;
        let direct = extract_caught(&*codec, &wire, "its own message")?
            .map_err(|e| Failure::new(format!("{context}: extract failed: {e}")))?;
        let via_registry = extract_caught(&*registered, &wire, "a message of its registered name")?
            .map_err(|e| Failure::new(format!("{context}: the registered codec cannot decode it: {e}")))?;
        let decoded = Registry::global()
            .decode(&wire)
            .map_err(|e| Failure::new(format!("{context}: Registry::decode failed: {e}")))?;
        for (what, other) in [("the registered codec", &via_registry), ("Registry::decode", &decoded)] {
            ensure!(
                other.shape() == direct.shape()
                    && other.requires_grad() == direct.requires_grad()
                    && bit_equal(&other.view(), &direct.view()),
                "{context}: {what} decodes to {} but the codec to {}",
                describe(&other.view()),
                describe(&direct.view())
            );
        }
    }
    Ok(())
}
