//! A fixed-size, deterministic sample of a tensor's values, for estimating its quantiles without
//! sorting all of them.
//!
//! Stratified ("jittered"): the values are cut into as many equal strata as the sample has
//! entries, and one value is drawn from each at a pseudo-random offset. Unlike a fixed stride,
//! this cannot alias with a tensor's layout (a stride equal to a row length would sample one
//! column only), and unlike uniform random draws it reads memory in order and covers every
//! region of the tensor equally.

/// The seed of the offsets: fixed, so that encoding the same tensor twice gives the same bytes.
const SEED: u64 = 0x5eed_0f9a_117e_5a3b;

/// Offsets drawn from one 16-bit slice range over `0..SLICE_RANGE`.
const SLICE_RANGE: usize = 1 << 16;

/// 16-bit slices of a 64-bit draw.
const SLICES_PER_DRAW: u32 = 4;

/// splitmix64: a tiny generator whose outputs are well mixed even for consecutive states.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform offset in `0..len` (`len > 0`), by the high half of a 64x64-bit product.
    fn below(&mut self, len: usize) -> usize {
        ((u128::from(self.next()) * len as u128) >> 64) as usize
    }
}

/// `size` values of `values`, one from each of `size` equal strata, in the order of the strata;
/// all of `values` when it holds no more than `size`.
#[cfg(test)]
pub(crate) fn stratified(values: &[f32], size: usize) -> Vec<f32> {
    let mut out = Vec::new();
    stratified_into(values, size, &mut out);
    out
}

/// [`stratified`] into `out` (cleared first), so that a caller can reuse its allocation.
pub(crate) fn stratified_into(values: &[f32], size: usize, out: &mut Vec<f32>) {
    out.clear();
    let n = values.len();
    if n <= size {
        out.extend_from_slice(values);
        return;
    }
    if size == 0 {
        return;
    }
    let mut rng = SplitMix(SEED);
    out.reserve(size);
    // Stratum k ends at floor((k + 1) n / size), stepped in integers: `base` per stratum, plus one
    // whenever the remainders add up to another `size` (a u128 division per value would cost
    // more than the draw).
    let (base, extra) = (n / size, n % size);
    // Strata of at most 2^16 values (all but those of tensors beyond 2^32 values) take their
    // offsets from 16-bit slices of a draw, four per draw: the generator would otherwise cost
    // more than reading the value.
    let narrow = base < SLICE_RANGE;
    let (mut slices, mut left) = (0u64, 0u32);
    let (mut start, mut carried) = (0usize, 0usize);
    for _ in 0..size {
        carried += extra;
        let len = if carried >= size {
            carried -= size;
            base + 1
        } else {
            base
        };
        // `n > size` makes `base`, so every stratum, at least one value long.
        let offset = if narrow {
            if left == 0 {
                (slices, left) = (rng.next(), SLICES_PER_DRAW);
            }
            // The high half of a 16x16-bit product, as `below` takes it of a 64x64-bit one.
            let slice = (slices & (SLICE_RANGE as u64 - 1)) as usize;
            (slices, left) = (slices >> 16, left - 1);
            (slice * len) >> 16
        } else {
            rng.below(len)
        };
        let at = start + offset;
        out.push(values.get(at).copied().unwrap_or(f32::NAN));
        start += len;
    }
}

/// The starts of `count` blocks of `len` values among `n`, one block in each of `count` equal
/// strata at a pseudo-random multiple of `len` inside it, in order (`n >= 2 * count * len`;
/// nothing otherwise). A block per stratum rather than a value: the caller reads whole cache
/// lines in a row, and a 16-bit offset per block costs a quarter of a draw.
pub(crate) fn stratified_blocks(n: usize, count: usize, len: usize, mut visit: impl FnMut(usize)) {
    if count == 0 || len == 0 || count.checked_mul(2 * len).is_none_or(|total| total > n) {
        return;
    }
    let mut rng = SplitMix(SEED);
    let (base, extra) = (n / count, n % count);
    let (mut slices, mut left) = (0u64, 0u32);
    let (mut start, mut carried) = (0usize, 0usize);
    for _ in 0..count {
        carried += extra;
        let stratum = if carried >= count {
            carried -= count;
            base + 1
        } else {
            base
        };
        // The first multiple of `len` at or after the stratum's start; `stratum >= 2 len`, so at
        // least one whole block from there fits.
        let first = start.next_multiple_of(len);
        let room = (start + stratum - first) / len;
        let pick = if room < SLICE_RANGE {
            if left == 0 {
                (slices, left) = (rng.next(), SLICES_PER_DRAW);
            }
            let slice = (slices & (SLICE_RANGE as u64 - 1)) as usize;
            (slices, left) = (slices >> 16, left - 1);
            (slice * room) >> 16
        } else {
            rng.below(room)
        };
        visit(first + pick * len);
        start += stratum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_stratum_deterministically() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let sample = stratified(&values, 64);
        assert_eq!(sample.len(), 64);
        for (k, &x) in sample.iter().enumerate() {
            let (lo, hi) = (k * 1000 / 64, (k + 1) * 1000 / 64);
            assert!((lo as f32..hi as f32).contains(&x), "stratum {k}: {x}");
        }
        assert_eq!(sample, stratified(&values, 64));
        assert_eq!(stratified(&values[..10], 64), &values[..10]);
        assert_eq!(stratified(&values[..65], 64).len(), 64);
        assert!(stratified(&values, 0).is_empty());
        // Offsets vary between strata: a tensor whose rows repeat is not sampled in one column.
        let columns: std::collections::HashSet<usize> =
            sample.iter().zip(0..).map(|(&x, k)| x as usize - k * 1000 / 64).collect();
        assert!(columns.len() > 8, "{columns:?}");
    }

    #[test]
    fn one_block_per_stratum() {
        for (n, count, len) in [(1000, 10, 16), (1 << 17, 512, 64), (100_003, 3000, 16), (256, 4, 16)] {
            let mut starts = Vec::new();
            stratified_blocks(n, count, len, |s| starts.push(s));
            assert_eq!(starts.len(), count);
            for (k, &s) in starts.iter().enumerate() {
                let (lo, hi) = (k * n / count, (k + 1) * n / count);
                assert!(s >= lo && s + len <= hi, "n {n}, block {k}: {s} not in {lo}..{hi}");
                assert_eq!(s % len, 0);
            }
            // Places vary between strata.
            let places: std::collections::HashSet<usize> =
                starts.iter().enumerate().map(|(k, &s)| s - k * n / count).collect();
            assert!(places.len() > 1, "n {n}");
        }
        let mut none = 0;
        stratified_blocks(100, 4, 16, |_| none += 1);
        assert_eq!(none, 0);
    }
}
