//! What a decoded value becomes after `extract` casts it to the message's dtype and the caller
//! widens it back to f32: the rounding the `_into` decoders must apply to match `extract` bit for
//! bit without building a tensor.

use averager_core::tensor::DType;
use averager_core::{Error, Result};
use half::{bf16, f16};

/// Replaces each value by its f32 form after a cast to `dtype` (as `TensorData::from_f32` casts:
/// floats round to nearest, integers round half away from zero and saturate, bool is `!= 0`).
///
/// # Errors
/// [`Error::Codec`] naming `codec` for a dtype without an f32 form (complex64).
pub(crate) fn round_through(codec: &str, dtype: DType, values: &mut [f32]) -> Result<()> {
    fn each(values: &mut [f32], f: impl Fn(f32) -> f32) {
        for v in values {
            *v = f(*v);
        }
    }
    match dtype {
        // f32 is the decoders' own type, and f64 holds every f32 exactly.
        DType::F32 | DType::F64 => {}
        DType::F16 => each(values, |x| f16::from_f32(x).to_f32()),
        DType::BF16 => each(values, |x| bf16::from_f32(x).to_f32()),
        DType::I64 => each(values, |x| x.round() as i64 as f32),
        DType::I32 => each(values, |x| x.round() as i32 as f32),
        DType::I16 => each(values, |x| x.round() as i16 as f32),
        DType::I8 => each(values, |x| x.round() as i8 as f32),
        DType::U8 => each(values, |x| x.round() as u8 as f32),
        DType::Bool => each(values, |x| f32::from(u8::from(x != 0.0))),
        other => return Err(Error::codec(codec, format!("{other} has no f32 form"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use averager_core::tensor::TensorData;

    use super::*;

    #[test]
    fn matches_a_cast_and_a_widening() {
        let values =
            [0.0f32, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1e-8, 70000.0, -1e12, 1e12, 300.7, -129.5, f32::NAN];
        for dtype in DType::ALL.into_iter().filter(|d| *d != DType::Complex64) {
            let expected = TensorData::from_f32(dtype, &values).unwrap();
            let expected = expected.as_slice().to_f32().unwrap();
            let mut got = values;
            round_through("t", dtype, &mut got).unwrap();
            for (g, e) in got.iter().zip(expected.iter()) {
                assert!(g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()), "{dtype}: {g} vs {e}");
            }
        }
        assert!(round_through("t", DType::Complex64, &mut [1.0]).is_err());
    }
}
