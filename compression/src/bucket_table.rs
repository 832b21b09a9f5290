//! Bucketing many values against the quantile codec's 255 sorted borders with a lookup table
//! instead of an 8-step binary search per value: a grid of equal cells between the first and the
//! last border says, for each cell, how many borders lie in the cells before it; only the
//! borders inside a value's own cell are compared.
//!
//! When no cell holds more than [`MAX_CROWD`] borders (normal-like data), every value is compared
//! with the same number of borders, so the lookup has no branch at all; otherwise cells with
//! several borders fall back to the binary search.

use crate::codebook::{BINS, BinSums, SUM_LANES};

/// Cells of the grid. With 8192 (an 8 KiB table, which stays in L1), the narrowest buckets of
/// normal data (about 1/100 of a standard deviation, at the mean) span a dozen cells, and those of
/// moderately skewed data still hold few borders per cell.
const CELLS: usize = 8192;

/// The most borders per cell for which every value is compared with that many borders in a row,
/// branch-free, instead of branching on its cell's count.
const MAX_CROWD: usize = 4;

/// The number of `borders[..255]` below `x` (torch's `bucketize` with `right = False`), by a
/// branch-free binary search over the sorted borders: 8 steps, each index below 255.
#[inline(always)]
pub(crate) fn bucket_of(borders: &[f32; BINS], x: f32) -> u8 {
    let mut pos = 0usize;
    for step in [128, 64, 32, 16, 8, 4, 2, 1] {
        // After the steps before this one `pos <= 256 - 2 step`, so the index stays below 255;
        // the mask only lets the compiler drop the bounds check.
        pos += step * usize::from(borders[(pos + step - 1) & (BINS - 1)] < x);
    }
    pos as u8
}

/// 2^23: the f32 whose unit in the last place is 1.
const CELL_MAGIC: f32 = 8_388_608.0;

/// Values whose cells [`BucketTable::bucketize`] computes at a time.
const GROUP: usize = 256;

// The fused lookup spreads runs of `SUM_LANES` values over the sums as `BinSums::add` does only
// if every group but the last is a whole number of runs.
const _: () = assert!(GROUP.is_multiple_of(SUM_LANES));

/// The lookup table for one set of borders.
pub(crate) struct BucketTable {
    /// The 255 inner borders, then +inf up to the end: a value compares with the borders from
    /// its cell's first on, and those past the last one must compare false.
    borders: [f32; BINS + MAX_CROWD],
    /// The first inner border: the grid's start.
    start: f32,
    /// Cells per unit of value.
    scale: f32,
    /// `first[c]`: how many of the 255 inner borders fall in cells before `c` (the grid is only
    /// a hint: a border's cell is computed with the same arithmetic as a value's).
    first: [u8; CELLS + 1],
    /// The most borders any one cell holds.
    crowd: usize,
}

impl BucketTable {
    /// The table for `borders` (255 sorted inner borders, then +inf); `None` when a border is
    /// not finite or all are equal, where the binary search is used instead.
    pub(crate) fn new(borders: &[f32; BINS]) -> Option<Self> {
        let inner = &borders[..BINS - 1];
        let (start, end) = (inner[0], inner[BINS - 2]);
        if inner.iter().any(|b| !b.is_finite()) || end <= start {
            return None;
        }
        let scale = CELLS as f32 / (end - start);
        if !scale.is_finite() {
            return None;
        }
        let mut padded = [f32::INFINITY; BINS + MAX_CROWD];
        padded[..BINS - 1].copy_from_slice(inner);
        let mut table = BucketTable { borders: padded, start, scale, first: [0u8; CELLS + 1], crowd: 0 };
        // Counting borders per cell, then prefix sums: `cell` is monotone in its argument, so
        // a border in an earlier cell than a value is below it, and one in a later cell is not.
        let mut counts = [0u8; CELLS + 1];
        for &b in inner {
            // At most 255 borders in all, so a cell's count fits.
            counts[table.cell(b) + 1] += 1;
        }
        table.crowd = usize::from(counts.iter().copied().max().unwrap_or(0));
        let mut below = 0u8;
        for (entry, &count) in table.first.iter_mut().zip(&counts) {
            below += count;
            *entry = below;
        }
        Some(table)
    }

    /// The cell of `x`, clamped to the grid (NaN: cell 0).
    #[inline(always)]
    fn cell(&self, x: f32) -> usize {
        // `max` and `min` drop NaN, and the clamp makes the index valid for `first[c + 1]` too.
        #[allow(clippy::manual_clamp)]
        let c = ((x - self.start) * self.scale).max(0.0).min((CELLS - 1) as f32);
        // Adding 2^23 rounds `c` (in 0..CELLS) to an integer left in the low mantissa bits: an
        // addition and a subtraction, which vectorize, where `as i32` must also handle NaN and
        // overflow and stays scalar. Rounding to nearest rather than down is monotone too, which
        // is all the grid needs.
        ((c + CELL_MAGIC).to_bits() - CELL_MAGIC.to_bits()) as usize
    }

    /// The most borders any one cell holds.
    #[cfg(test)]
    pub(crate) fn crowd(&self) -> usize {
        self.crowd
    }

    /// The number of inner borders below `x` (NaN: 0), as the binary search counts them.
    #[cfg(test)]
    pub(crate) fn bucket(&self, x: f32) -> u8 {
        let mut q = [0u8];
        self.bucketize(&[x], &mut q, &mut BinSums::new());
        q[0]
    }

    /// `dst[i] = bucket(src[i])`, adding each value to its bucket's sum as [`BinSums::add`]
    /// would: the cells of a group first, in a loop that vectorizes, then the lookups.
    pub(crate) fn bucketize(&self, src: &[f32], dst: &mut [u8], sums: &mut BinSums) {
        match self.crowd {
            0 | 1 => self.bucketize_flat::<1>(src, dst, sums),
            2 => self.bucketize_flat::<2>(src, dst, sums),
            3 => self.bucketize_flat::<3>(src, dst, sums),
            4 => self.bucketize_flat::<MAX_CROWD>(src, dst, sums),
            _ => {
                self.bucketize_crowded(src, dst);
                sums.add(src, dst);
            }
        }
    }

    /// [`Self::bucketize`] when no cell holds more than `K` borders: each value is compared with
    /// the `K` borders from its cell's first on. Those beyond its cell are above it (or +inf), so
    /// they add nothing, and no comparison depends on another: the loop has no branch. Adding
    /// to the sums in the same loop saves storing and reloading each value and its bucket.
    fn bucketize_flat<const K: usize>(&self, src: &[f32], dst: &mut [u8], sums: &mut BinSums) {
        let mut cells = [0u32; GROUP];
        for (src, dst) in src.chunks(GROUP).zip(dst.chunks_mut(GROUP)) {
            for (c, &x) in cells.iter_mut().zip(src) {
                *c = self.cell(x) as u32;
            }
            // The tables' addresses read once: reading them through `self` after every store
            // (which might alias, as far as the compiler knows) costs as much as the lookup.
            let (first, borders) = (&self.first, &self.borders);
            let lookup = |x: f32, c: u32| {
                // The mask only lets the compiler drop the bounds check: cells are below `CELLS`.
                let lo = first[c as usize & (CELLS - 1)];
                let mut bucket = lo;
                for j in 0..K {
                    // `lo <= 255` and `j < K <= MAX_CROWD`: inside the padded borders. NaN
                    // compares false, and its cell 0 has no borders before it.
                    bucket += u8::from(borders[usize::from(lo) + j] < x);
                }
                bucket
            };
            // Runs of `SUM_LANES` values spread over the sums' copies, as `BinSums::add` spreads
            // them (a group's length is a multiple of the run, so runs line up with its).
            let (xs, x_rest) = src.as_chunks::<SUM_LANES>();
            let (ds, d_rest) = dst.as_chunks_mut::<SUM_LANES>();
            let (cs, c_rest) = cells[..src.len()].as_chunks::<SUM_LANES>();
            for ((x, d), c) in xs.iter().zip(ds).zip(cs) {
                for lane in 0..SUM_LANES {
                    d[lane] = lookup(x[lane], c[lane]);
                }
                sums.add_run(d, x);
            }
            for ((&x, d), &c) in x_rest.iter().zip(d_rest).zip(c_rest) {
                *d = lookup(x, c);
                sums.add_one(0, *d, f64::from(x));
            }
        }
    }

    /// [`Self::bucketize`] when some cell holds several borders (data far denser there than on
    /// average, as with heavy tails): cells with at most one border compare once, the others
    /// search.
    fn bucketize_crowded(&self, src: &[f32], dst: &mut [u8]) {
        let mut cells = [0u32; GROUP];
        let mut searched = [f32::INFINITY; BINS];
        searched[..BINS - 1].copy_from_slice(&self.borders[..BINS - 1]);
        for (src, dst) in src.chunks(GROUP).zip(dst.chunks_mut(GROUP)) {
            for (c, &x) in cells.iter_mut().zip(src) {
                *c = self.cell(x) as u32;
            }
            let (first, borders) = (&self.first, &self.borders);
            for ((d, &x), &c) in dst.iter_mut().zip(src).zip(&cells) {
                let c = c as usize & (CELLS - 1);
                let (lo, hi) = (first[c], first[c + 1]);
                // Borders before `lo` lie in earlier cells, so below x; those from `hi` on in
                // later ones.
                *d = if hi - lo <= 1 {
                    lo + u8::from(lo < hi && borders[usize::from(lo)] < x)
                } else {
                    bucket_of(&searched, x)
                };
            }
        }
    }
}
