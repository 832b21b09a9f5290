//! BLOCKWISE_8BIT's fixed code (bitsandbytes' signed dynamic map) and the table that finds a
//! scaled value's nearest entry in one lookup and one comparison.

use std::sync::LazyLock;

use super::CODE_LEN;

/// Bits of an element's order key that pick its bucket in the nearest-code table: sign,
/// exponent and 7 mantissa bits, so a bucket spans less than 0.8% of its values' magnitude while
/// neighbouring code entries lie at least 1.4% apart (a test checks this).
const BUCKET_BITS: u32 = 16;

/// Values whose keys [`Tables::nearest_scaled`] computes at a time.
const GROUP: usize = 512;

/// The nearest-code search tables, built once.
pub(super) struct Tables {
    /// The code as transmitted: sorted, first entry -1.0.
    pub(super) code: [f32; CODE_LEN],
    /// Order keys of the midpoints between neighbouring code entries; the last entry is
    /// `u32::MAX`, above every key, so index 255 never moves up.
    midpoint_keys: [u32; CODE_LEN],
    /// For each bucket of keys (the top [`BUCKET_BITS`] bits), how many midpoints lie below the
    /// bucket's first key.
    below: Box<[u8; 1 << BUCKET_BITS]>,
}

pub(super) static TABLES: LazyLock<Tables> = LazyLock::new(Tables::new);

/// A u32 that orders like the f32 (every negative below every positive, -0 just below +0), so
/// the search compares integers.
#[inline(always)]
fn order_key(x: f32) -> u32 {
    let bits = x.to_bits();
    // Negative values flip all bits, positive ones only the sign bit.
    bits ^ (((bits as i32) >> 31) as u32 | 0x8000_0000)
}

/// bitsandbytes' `create_dynamic_map(signed=True, max_exponent_bits=7)`: for `i = 0..6` the `2^i`
/// midpoints of `linspace(0.1, 1, 2^i + 1)` scaled by `10^(i - 6)`, both signs, plus 0 and 1,
/// sorted; then hivemind's change of the first entry to -1.0.
fn dynamic_code() -> [f32; CODE_LEN] {
    let mut values = Vec::with_capacity(CODE_LEN);
    for i in 0..7i32 {
        let n = 1u32 << i;
        let scale = 10f64.powi(i - 6);
        for j in 0..n {
            let midpoint = 0.1 + 0.9 * (f64::from(j) + 0.5) / f64::from(n);
            values.push((midpoint * scale) as f32);
            values.push((-midpoint * scale) as f32);
        }
    }
    values.push(0.0);
    values.push(1.0);
    values.sort_unstable_by(f32::total_cmp);
    let mut code = [0f32; CODE_LEN];
    code.copy_from_slice(&values);
    code[0] = -1.0;
    code
}

impl Tables {
    fn new() -> Self {
        let code = dynamic_code();
        let mut midpoint_keys = [u32::MAX; CODE_LEN];
        for (key, pair) in midpoint_keys.iter_mut().zip(code.windows(2)) {
            *key = order_key(((f64::from(pair[0]) + f64::from(pair[1])) / 2.0) as f32);
        }
        let mut below = Box::new([0u8; 1 << BUCKET_BITS]);
        for (bucket, count) in below.iter_mut().enumerate() {
            let first_key = (bucket as u32) << (32 - BUCKET_BITS);
            // At most 255 midpoints, so the count fits a byte.
            *count = midpoint_keys[..CODE_LEN - 1].partition_point(|&m| m < first_key) as u8;
        }
        Tables { code, midpoint_keys, below }
    }

    /// The index of the code entry nearest to `v` (the lower one on an exact tie): the number of
    /// midpoints below `v`. The bucket table gives the count below the bucket's start; at most
    /// one midpoint lies inside a bucket, so one comparison finishes it.
    #[cfg(test)]
    pub(super) fn nearest(&self, v: f32) -> u8 {
        let key = order_key(v);
        let base = self.below[(key >> (32 - BUCKET_BITS)) as usize];
        base + u8::from(self.midpoint_keys[usize::from(base)] < key)
    }

    /// `dst[i] = nearest(src[i] * inverse)`, a group at a time: the keys in a loop that
    /// vectorizes, then the lookups, with the tables' addresses read once rather than after
    /// every store.
    pub(super) fn nearest_scaled(&self, src: &[f32], inverse: f32, dst: &mut [u8]) {
        let below: &[u8; 1 << BUCKET_BITS] = &self.below;
        let midpoints = &self.midpoint_keys;
        let mut keys = [0u32; GROUP];
        for (src, dst) in src.chunks(GROUP).zip(dst.chunks_mut(GROUP)) {
            for (k, &x) in keys.iter_mut().zip(src) {
                *k = order_key(x * inverse);
            }
            for (b, &key) in dst.iter_mut().zip(&keys) {
                let base = below[(key >> (32 - BUCKET_BITS)) as usize];
                *b = base + u8::from(midpoints[usize::from(base)] < key);
            }
        }
    }
}

/// The nearest code entry by a scan (the lower one on a tie): the reference for the table.
#[cfg(test)]
pub(super) fn nearest_by_scan(code: &[f32; CODE_LEN], v: f32) -> u8 {
    let distance = |i: usize| (f64::from(code[i]) - f64::from(v)).abs();
    (0..CODE_LEN).min_by(|&a, &b| distance(a).total_cmp(&distance(b))).unwrap() as u8
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::blockwise8::ZERO_INDEX;

    #[test]
    fn the_code_is_bitsandbytes_dynamic_map_with_hiveminds_first_entry() {
        let code = &TABLES.code;
        assert!(code.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        assert_eq!((code[0], code[usize::from(ZERO_INDEX)], code[255]), (-1.0, 0.0, 1.0));
        // The largest midpoint of linspace(0.1, 1, 65), and the smallest entry: the one midpoint
        // of linspace(0.1, 1, 2), times 1e-6.
        assert_eq!(code[254], 0.992_968_75);
        assert_eq!(code[128], 5.5e-7);
        assert_eq!(code[126], -5.5e-7);
        // Both signs of every magnitude, except the first entry that hivemind replaced.
        for j in 0..126 {
            assert_eq!(code[126 - j], -code[128 + j], "{j}");
        }
        // Decades of 2^i entries per sign: 1 in [1e-7, 1e-6), ..., 64 in [0.1, 1).
        for i in 0..7 {
            let (lo, hi) = (10f32.powi(i - 7), 10f32.powi(i - 6));
            assert_eq!(code.iter().filter(|&&c| c > lo && c < hi).count(), 1 << i, "decade {i}");
        }
    }

    #[test]
    fn buckets_of_the_search_table_hold_at_most_one_midpoint() {
        let keys = &TABLES.midpoint_keys[..CODE_LEN - 1];
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1]);
            assert_ne!(pair[0] >> (32 - BUCKET_BITS), pair[1] >> (32 - BUCKET_BITS));
        }
    }

    #[test]
    fn nearest_matches_a_scan_of_the_code() {
        let tables = &*TABLES;
        let mut rng = StdRng::seed_from_u64(9);
        let mut probes: Vec<f32> = (0..200_000).map(|_| rng.random_range(-1.05f32..1.05)).collect();
        // Small magnitudes, where the code is dense, and every entry with its neighbours.
        probes.extend((0..50_000).map(|_| rng.random_range(-1e-3f32..1e-3)));
        probes.extend((0..50_000).map(|_| rng.random_range(-2e-6f32..2e-6)));
        for &c in &tables.code {
            probes.extend([c, c.next_up(), c.next_down()]);
        }
        probes.extend([0.0, -0.0, f32::MIN_POSITIVE, 1e-30, -1e-30, 2.0, -2.0]);
        let mut scaled = vec![0u8; probes.len()];
        tables.nearest_scaled(&probes, 1.0, &mut scaled);
        for (&v, &got) in probes.iter().zip(&scaled) {
            assert_eq!(tables.nearest(v), nearest_by_scan(&tables.code, v), "{v}");
            assert_eq!(got, tables.nearest(v), "{v}");
        }
        assert_eq!((tables.nearest(f32::INFINITY), tables.nearest(f32::NEG_INFINITY)), (255, 0));
    }
}
