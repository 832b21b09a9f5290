//! The cases of the allocation-free methods (`encode_into`, `decode_into`, `decode_add_into`,
//! `encode_difference_into`):
//! each must agree bit for bit with `compress` and `extract`, whether the codec implements it or
//! inherits the trait's default.

use averager_core::compression::{BytesMut, Compression, CompressionInfo, WireTensor};
use averager_core::tensor::{DType, Tensor, TensorView};

use super::CodecFactory;
use super::checks::{compress_caught, describe};
use super::fixtures::{HOSTILE_SHAPE, ROUND_TRIP_SHAPE, accepted_dtypes, case_rng, random_tensor};
use crate::{Failure, Outcome, ensure};

/// What the caller's buffer holds before `encode_into` appends: an odd length, so codecs that
/// write in place must cope with unaligned output.
const PREFIX: &[u8] = b"already here";

/// The weight of the accumulating case: not 1, so a codec that ignores it fails.
const WEIGHT: f32 = 0.375;

/// Whether two f32 slices are equal bit for bit (any NaN matches any NaN: payloads may differ
/// between conversion instructions).
fn same_f32(a: &[f32], b: &[f32]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()))
}

/// The dtypes the decode cases use: accepted ones that have an f32 form.
fn decodable(codec: &dyn Compression, ndim: usize) -> Vec<DType> {
    accepted_dtypes(codec, ndim).into_iter().filter(|&d| d != DType::Complex64).collect()
}

fn encode_caught(
    codec: &dyn Compression,
    tensor: &TensorView<'_>,
    info: &CompressionInfo,
    out: &mut BytesMut,
) -> Result<averager_core::Result<WireTensor>, Failure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| codec.encode_into(tensor, info, out))).map_err(
        |_| Failure::new(format!("codec {:?} panicked in encode_into of {}", codec.name(), describe(tensor))),
    )
}

/// The message of `tensor` and its decoded values as f32 (what the decode methods must give).
fn reference(codec: &dyn Compression, tensor: &TensorView<'_>) -> Result<(WireTensor, Vec<f32>), Failure> {
    let context = format!("codec {:?}, {}", codec.name(), describe(tensor));
    let wire = compress_caught(codec, tensor, &CompressionInfo::for_tensor(0, tensor))?
        .map_err(|e| Failure::new(format!("{context}: compress failed: {e}")))?;
    let decoded =
        codec.extract(&wire).map_err(|e| Failure::new(format!("{context}: extract failed: {e}")))?;
    let values =
        decoded.view().data().to_f32().map_err(|e| Failure::new(format!("{context}: {e}")))?.into_owned();
    Ok((wire, values))
}

/// Promise of `encode_into`: the returned message is `compress`'s without its buffer, and the
/// bytes appended to the caller's buffer are `compress`'s buffer; what the buffer held before
/// stays. Checked for every accepted dtype on a (123, 45) tensor.
pub async fn encode_into_appends_what_compress_writes(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("encode_into_appends_what_compress_writes");
    for dtype in accepted_dtypes(&*codec, ROUND_TRIP_SHAPE.len()) {
        let tensor = random_tensor(&mut rng, dtype, &ROUND_TRIP_SHAPE).with_requires_grad(true);
        let view = tensor.view();
        let info = CompressionInfo::for_tensor(0, &view);
        let context = format!("codec {:?}, {}", codec.name(), describe(&view));
        let wire = compress_caught(&*codec, &view, &info)?
            .map_err(|e| Failure::new(format!("{context}: compress failed: {e}")))?;
        let mut out = BytesMut::from(PREFIX);
        let header = encode_caught(&*codec, &view, &info, &mut out)?
            .map_err(|e| Failure::new(format!("{context}: encode_into failed: {e}")))?;
        ensure!(header.buffer.is_empty(), "{context}: encode_into returned a message with a buffer");
        ensure!(
            header == WireTensor { buffer: Default::default(), ..wire.clone() },
            "{context}: encode_into's message differs from compress's: {header:?}"
        );
        ensure!(&out[..PREFIX.len()] == PREFIX, "{context}: encode_into changed what the buffer held");
        ensure!(
            out[PREFIX.len()..] == wire.buffer[..],
            "{context}: encode_into appended {} bytes that differ from compress's {}",
            out.len() - PREFIX.len(),
            wire.buffer.len()
        );
    }
    Ok(())
}

/// Promise of `decode_into`: the values are `extract`'s converted to f32, bit for bit, and an
/// output of the wrong length is an error, for every accepted dtype with an f32 form.
pub async fn decode_into_matches_extract(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("decode_into_matches_extract");
    for dtype in decodable(&*codec, ROUND_TRIP_SHAPE.len()) {
        let tensor = random_tensor(&mut rng, dtype, &ROUND_TRIP_SHAPE);
        let view = tensor.view();
        let context = format!("codec {:?}, {}", codec.name(), describe(&view));
        let (wire, expected) = reference(&*codec, &view)?;
        let mut out = vec![f32::NAN; expected.len()];
        codec
            .decode_into(&wire, &mut out)
            .map_err(|e| Failure::new(format!("{context}: decode_into failed: {e}")))?;
        if let Some(i) = same_f32(&out, &expected) {
            return Err(Failure::new(format!(
                "{context}: decode_into gave {} at {i}, extract {}",
                out[i], expected[i]
            )));
        }
        for len in [expected.len() - 1, expected.len() + 1] {
            let mut wrong = vec![0f32; len];
            ensure!(
                codec.decode_into(&wire, &mut wrong).is_err(),
                "{context}: decode_into into {len} values (the message holds {}) succeeded",
                expected.len()
            );
        }
    }
    Ok(())
}

/// Promise of `decode_add_into`: `out[i] + weight * decoded[i]` in f32, bit for bit; on an
/// error (a wrong output length, a truncated buffer the codec refuses) `out` is unchanged.
pub async fn decode_add_into_accumulates_or_leaves_untouched(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("decode_add_into_accumulates_or_leaves_untouched");
    for dtype in decodable(&*codec, HOSTILE_SHAPE.len()) {
        let tensor = random_tensor(&mut rng, dtype, &HOSTILE_SHAPE);
        let view = tensor.view();
        let context = format!("codec {:?}, {}", codec.name(), describe(&view));
        let (wire, decoded) = reference(&*codec, &view)?;
        let start: Vec<f32> = (0..decoded.len()).map(|i| i as f32 - 50.25).collect();
        let expected: Vec<f32> = start.iter().zip(&decoded).map(|(&s, &d)| s + WEIGHT * d).collect();
        let mut out = start.clone();
        codec
            .decode_add_into(&wire, WEIGHT, &mut out)
            .map_err(|e| Failure::new(format!("{context}: decode_add_into failed: {e}")))?;
        if let Some(i) = same_f32(&out, &expected) {
            return Err(Failure::new(format!(
                "{context}: decode_add_into gave {} at {i}, expected {} + {WEIGHT} * {}",
                out[i], start[i], decoded[i]
            )));
        }
        for len in [wire.buffer.len() / 2, wire.buffer.len().saturating_sub(1)] {
            let truncated = WireTensor { buffer: wire.buffer.slice(..len), ..wire.clone() };
            let mut out = start.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                codec.decode_add_into(&truncated, WEIGHT, &mut out)
            }))
            .map_err(|_| {
                Failure::new(format!("{context}: decode_add_into panicked on a truncated buffer"))
            })?;
            // Some layouts have shorter valid forms (NONE's bfloat16 as 2 or 4 bytes a value): only
            // a refusal must leave the output alone.
            if result.is_err() {
                ensure!(out == start, "{context}: decode_add_into changed the output before failing");
            }
        }
        let mut short = start[1..].to_vec();
        ensure!(
            codec.decode_add_into(&wire, WEIGHT, &mut short).is_err() && short == start[1..],
            "{context}: decode_add_into into a shorter output succeeded or changed it"
        );
    }
    Ok(())
}

/// Promise of `encode_difference_into`: when the codec has a fused form, its message and bytes are
/// those of `encode_into` over `average - decoded(part)` computed in f32, and a part of the wrong
/// length is refused with the buffer left as it was. A codec without one (`None`) passes.
pub async fn encode_difference_into_matches_the_steps(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    if !codec.accepts(DType::F32, 1) {
        return Ok(());
    }
    let mut rng = case_rng("encode_difference_into_matches_the_steps");
    let shape = [HOSTILE_SHAPE.iter().product::<usize>()];
    let part = random_tensor(&mut rng, DType::F32, &shape);
    let average = random_tensor(&mut rng, DType::F32, &shape);
    let average = average.as_f32().map_err(|e| Failure::new(e.to_string()))?;
    let context = format!("codec {:?}, {}", codec.name(), describe(&part.view()));
    let (wire, decoded) = reference(&*codec, &part.view())?;
    let difference: Vec<f32> = average.iter().zip(&decoded).map(|(a, d)| a - d).collect();
    let difference = Tensor::from_f32(shape.to_vec(), difference).map_err(|e| Failure::new(e.to_string()))?;
    let info = CompressionInfo::for_tensor(0, &difference.view());
    let mut expected = BytesMut::new();
    let expected_header = encode_caught(&*codec, &difference.view(), &info, &mut expected)?
        .map_err(|e| Failure::new(format!("{context}: encode_into failed: {e}")))?;
    let mut out = BytesMut::from(PREFIX);
    let fused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        codec.encode_difference_into(average, &wire, &info, &mut out)
    }))
    .map_err(|_| Failure::new(format!("{context}: encode_difference_into panicked")))?;
    let Some(fused) = fused else {
        return Ok(());
    };
    let header = fused.map_err(|e| Failure::new(format!("{context}: encode_difference_into failed: {e}")))?;
    ensure!(header == expected_header, "{context}: encode_difference_into's message differs: {header:?}");
    ensure!(&out[..PREFIX.len()] == PREFIX, "{context}: encode_difference_into changed what the buffer held");
    ensure!(
        out[PREFIX.len()..] == expected[..],
        "{context}: encode_difference_into's bytes differ from encode_into's over the difference"
    );
    let mut out = BytesMut::from(PREFIX);
    let short = codec.encode_difference_into(&average[1..], &wire, &info, &mut out);
    ensure!(
        !matches!(short, Some(Ok(_))) && &out[..] == PREFIX,
        "{context}: encode_difference_into with a shorter average succeeded or changed the buffer"
    );
    Ok(())
}
