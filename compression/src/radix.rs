//! Sorting f32 values in `f32::total_cmp` order by a least-significant-digit radix sort of their
//! order keys: three counting passes instead of `n log n` comparisons, for the quantile codec's
//! samples (up to 65536 values).

/// Bits per digit: 11, 11 and 10 cover the 32-bit key with counting tables that fit in L1.
const DIGIT_BITS: [u32; 3] = [11, 11, 10];

/// A u32 that orders like `f32::total_cmp`: negative values (sign bit set) have every bit
/// flipped, positive ones only the sign bit.
#[inline(always)]
fn key(x: f32) -> u32 {
    let bits = x.to_bits();
    bits ^ (((bits as i32 >> 31) as u32) | 0x8000_0000)
}

/// The inverse of [`key`]: the value of one of [`sorted_keys`]' keys.
#[inline(always)]
pub(crate) fn value(key: u32) -> f32 {
    let bits = if key & 0x8000_0000 != 0 { key ^ 0x8000_0000 } else { !key };
    f32::from_bits(bits)
}

/// The largest digit's counting table.
const MAX_DIGIT: usize = 1 << 11;

/// Buffers a sort needs besides the values, kept by callers that sort repeatedly so that no sort
/// allocates once they have grown.
#[derive(Default)]
pub(crate) struct SortScratch {
    keys: Vec<u32>,
    other: Vec<u32>,
}

/// Sorts `values` as `sort_unstable_by(f32::total_cmp)` does (the same bits in the same order).
#[cfg(test)]
pub(crate) fn sort_total(values: &mut [f32]) {
    let mut scratch = SortScratch::default();
    let keys = sorted_keys(values, &mut scratch);
    for (v, &k) in values.iter_mut().zip(keys) {
        *v = value(k);
    }
}

/// Stretches of the keys that each pass counts and scatters in lockstep: a key's count or
/// position waits for the previous key with the same digit in its own stretch only, where one
/// stretch would wait on every repeat (which the top digit, a float's sign and exponent, mostly
/// is).
const STRETCHES: usize = 4;

/// The order keys of `values`, sorted (`value` of the `i`-th is the `i`-th value in
/// `f32::total_cmp` order), in one of the caller's buffers: callers that want a few ranks read
/// them there instead of converting every key back. At most `u32::MAX` values.
pub(crate) fn sorted_keys<'a>(values: &[f32], scratch: &'a mut SortScratch) -> &'a [u32] {
    let n = values.len();
    let SortScratch { keys, other } = scratch;
    keys.clear();
    keys.extend(values.iter().map(|&x| key(x)));
    let q = n / STRETCHES;
    if q == 0 {
        keys.sort_unstable();
        return keys;
    }
    other.clear();
    other.resize(n, 0);
    // Stretch `j` is `q * j..q * (j + 1)`, the last one also the `n % STRETCHES` keys after.
    let mut slots = [[0u32; MAX_DIGIT]; STRETCHES];
    let mut shift = 0;
    for bits in DIGIT_BITS {
        let mask = (1u32 << bits) - 1;
        let digit = |k: u32| ((k >> shift) & mask) as usize;
        for s in slots.iter_mut() {
            s.fill(0);
        }
        let (main, tail) = keys.split_at(STRETCHES * q);
        for i in 0..q {
            for (j, s) in slots.iter_mut().enumerate() {
                s[digit(main[j * q + i])] += 1;
            }
        }
        for &k in tail {
            slots[STRETCHES - 1][digit(k)] += 1;
        }
        // Each stretch's first slot per digit: digits in order, and within a digit the stretches
        // in order, so keys with equal digits keep their order (the sort is stable).
        let mut start = 0u32;
        let mut uniform = false;
        for d in 0..1usize << bits {
            let before = start;
            for s in slots.iter_mut() {
                let count = s[d];
                s[d] = start;
                start += count;
            }
            uniform |= (start - before) as usize == n;
        }
        // Skips a pass in which every key has the same digit (common for the top digit).
        if !uniform {
            for i in 0..q {
                for (j, s) in slots.iter_mut().enumerate() {
                    let k = main[j * q + i];
                    let slot = &mut s[digit(k)];
                    other[*slot as usize] = k;
                    *slot += 1;
                }
            }
            let last = &mut slots[STRETCHES - 1];
            for &k in tail {
                let slot = &mut last[digit(k)];
                other[*slot as usize] = k;
                *slot += 1;
            }
            std::mem::swap(keys, other);
        }
        shift += bits;
    }
    keys
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn sorts_like_total_cmp_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(5);
        let specials = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::MAX,
            f32::MIN,
        ];
        for n in [0, 1, 2, 17, 1000, 100_000] {
            let mut values: Vec<f32> = (0..n).map(|_| rng.random_range(-1e3f32..1e3)).collect();
            values.extend(specials);
            for v in values.iter_mut().step_by(5) {
                *v = (*v * 4.0).round() / 4.0;
            }
            let mut expected = values.clone();
            expected.sort_unstable_by(f32::total_cmp);
            sort_total(&mut values);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&values), bits(&expected), "n = {n}");
        }
        for x in specials {
            assert_eq!(value(key(x)).to_bits(), x.to_bits());
        }
    }
}
