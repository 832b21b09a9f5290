//! The cases on untrusted input. Promise of `extract`: "Untrusted input never panics and never
//! allocates more than the buffer's length justifies: garbage, truncated or inconsistent buffers
//! give an `Error::Codec`."
//!
//! A decode that tries to allocate for a forged shape may abort the process rather than panic;
//! the suite cannot catch that, but the run then dies on the case that caused it.

use std::time::{Duration, Instant};

use averager_core::compression::{Compression, CompressionInfo, WireTensor};
use averager_core::tensor::DType;
use bytes::Bytes;
use rand::Rng;

use super::CodecFactory;
use super::checks::{check_declared_layout, compress_caught, extract_caught, in_context};
use super::fixtures::{HOSTILE_SHAPE, accepted_dtypes, case_rng, prefix_lengths, random_tensor};
use crate::{Failure, Outcome, ensure};

/// Random buffers per accepted dtype in the garbage case.
const GARBAGE_PER_DTYPE: usize = 32;

/// Largest random garbage buffer.
const GARBAGE_MAX_LEN: usize = 4096;

/// Single-byte mutations per accepted dtype.
const MUTATIONS_PER_DTYPE: usize = 48;

/// How long refusing a forged huge shape may take; generous for debug builds, far below what
/// allocating or touching gigabytes would take.
const HUGE_SHAPE_TIME_LIMIT: Duration = Duration::from_secs(1);

/// Declared shapes whose element counts no small buffer can justify.
const HUGE_SHAPES: [&[u32]; 4] =
    [&[u32::MAX, u32::MAX], &[u32::MAX, 2], &[u32::MAX], &[u32::MAX, u32::MAX, u32::MAX]];

/// How many strict prefixes of one buffer may decode. One is allowed because a decoder may read
/// two layouts told apart by length: NONE's legacy bfloat16 buffer holds 4 bytes per value, and its
/// first half is a valid raw 2-byte encoding of the same shape (protocol 7.2). A decoder that accepts
/// more prefixes than that is not checking lengths.
const MAX_DECODABLE_PREFIXES: usize = 1;

/// The codec's encoding of a random [`HOSTILE_SHAPE`] tensor of `dtype`: the valid message that
/// the hostile cases damage.
fn valid_message(codec: &dyn Compression, rng: &mut impl Rng, dtype: DType) -> Result<WireTensor, Failure> {
    let tensor = random_tensor(rng, dtype, &HOSTILE_SHAPE);
    compress_caught(codec, &tensor.view(), &CompressionInfo::for_tensor(0, &tensor.view()))?.map_err(|e| {
        Failure::new(format!("codec {:?}: compress of an accepted {dtype} tensor failed: {e}", codec.name()))
    })
}

/// Decodes `message` (which `input` describes), failing on a panic or on a decoded tensor of
/// another shape or dtype than declared; returns whether it decoded.
fn decode_untrusted(codec: &dyn Compression, message: &WireTensor, input: &str) -> Result<bool, Failure> {
    match extract_caught(codec, message, input)? {
        Err(_) => Ok(false),
        Ok(tensor) => {
            check_declared_layout(message, &tensor)
                .map_err(in_context(format!("codec {:?}, {input}", codec.name())))?;
            Ok(true)
        }
    }
}

/// Every strict prefix of a valid buffer is an error (all prefixes of short buffers, a sample of
/// lengths including 0, 1 and `len - 1` of long ones), never a panic.
///
/// One prefix per buffer may decode, to exactly the declared shape and dtype: a decoder may read
/// two layouts told apart by length, as NONE does for bfloat16 (protocol 7.2).
pub async fn truncated_buffers_are_errors(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("truncated_buffers_are_errors");
    for dtype in accepted_dtypes(&*codec, HOSTILE_SHAPE.len()) {
        let valid = valid_message(&*codec, &mut rng, dtype)?;
        let len = valid.buffer.len();
        let mut decoded = Vec::new();
        for prefix in prefix_lengths(&mut rng, len) {
            let message = WireTensor { buffer: valid.buffer.slice(..prefix), ..valid.clone() };
            let input = format!("a {prefix}-byte prefix of its {len}-byte {dtype} {HOSTILE_SHAPE:?} buffer");
            if decode_untrusted(&*codec, &message, &input)? {
                decoded.push(prefix);
            }
        }
        ensure!(
            decoded.len() <= MAX_DECODABLE_PREFIXES,
            "codec {:?} decodes truncated {len}-byte {dtype} buffers without an error, at prefix lengths {:?}",
            codec.name(),
            decoded
        );
    }
    Ok(())
}

/// Random buffers under a valid header (random lengths up to 4 KiB, the valid length, and the
/// valid length give or take a few bytes) either fail or decode to exactly the declared shape and
/// dtype; none panics.
pub async fn garbage_buffers_never_panic(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("garbage_buffers_never_panic");
    for dtype in accepted_dtypes(&*codec, HOSTILE_SHAPE.len()) {
        let valid = valid_message(&*codec, &mut rng, dtype)?;
        for i in 0..GARBAGE_PER_DTYPE {
            let len = match i % 3 {
                0 => rng.random_range(0..=GARBAGE_MAX_LEN),
                1 => valid.buffer.len(),
                _ => valid.buffer.len().saturating_add(rng.random_range(0..=16)).saturating_sub(8),
            };
            let mut garbage = vec![0u8; len];
            rng.fill(&mut garbage[..]);
            let message = WireTensor { buffer: Bytes::from(garbage), ..valid.clone() };
            decode_untrusted(
                &*codec,
                &message,
                &format!("{len} random bytes declared as {dtype} {HOSTILE_SHAPE:?}"),
            )?;
        }
    }
    Ok(())
}

/// A declared shape of `[u32::MAX, u32::MAX]`, `[u32::MAX, 2]` (and 1-d and 3-d variants) over a
/// small valid or empty buffer is an error, returned quickly: the decoder must compare the buffer
/// with the shape before allocating for it.
pub async fn huge_declared_shapes_are_refused_quickly(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("huge_declared_shapes_are_refused_quickly");
    for dtype in accepted_dtypes(&*codec, HOSTILE_SHAPE.len()) {
        let valid = valid_message(&*codec, &mut rng, dtype)?;
        for shape in HUGE_SHAPES {
            for buffer in [valid.buffer.clone(), Bytes::new()] {
                let message = WireTensor { size: shape.to_vec(), buffer, ..valid.clone() };
                let input =
                    format!("a {}-byte {dtype} buffer declared as shape {shape:?}", message.buffer.len());
                let started = Instant::now();
                let result = extract_caught(&*codec, &message, &input)?;
                let took = started.elapsed();
                ensure!(result.is_err(), "codec {:?} decoded {input} without an error", codec.name());
                ensure!(
                    took <= HUGE_SHAPE_TIME_LIMIT,
                    "codec {:?} took {took:?} to refuse {input}; it must check sizes before allocating",
                    codec.name()
                );
            }
        }
    }
    Ok(())
}

/// A valid buffer under a dtype name that no dtype has is an error, never a panic.
pub async fn unknown_dtype_names_are_errors(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("unknown_dtype_names_are_errors");
    for dtype in accepted_dtypes(&*codec, HOSTILE_SHAPE.len()) {
        let valid = valid_message(&*codec, &mut rng, dtype)?;
        for name in ["float8_e4m3fn", "", "Float32", "torch.float32", "float32\0"] {
            let message = WireTensor { dtype: name.to_string(), ..valid.clone() };
            let input = format!("a valid {dtype} buffer declared as dtype {name:?}");
            let result = extract_caught(&*codec, &message, &input)?;
            ensure!(result.is_err(), "codec {:?} decoded {input} without an error", codec.name());
        }
    }
    Ok(())
}

/// Random single-byte changes of a valid buffer never panic, and what decodes has the declared
/// shape and dtype (lossless framing cannot tell every changed byte from a valid value).
pub async fn mutated_buffers_never_panic(factory: &impl CodecFactory) -> Outcome {
    let codec = factory.codec();
    let mut rng = case_rng("mutated_buffers_never_panic");
    for dtype in accepted_dtypes(&*codec, HOSTILE_SHAPE.len()) {
        let valid = valid_message(&*codec, &mut rng, dtype)?;
        if valid.buffer.is_empty() {
            continue;
        }
        for _ in 0..MUTATIONS_PER_DTYPE {
            let mut bytes = valid.buffer.to_vec();
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= rng.random_range(1..=u8::MAX);
            let message = WireTensor { buffer: Bytes::from(bytes), ..valid.clone() };
            let input = format!("its {dtype} {HOSTILE_SHAPE:?} buffer with byte {at} changed");
            decode_untrusted(&*codec, &message, &input)?;
        }
    }
    Ok(())
}
