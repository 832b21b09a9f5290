//! The f32 <-> little-endian f16 conversions of the all-reduce's float32 parts (and of
//! meanstd16's scaled values), eight values at a time with the CPU's F16C instructions where it has them, element by element through `half`
//! elsewhere.
//!
//! `half`'s slice conversions also use F16C, but call one out-of-line function per eight values
//! and copy its result: on a two-peer float16 all-reduce those calls and the clamping loop around
//! them took a fifth of the CPU.
//! Here each loop runs inside one function compiled for F16C, so the conversion, the clamp and
//! the arithmetic around it stay in registers. Both paths give the same bits (for NaN: a NaN of
//! the same sign), which the tests check against `half`'s per-value conversion.

use averager_core::compression::{BytesMut, add_scaled};
use half::f16;

/// The largest finite f16; larger magnitudes (and infinities) saturate to it.
const F16_MAX: f32 = 65504.0;

/// Saturates `src` into f16 little-endian bytes in `out` (`out.len() == 2 * src.len()`); NaN
/// stays NaN.
pub(crate) fn narrow(src: &[f32], out: &mut [u8]) {
    assert_eq!(out.len(), 2 * src.len(), "narrow: output length");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has the features `x86::narrow` is compiled for (checked just above),
        // and the lengths match (asserted above).
        #[allow(unsafe_code)]
        unsafe {
            x86::narrow(src, out.as_mut_ptr())
        };
        return;
    }
    scalar::narrow(src, out);
}

/// Widens the f16 little-endian values of `bytes` into `out` (`bytes.len() == 2 * out.len()`).
pub(crate) fn widen(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), 2 * out.len(), "widen: input length");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: features checked just above; lengths asserted above.
        #[allow(unsafe_code)]
        unsafe {
            x86::widen(bytes, out)
        };
        return;
    }
    scalar::widen(bytes, out);
}

/// `out[i] += weight * f16(bytes[i])`, with the arithmetic of `add_scaled` (a product, then a
/// sum: no fused multiply-add), so a part decoded here adds exactly as a decoded-then-added one.
pub(super) fn widen_add(bytes: &[u8], weight: f32, out: &mut [f32]) {
    assert_eq!(bytes.len(), 2 * out.len(), "widen_add: input length");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: features checked just above; lengths asserted above.
        #[allow(unsafe_code)]
        unsafe {
            x86::widen_add(bytes, weight, out)
        };
        return;
    }
    scalar::widen_add(bytes, weight, out);
}

/// Appends the f16 bytes of `src` to `out` (saturated, as [`narrow`] writes them). With F16C the
/// vector loop writes straight into `out`'s spare capacity: zeroing the bytes first, only to
/// overwrite them, cost as much as the conversion itself.
pub(super) fn narrow_append(src: &[f32], out: &mut BytesMut) {
    let start = out.len();
    let len = 2 * src.len();
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        out.reserve(len);
        // SAFETY: features checked just above; `reserve` made room for `len` bytes after `start`,
        // `x86::narrow` writes every one of them (two per value of `src`), so `set_len` exposes
        // only initialized bytes.
        #[allow(unsafe_code)]
        unsafe {
            x86::narrow(src, out.spare_capacity_mut().as_mut_ptr().cast());
            out.set_len(start + len);
        }
        return;
    }
    out.resize(start + len, 0);
    scalar::narrow(src, &mut out[start..]);
}

/// Appends the reply of a float32 part to `out`: `f16(saturate(average[i] - f16(part[i])))` for
/// each value (`part.len() == 2 * average.len()`), straight into `out`'s spare capacity where the
/// vector loop runs (see [`narrow_append`]).
pub(super) fn narrow_difference_append(average: &[f32], part: &[u8], out: &mut BytesMut) {
    assert_eq!(part.len(), 2 * average.len(), "narrow_difference: part length");
    let start = out.len();
    let len = part.len();
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        out.reserve(len);
        // SAFETY: as in `narrow_append`: room for `len` bytes, every one of them written.
        #[allow(unsafe_code)]
        unsafe {
            x86::narrow_difference(average, part, out.spare_capacity_mut().as_mut_ptr().cast());
            out.set_len(start + len);
        }
        return;
    }
    out.resize(start + len, 0);
    scalar::narrow_difference(average, part, &mut out[start..]);
}

/// The f16 bytes of one value, saturated; NaN stays NaN (`clamp` returns NaN for NaN, as
/// protocol 7.2 asks).
fn half_of(x: f32) -> [u8; 2] {
    f16::from_f32(x.clamp(-F16_MAX, F16_MAX)).to_le_bytes()
}

/// The f32 value of one f16's two little-endian bytes.
fn value_of(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// One value at a time through `half`: the reference, the tails of the vector loops, and every
/// CPU without F16C.
pub(super) mod scalar {
    use super::*;

    /// See [`super::narrow`].
    pub(in crate::float16) fn narrow(src: &[f32], out: &mut [u8]) {
        for (&x, o) in src.iter().zip(out.chunks_exact_mut(2)) {
            o.copy_from_slice(&half_of(x));
        }
    }

    /// See [`super::widen`].
    pub(in crate::float16) fn widen(bytes: &[u8], out: &mut [f32]) {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = value_of(b);
        }
    }

    /// See [`super::widen_add`].
    pub(in crate::float16) fn widen_add(bytes: &[u8], weight: f32, out: &mut [f32]) {
        let mut value = [0f32; 1];
        for (o, b) in out.chunks_exact_mut(1).zip(bytes.chunks_exact(2)) {
            value[0] = value_of(b);
            add_scaled(o, &value, weight);
        }
    }

    /// What [`super::narrow_difference_append`] appends, into `out`.
    pub(in crate::float16) fn narrow_difference(average: &[f32], part: &[u8], out: &mut [u8]) {
        for ((&a, p), o) in average.iter().zip(part.chunks_exact(2)).zip(out.chunks_exact_mut(2)) {
            o.copy_from_slice(&half_of(a - value_of(p)));
        }
    }
}

/// Eight values per step with AVX and F16C. Every function needs both features at run time
/// ([`available`]) and the lengths its safe wrapper above asserts.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256, _MM_FROUND_TO_NEAREST_INT, _mm_loadu_si128, _mm_storeu_si128, _mm256_add_ps,
        _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_loadu_ps, _mm256_max_ps, _mm256_min_ps, _mm256_mul_ps,
        _mm256_set1_ps, _mm256_storeu_ps, _mm256_sub_ps,
    };

    use super::{F16_MAX, half_of, scalar, value_of};

    /// Values per vector step.
    const LANES: usize = 8;

    /// Whether this CPU runs the functions below (the macro caches its answer).
    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx") && std::is_x86_feature_detected!("f16c")
    }

    /// Saturates eight f32 values to ±65504 and rounds them to f16, nearest-even. MAXPS and MINPS
    /// return their second operand when either one is NaN, so with `v` second a NaN passes both
    /// and converts to a NaN of its sign.
    #[target_feature(enable = "avx,f16c")]
    fn to_halves(v: __m256) -> __m128i {
        let v = _mm256_min_ps(_mm256_set1_ps(F16_MAX), _mm256_max_ps(_mm256_set1_ps(-F16_MAX), v));
        _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)
    }

    /// Writes the two little-endian bytes of each f16 of `values` from `out` on (the tails of
    /// the vector loops).
    ///
    /// # Safety
    /// `out` is valid for writes of `2 * values.len()` bytes.
    unsafe fn write_tail(values: impl Iterator<Item = f32>, out: *mut u8) {
        for (i, x) in values.enumerate() {
            let bytes = half_of(x);
            // SAFETY: the caller's bound: value `i` owns bytes `2i` and `2i + 1`.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.add(2 * i), 2) };
        }
    }

    /// # Safety
    /// The CPU has AVX and F16C; `out` is valid for writes of `2 * src.len()` bytes (it may be
    /// uninitialized: it is only written).
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn narrow(src: &[f32], out: *mut u8) {
        let steps = src.len() / LANES;
        for i in 0..steps {
            // SAFETY: `i * LANES + LANES <= src.len()`, and `out` holds two bytes per value of
            // `src`, so both accesses stay in bounds; the unaligned loads and stores need no
            // alignment.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i * LANES));
                _mm_storeu_si128(out.add(2 * i * LANES).cast(), to_halves(v));
            }
        }
        let done = steps * LANES;
        // SAFETY: the rest of the caller's `2 * src.len()` bytes.
        unsafe { write_tail(src[done..].iter().copied(), out.add(2 * done)) };
    }

    /// # Safety
    /// The CPU has AVX and F16C; `bytes.len() == 2 * out.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen(bytes: &[u8], out: &mut [f32]) {
        let steps = out.len() / LANES;
        for i in 0..steps {
            // SAFETY: as in `narrow`: 16 bytes of `bytes` and 8 values of `out` per step, in bounds.
            unsafe {
                let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i * LANES).cast());
                _mm256_storeu_ps(out.as_mut_ptr().add(i * LANES), _mm256_cvtph_ps(h));
            }
        }
        let done = steps * LANES;
        scalar::widen(&bytes[2 * done..], &mut out[done..]);
    }

    /// # Safety
    /// The CPU has AVX and F16C; `bytes.len() == 2 * out.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen_add(bytes: &[u8], weight: f32, out: &mut [f32]) {
        let w = _mm256_set1_ps(weight);
        let steps = out.len() / LANES;
        for i in 0..steps {
            // SAFETY: as in `widen`.
            unsafe {
                let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i * LANES).cast());
                let o = out.as_mut_ptr().add(i * LANES);
                let sum = _mm256_add_ps(_mm256_loadu_ps(o), _mm256_mul_ps(w, _mm256_cvtph_ps(h)));
                _mm256_storeu_ps(o, sum);
            }
        }
        let done = steps * LANES;
        scalar::widen_add(&bytes[2 * done..], weight, &mut out[done..]);
    }

    /// # Safety
    /// The CPU has AVX and F16C; `part.len() == 2 * average.len()`, and `out` is valid for writes
    /// of `part.len()` bytes (it may be uninitialized: it is only written).
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn narrow_difference(average: &[f32], part: &[u8], out: *mut u8) {
        let steps = average.len() / LANES;
        for i in 0..steps {
            // SAFETY: 8 values of `average` and 16 bytes of `part` and `out` per step, in bounds.
            unsafe {
                let a = _mm256_loadu_ps(average.as_ptr().add(i * LANES));
                let p = _mm256_cvtph_ps(_mm_loadu_si128(part.as_ptr().add(2 * i * LANES).cast()));
                let h = to_halves(_mm256_sub_ps(a, p));
                _mm_storeu_si128(out.add(2 * i * LANES).cast(), h);
            }
        }
        let done = steps * LANES;
        let rest = average[done..].iter().zip(part[2 * done..].chunks_exact(2)).map(|(a, p)| a - value_of(p));
        // SAFETY: the rest of the caller's `part.len()` bytes.
        unsafe { write_tail(rest, out.add(2 * done)) };
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Values that test every branch of a conversion: zeros of both signs, f16 subnormals and the
    /// smallest f32 ones, ties of f16 rounding, the saturation edge, infinities and NaNs.
    fn edge_values() -> Vec<f32> {
        let tie = 1.0 + 1.0 / 2048.0; // halfway between two f16 values: rounds to even (1.0)
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            tie,
            -tie,
            1.0 + 3.0 / 2048.0,
            5.96e-8,
            -5.96e-8,
            2.98e-8,
            1e-40,
            6.1e-5,
            65504.0,
            65519.0,
            65520.0,
            -65520.0,
            1e9,
            -1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        let mut rng = StdRng::seed_from_u64(16);
        v.extend((0..200).map(|_| rng.random_range(-70000.0f32..70000.0)));
        v.extend((0..200).map(|_| rng.random_range(-1e-4f32..1e-4)));
        v.extend((0..200).map(|_| f32::from_bits(rng.random())));
        v
    }

    /// Equal bits, except that any NaN equals any NaN of the same sign.
    fn same_half(a: &[u8], b: &[u8]) -> bool {
        a.chunks_exact(2).zip(b.chunks_exact(2)).all(|(a, b)| {
            let (a, b) = (f16::from_le_bytes([a[0], a[1]]), f16::from_le_bytes([b[0], b[1]]));
            if a.is_nan() || b.is_nan() {
                a.is_nan() && b.is_nan() && a.is_sign_negative() == b.is_sign_negative()
            } else {
                a.to_bits() == b.to_bits()
            }
        })
    }

    fn same_f32(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(a, b)| if a.is_nan() { b.is_nan() } else { a.to_bits() == b.to_bits() })
    }

    /// Every length up to a few vectors (so every tail), at every byte offset of the output, so
    /// that unaligned buffers are covered too.
    fn windows(values: &[f32]) -> impl Iterator<Item = (&[f32], usize)> {
        (0..40).flat_map(move |len| (0..3).map(move |offset| (&values[offset * 7..offset * 7 + len], offset)))
    }

    #[test]
    fn narrowing_matches_half_value_by_value() {
        let values = edge_values();
        let mut fast = vec![0u8; 2 * values.len() + 1];
        let mut slow = vec![0u8; 2 * values.len()];
        narrow(&values, &mut fast[1..]);
        scalar::narrow(&values, &mut slow);
        assert!(same_half(&fast[1..], &slow));
        for (x, h) in values.iter().zip(slow.chunks_exact(2)) {
            let h = f16::from_le_bytes([h[0], h[1]]);
            if x.is_nan() {
                assert!(h.is_nan());
            } else {
                assert_eq!(h, f16::from_f32(x.clamp(-F16_MAX, F16_MAX)), "{x}");
            }
        }
        for (src, offset) in windows(&values) {
            let mut fast = vec![0u8; 2 * src.len() + offset];
            let mut slow = vec![0u8; 2 * src.len()];
            narrow(src, &mut fast[offset..]);
            scalar::narrow(src, &mut slow);
            assert!(same_half(&fast[offset..], &slow), "len {} offset {offset}", src.len());
        }
    }

    #[test]
    fn widening_and_adding_match_half_value_by_value() {
        let values = edge_values();
        let mut halves = vec![0u8; 2 * values.len()];
        scalar::narrow(&values, &mut halves);
        let base: Vec<f32> = (0..values.len()).map(|i| i as f32 * 0.37 - 50.0).collect();
        for len in 0..values.len().min(60) {
            for offset in 0..2 {
                let bytes = &halves[2 * offset..2 * (offset + len)];
                let (mut fast, mut slow) = (vec![0f32; len], vec![0f32; len]);
                widen(bytes, &mut fast);
                scalar::widen(bytes, &mut slow);
                assert!(same_f32(&fast, &slow), "widen len {len} offset {offset}");
                let expected: Vec<f32> =
                    bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                assert!(same_f32(&fast, &expected));

                let (mut fast, mut slow) = (base[..len].to_vec(), base[..len].to_vec());
                widen_add(bytes, 0.75, &mut fast);
                add_scaled(&mut slow, &expected, 0.75);
                assert!(same_f32(&fast, &slow), "widen_add len {len} offset {offset}");
            }
        }
        // The whole vector too, so the loops' middles see every edge value.
        let mut fast = base.clone();
        let mut slow = base.clone();
        widen_add(&halves, -1.0, &mut fast);
        scalar::widen_add(&halves, -1.0, &mut slow);
        assert!(same_f32(&fast, &slow));
    }

    #[test]
    fn the_difference_matches_widening_subtracting_and_narrowing() {
        let values = edge_values();
        let mut part = vec![0u8; 2 * values.len()];
        scalar::narrow(&values, &mut part);
        let mut rng = StdRng::seed_from_u64(17);
        let average: Vec<f32> = values
            .iter()
            .map(|&x| if rng.random() { x * 0.5 } else { rng.random_range(-9.0..9.0) })
            .collect();
        let mut fast = BytesMut::new();
        let mut slow = vec![0u8; part.len()];
        narrow_difference_append(&average, &part, &mut fast);
        scalar::narrow_difference(&average, &part, &mut slow);
        assert!(same_half(&fast, &slow));
        let mut widened = vec![0f32; average.len()];
        scalar::widen(&part, &mut widened);
        let stepwise: Vec<f32> = average.iter().zip(&widened).map(|(a, p)| a - p).collect();
        let mut expected = vec![0u8; part.len()];
        scalar::narrow(&stepwise, &mut expected);
        assert!(same_half(&fast, &expected));
        for len in 0..40 {
            let (mut fast, mut slow) = (BytesMut::new(), vec![0u8; 2 * len]);
            narrow_difference_append(&average[3..3 + len], &part[6..6 + 2 * len], &mut fast);
            scalar::narrow_difference(&average[3..3 + len], &part[6..6 + 2 * len], &mut slow);
            assert!(same_half(&fast, &slow), "len {len}");
        }
    }

    #[test]
    fn appending_writes_what_the_slice_conversions_write_after_what_was_there() {
        let values = edge_values();
        let mut part = vec![0u8; 2 * values.len()];
        scalar::narrow(&values, &mut part);
        let average: Vec<f32> = values.iter().map(|&x| x * 0.25 - 1.0).collect();
        for len in [0, 1, 7, 8, 9, 31, values.len()] {
            let mut out = BytesMut::from(&b"xyz"[..]);
            narrow_append(&values[..len], &mut out);
            let mut expected = vec![0u8; 2 * len];
            scalar::narrow(&values[..len], &mut expected);
            assert_eq!(&out[..3], b"xyz");
            assert!(out.len() == 3 + 2 * len && same_half(&out[3..], &expected), "len {len}");

            let mut out = BytesMut::from(&b"q"[..]);
            narrow_difference_append(&average[..len], &part[..2 * len], &mut out);
            let mut expected = vec![0u8; 2 * len];
            scalar::narrow_difference(&average[..len], &part[..2 * len], &mut expected);
            assert_eq!(&out[..1], b"q");
            assert!(out.len() == 1 + 2 * len && same_half(&out[1..], &expected), "len {len}");
        }
    }
}
