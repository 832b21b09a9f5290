//! Bucketing many values against the quantile codec's 255 sorted borders with a lookup table
//! instead of an 8-step binary search per value: a grid of equal cells between the first and the
//! last border says, for each cell, how many borders lie in the cells before it; only the
//! borders inside a value's own cell (usually none or one) are compared.

use crate::codebook::BINS;

/// Cells of the grid. With 4096 (a 4 KiB table, which stays in L1), the narrowest buckets of
/// normal data (about 1/100 of a standard deviation, at the mean) span several cells.
const CELLS: usize = 4096;

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

/// The number of inner borders below `x`, whose cell is `c`, given the table's counts per cell.
#[inline(always)]
fn bucket_in(first: &[u8; CELLS + 1], borders: &[f32; BINS], c: usize, x: f32) -> u8 {
    // The mask only lets the compiler drop the bounds checks: cells are below `CELLS`.
    let c = c & (CELLS - 1);
    let (lo, hi) = (usize::from(first[c]), usize::from(first[c + 1]));
    // Borders before `lo` lie in earlier cells, so below x; those from `hi` on in later ones.
    // NaN compares false with every border, and its cell 0 has no borders before it.
    if hi - lo <= 1 {
        let inside = usize::from(lo < hi) & usize::from(borders[lo & (BINS - 1)] < x);
        return (lo + inside) as u8;
    }
    // Several borders share the cell (data far denser here than on average, as with heavy
    // tails): the full search, which costs what it would without the table.
    bucket_of(borders, x)
}

/// Values whose cells [`BucketTable::bucketize`] computes at a time.
const GROUP: usize = 256;

/// The lookup table for one set of borders.
pub(crate) struct BucketTable<'a> {
    borders: &'a [f32; BINS],
    /// The first inner border: the grid's start.
    start: f32,
    /// Cells per unit of value.
    scale: f32,
    /// `first[c]`: how many of the 255 inner borders fall in cells before `c` (the grid is only
    /// a hint: a border's cell is computed with the same arithmetic as a value's).
    first: [u8; CELLS + 1],
}

impl<'a> BucketTable<'a> {
    /// The table for `borders` (255 sorted inner borders, then +inf); `None` when a border is
    /// not finite or all are equal, where the binary search is used instead.
    pub(crate) fn new(borders: &'a [f32; BINS]) -> Option<Self> {
        let inner = &borders[..BINS - 1];
        let (start, end) = (inner[0], inner[BINS - 2]);
        if inner.iter().any(|b| !b.is_finite()) || end <= start {
            return None;
        }
        let scale = CELLS as f32 / (end - start);
        if !scale.is_finite() {
            return None;
        }
        let mut table = BucketTable { borders, start, scale, first: [0u8; CELLS + 1] };
        // Counting borders per cell, then prefix sums: `cell` is monotone in its argument, so
        // a border in an earlier cell than a value is below it, and one in a later cell is not.
        let mut counts = [0usize; CELLS + 1];
        for &b in inner {
            counts[table.cell(b) + 1] += 1;
        }
        let mut below = 0;
        for (entry, &count) in table.first.iter_mut().zip(&counts) {
            below += count;
            // At most 255 borders, so the count fits.
            *entry = below as u8;
        }
        Some(table)
    }

    /// The cell of `x`, clamped to the grid (NaN: cell 0).
    #[inline(always)]
    fn cell(&self, x: f32) -> usize {
        // `max` and `min` drop NaN, and the clamp makes the index valid for `first[c + 1]` too;
        // the cast through i32 is one instruction, and vectorizes.
        #[allow(clippy::manual_clamp)]
        let c = ((x - self.start) * self.scale).max(0.0).min((CELLS - 1) as f32);
        c as i32 as usize
    }

    /// The number of inner borders below `x` (NaN: 0), as the binary search counts them.
    #[cfg(test)]
    pub(crate) fn bucket(&self, x: f32) -> u8 {
        bucket_in(&self.first, self.borders, self.cell(x), x)
    }

    /// `dst[i] = bucket(src[i])`: the cells of a group first, in a loop that vectorizes, then
    /// the lookups.
    pub(crate) fn bucketize(&self, src: &[f32], dst: &mut [u8]) {
        let mut cells = [0u32; GROUP];
        for (src, dst) in src.chunks(GROUP).zip(dst.chunks_mut(GROUP)) {
            for (c, &x) in cells.iter_mut().zip(src) {
                *c = self.cell(x) as u32;
            }
            // The tables' addresses read once: reading them through `self` after every store
            // (which might alias, as far as the compiler knows) costs as much as the lookup.
            let (first, borders) = (&self.first, self.borders);
            for ((d, &x), &c) in dst.iter_mut().zip(src).zip(&cells) {
                *d = bucket_in(first, borders, c as usize, x);
            }
        }
    }
}
