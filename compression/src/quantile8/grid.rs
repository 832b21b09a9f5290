//! The quantile codec's fast path for large tensors: borders snapped to the boundaries of a fine
//! grid of equal cells, so that a value's bucket is one table lookup by its cell, with no
//! comparison with any border, and the borders come from a histogram of a sample over the same
//! cells instead of a sort.
//!
//! The borders are only the encoder's choice (the wire carries the indices and the bucket means),
//! so snapping them changes no decoder. A border moves at most to the nearer end of the cell its
//! sample quantile falls in; when some cell holds so many sample values that this would move a
//! bucket's share by more than [`MAX_SNAP`], or the range of the grid misses the outer borders
//! (heavy tails, data concentrated on a few values, non-finite values), [`GridTable::new`] gives
//! `None` and the caller sorts a sample for exact borders instead.

use crate::codebook::{BINS, BinSums, SUM_LANES};
use crate::sample;

/// Cells of the grid: a 16 KiB table, which stays in the level-1 cache with the sums. On normal
/// data the central buckets (about 1/100 of a standard deviation wide) span about 20 cells, so a
/// snapped border moves by at most a fortieth of a bucket.
pub(crate) const CELLS: usize = 1 << 14;

/// Values of a sampled block: four cache lines, read in a row (single values or lines at random
/// places cost a cache miss each, which the hardware cannot prefetch).
const BLOCK: usize = 64;

/// The sample's most values: counts per cell fit a `u16`.
const MAX_SAMPLE: usize = (u16::MAX as usize / BLOCK) * BLOCK;

/// The sample's least values where there are enough: with fewer, the outer borders, which
/// decide most of the error, vary by several percent between samples.
const MIN_SAMPLE: usize = 1 << 15;

/// Values sampled from `n`: a quarter, at least [`MIN_SAMPLE`] but at most half of them, and at
/// most [`MAX_SAMPLE`].
fn sample_size(n: usize) -> usize {
    (n / 4).max(MIN_SAMPLE).min(n / 2).min(MAX_SAMPLE)
}

/// Values of the small sample whose low and high ranks span the grid.
const RANGE_SAMPLE: usize = 2048;

/// The ranks of [`RANGE_SAMPLE`] taken as the grid's ends before the margin: level 1/683, so the
/// outer borders (levels 1/256 and 255/256) lie inside unless the sample is unusually skewed
/// (about one in seventy samples; the snapping check then sends the tensor to the exact path).
const RANGE_RANK: usize = 2;

/// Margin on each side of the range, as a fraction of it.
const MARGIN: f32 = 0.125;

/// A snapped border may move a bucket's share of the sample by at most this fraction of a share
/// (on each side, so a bucket's share changes by at most twice this).
const MAX_SNAP: usize = 8;

/// 2^23: adding it to an f32 in `0..2^22` leaves the nearest integer in the low mantissa bits.
const CELL_MAGIC: f32 = 8_388_608.0;

/// Values whose cells are computed ahead of their lookups.
const GROUP: usize = 256;

const _: () = assert!(GROUP.is_multiple_of(SUM_LANES) && CELLS.is_power_of_two());

/// The bucket of every cell of a grid over the values' range.
pub(crate) struct GridTable {
    start: f32,
    /// Cells per unit of value.
    scale: f32,
    /// `bucket[c]`: the bucket of every value in cell `c`, non-decreasing in `c`.
    bucket: [u8; CELLS],
}

/// Reused buffers: the sample (at most 256 KiB) and the values picked from it for the range.
#[derive(Default)]
pub(crate) struct GridScratch {
    sample: Vec<f32>,
    range: Vec<f32>,
}

impl GridTable {
    /// The grid and its buckets for `values` ([`sample_size`] of them sampled, at least four
    /// times [`RANGE_SAMPLE`]), or `None` where snapped borders would stray from the sample's
    /// quantiles by more than [`MAX_SNAP`] (the caller then finds exact borders).
    pub(crate) fn new(values: &[f32], scratch: &mut GridScratch) -> Option<Self> {
        let n = values.len();
        let blocks = sample_size(n) / BLOCK;
        if blocks * BLOCK < 4 * RANGE_SAMPLE {
            return None;
        }
        let GridScratch { sample, range: picked } = scratch;
        sample.clear();
        sample::stratified_blocks(n, blocks, BLOCK, |at| {
            if let Some(block) = values.get(at..at + BLOCK) {
                sample.extend_from_slice(block);
            }
        });
        let (start, scale) = range(sample, picked)?;
        let mut table = GridTable { start, scale, bucket: [0u8; CELLS] };

        let mut counts = [0u16; CELLS];
        let mut cells = [0u32; BLOCK];
        let (whole, rest) = sample.as_chunks::<BLOCK>();
        for block in whole {
            for (c, &x) in cells.iter_mut().zip(block) {
                *c = table.cell(x);
            }
            for &c in &cells {
                // At most MAX_SAMPLE values in all: no count overflows.
                counts[c as usize & (CELLS - 1)] += 1;
            }
        }
        for &x in rest {
            counts[table.cell(x) as usize & (CELLS - 1)] += 1;
        }
        table.snap(&counts, sample.len()).then_some(table)
    }

    /// The cell of `x`, clamped to the grid (NaN: cell 0), as an index below [`CELLS`].
    #[inline(always)]
    fn cell(&self, x: f32) -> u32 {
        // `max` and `min` drop NaN. Rounding by adding 2^23 vectorizes where `as u32` does not,
        // and rounding to nearest is monotone, which is all the grid needs.
        #[allow(clippy::manual_clamp)]
        let c = ((x - self.start) * self.scale).max(0.0).min((CELLS - 1) as f32);
        (c + CELL_MAGIC).to_bits() - CELL_MAGIC.to_bits()
    }

    /// Puts border `k` (1 to 255) at the cell boundary where the sample's cumulative count comes
    /// nearest to `k m / 256`, fills the table, and says whether every border came within
    /// `1 / MAX_SNAP` of a share of its target.
    fn snap(&mut self, counts: &[u16; CELLS], m: usize) -> bool {
        // In units of 1/256 of a value, so that targets are integers: border k's is `k m`.
        let m = m as u64;
        let tolerance = m / MAX_SNAP as u64;
        let (mut c, mut below) = (0usize, 0u64);
        let mut from = 0usize;
        for k in 1..BINS {
            let target = k as u64 * m;
            // The cell holding the target: cumulative counts up to `below` before it, `next`
            // after (skipping cells in a tight loop, since most hold no border).
            let next = loop {
                let Some(&count) = counts.get(c) else { return false };
                let next = below + 256 * u64::from(count);
                if next >= target {
                    break next;
                }
                (below, c) = (next, c + 1);
            };
            let (from_start, to_end) = (target - below, next - target);
            if from_start.min(to_end) > tolerance {
                return false;
            }
            // The border at the cell's start puts the cell in bucket k, at its end the next cell.
            let border = if from_start <= to_end { c } else { c + 1 };
            if let Some(cells) = self.bucket.get_mut(from..border) {
                cells.fill((k - 1) as u8);
            }
            from = from.max(border);
        }
        if let Some(cells) = self.bucket.get_mut(from..) {
            cells.fill((BINS - 1) as u8);
        }
        true
    }

    /// `dst[i]` = the bucket of `src[i]`, each value added to its bucket's sums as
    /// [`BinSums::add`] would add it: the cells of a group first, in a loop that vectorizes, then
    /// one lookup per value.
    pub(crate) fn bucketize(&self, src: &[f32], dst: &mut [u8], sums: &mut BinSums) {
        let mut cells = [0u32; GROUP];
        for (src, dst) in src.chunks(GROUP).zip(dst.chunks_mut(GROUP)) {
            for (c, &x) in cells.iter_mut().zip(src) {
                *c = self.cell(x);
            }
            let table = &self.bucket;
            let (xs, x_rest) = src.as_chunks::<SUM_LANES>();
            let (ds, d_rest) = dst.as_chunks_mut::<SUM_LANES>();
            let (cs, c_rest) = cells[..src.len()].as_chunks::<SUM_LANES>();
            for ((x, d), c) in xs.iter().zip(ds).zip(cs) {
                for lane in 0..SUM_LANES {
                    // The mask only lets the compiler drop the bounds check.
                    d[lane] = table[c[lane] as usize & (CELLS - 1)];
                }
                sums.add_run(d, x);
            }
            for ((&x, d), &c) in x_rest.iter().zip(d_rest).zip(c_rest) {
                *d = table[c as usize & (CELLS - 1)];
                sums.add_one(0, *d, f64::from(x));
            }
        }
    }

    /// The bucket of one value.
    #[cfg(test)]
    pub(crate) fn bucket(&self, x: f32) -> u8 {
        self.bucket[self.cell(x) as usize & (CELLS - 1)]
    }
}

/// The grid's start and cells per unit: the span of ranks [`RANGE_RANK`] from either end of
/// [`RANGE_SAMPLE`] values spread over the sample, widened by [`MARGIN`] on each side; `None` if
/// that span is empty or not finite.
fn range(sample: &[f32], picked: &mut Vec<f32>) -> Option<(f32, f32)> {
    picked.clear();
    picked.extend(sample.iter().step_by((sample.len() / RANGE_SAMPLE).max(1)));
    let top = picked.len().checked_sub(1 + RANGE_RANK)?;
    let (_, &mut hi, _) = picked.select_nth_unstable_by(top, f32::total_cmp);
    let (_, &mut lo, _) = picked[..top].select_nth_unstable_by(RANGE_RANK, f32::total_cmp);
    let margin = (hi - lo) * MARGIN;
    let (start, end) = (lo - margin, hi + margin);
    let scale = CELLS as f32 / (end - start);
    (start.is_finite() && end > start && scale.is_finite() && scale > 0.0).then_some((start, scale))
}
