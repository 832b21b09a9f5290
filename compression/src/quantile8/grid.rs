//! The quantile codec's fast path for large tensors: borders snapped to the boundaries of a fine
//! grid of equal cells, found from a histogram of all values over the cells instead of a sorted
//! sample, so that a value's bucket is one table lookup by its cell.
//!
//! The borders are the encoder's choice (the wire carries the indices and the bucket means), so
//! snapping them changes no decoder. A border moves at most to the nearer end of the cell its
//! quantile falls in; when some cell holds so many values that this would move a bucket's share by
//! more than [`MAX_SNAP`], or the grid's range misses the outer borders (heavy tails, data
//! concentrated on a few values, non-finite values), [`Grid::new`] gives `None` and the caller
//! sorts a sample for exact borders instead.
//!
//! The histogram also gives the codebook: each bucket's count exactly, and its sum as the sum of
//! its cells' centres times their counts, so the bucketing pass adds no value to any sum. A value
//! lies within half a cell of its cell's centre, so an entry differs from its bucket's exact mean
//! by at most half a cell (on normal data a tenth of the narrowest bucket's width, and much less
//! on average, as the offsets within cells cancel); the two end cells, which hold everything
//! beyond the grid, are summed exactly.
//!
//! Measured on 512 KiB parts: the histogram's increments and the per-cell work (snapping, means)
//! are most of the cost besides the lookups, so the grid is as coarse as the data allows: a
//! [`Survey`] of a small sample picks 4096 cells (16 KiB of counts, a 4 KiB table) where they
//! give the central buckets about four cells each (normal-like data), 16384 where only those do
//! (Laplace-like data, whose centre is denser), and no grid otherwise, so that data no grid suits
//! costs a survey rather than a wasted histogram. (8192 or 16384 cells for all data, or cells
//! finer in the middle of the range, were 10-40% slower on normal data.)

use crate::codebook::BINS;
use crate::sample;

/// Cells of the grid tried first. On normal data the central buckets (about 1/100 of a standard
/// deviation wide) span about five cells, and a cell holds under a tenth of a bucket's share.
pub(crate) const COARSE: usize = 1 << 12;

/// Cells of the grid tried when the coarse one crowds its centre only a few times beyond
/// [`MAX_SNAP`], as Laplace-like data (gradients often are) does: four times finer, at the cost
/// of a second histogram.
pub(crate) const FINE: usize = 1 << 14;

/// Why [`Grid::new`] gave no grid.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Declined {
    /// A border missed its target by at most [`FINER_HELPS`] times the tolerance: a finer grid
    /// may place it.
    Coarse,
    /// Anything else: too few values, a range that is not finite, or a cell crowded by far more
    /// than a finer grid would split (values repeated many times).
    Unfit,
}

/// Misses up to this many times the tolerance are [`Declined::Coarse`].
const FINER_HELPS: u64 = 4;

/// Values of a block of the range sample: four cache lines, read in a row (single values at
/// random places cost a cache miss each, which the hardware cannot prefetch).
const BLOCK: usize = 64;

/// Values of the small sample whose low and high ranks span the grid.
const RANGE_SAMPLE: usize = 2048;

/// The ranks of [`RANGE_SAMPLE`] taken as the grid's ends before the margin: level 1/683, so the
/// outer borders (levels 1/256 and 255/256) lie inside unless the sample is unusually skewed
/// (about one in seventy samples; the snapping check then sends the tensor to the exact path).
const RANGE_RANK: usize = 2;

/// Margin on each side of the range, as a fraction of it.
const MARGIN: f32 = 0.125;

/// A snapped border may move a bucket's share by at most this fraction of a share (on each side,
/// so a bucket's share changes by at most twice this).
const MAX_SNAP: usize = 8;

/// 2^23: adding it to an f32 in `0..2^22` leaves the nearest integer in the low mantissa bits.
const CELL_MAGIC: f32 = 8_388_608.0;

/// Values whose cells are computed ahead of their lookups.
const GROUP: usize = 256;

/// The least values for [`Grid::new`]: the range sample's blocks need strata of two blocks.
pub(crate) const MIN_VALUES: usize = 2 * RANGE_SAMPLE * 2;

/// The bucket of every cell of a grid over the values' range, and the codebook.
pub(crate) struct Grid<const CELLS: usize> {
    start: f32,
    /// Cells per unit of value.
    scale: f32,
    /// `bucket[c]`: the bucket of every value in cell `c`, non-decreasing in `c`.
    bucket: [u8; CELLS],
    codebook: [f32; BINS],
}

/// Reused buffers: the range sample (8 KiB) and the histogram (64 KiB).
#[derive(Default)]
pub(crate) struct GridScratch {
    sample: Vec<f32>,
    counts: Vec<u32>,
}

impl<const CELLS: usize> Grid<CELLS> {
    /// Indices are masked with `CELLS - 1` (only so the compiler drops bounds checks).
    const POWER_OF_TWO: () = assert!(CELLS.is_power_of_two());

    /// The grid over `survey`'s range, its buckets and the codebook for `values` (at least
    /// [`MIN_VALUES`]), or why not: snapped borders would stray from the quantiles by more than [`MAX_SNAP`] (the caller
    /// then tries a finer grid or finds exact borders).
    pub(crate) fn new(values: &[f32], survey: &Survey, scratch: &mut GridScratch) -> Result<Self, Declined> {
        let () = Self::POWER_OF_TWO;
        let n = values.len();
        if n < MIN_VALUES || u32::try_from(n).is_err() {
            return Err(Declined::Unfit);
        }
        let counts = &mut scratch.counts;
        let (start, end) = (survey.start, survey.end);
        let scale = CELLS as f32 / (end - start);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Declined::Unfit);
        }
        let mut grid = Grid { start, scale, bucket: [0u8; CELLS], codebook: [0f32; BINS] };

        counts.clear();
        counts.resize(CELLS, 0);
        let counts: &mut [u32; CELLS] = counts.as_mut_slice().try_into().map_err(|_| Declined::Unfit)?;
        // Exact sums of the two end cells, which hold every value beyond the grid.
        let mut ends = [0f64; 2];
        let mut cells = [0u32; GROUP];
        for group in values.chunks(GROUP) {
            // Whether any value of the group is in an end cell, found in the loop that
            // vectorizes, so that counting is nothing but increments for most groups.
            let mut at_ends = 0u32;
            for (c, &x) in cells.iter_mut().zip(group) {
                *c = grid.cell(x);
                at_ends |= u32::from(*c == 0) | u32::from(*c == (CELLS - 1) as u32);
            }
            for &c in &cells[..group.len()] {
                // At most u32::MAX values: no count overflows.
                counts[c as usize & (CELLS - 1)] += 1;
            }
            if at_ends != 0 {
                for (&c, &x) in cells.iter().zip(group) {
                    if c == 0 || c == (CELLS - 1) as u32 {
                        ends[usize::from(c != 0)] += f64::from(x);
                    }
                }
            }
        }
        grid.snap(counts, n)?;
        grid.codebook = grid.means(counts, ends);
        Ok(grid)
    }

    /// The codebook: each bucket's mean, from its cells' counts and centres (the end cells'
    /// exact sums `ends` instead of theirs), 0 for empty buckets.
    fn means(&self, counts: &[u32; CELLS], ends: [f64; 2]) -> [f32; BINS] {
        // Per bucket: values, values in inner cells, and the sum of their cell indices.
        let mut all = [0u64; BINS];
        let mut inner = [0u64; BINS];
        let mut index_sum = [0u64; BINS];
        for (c, (&count, &b)) in counts.iter().zip(&self.bucket).enumerate() {
            let b = usize::from(b);
            all[b] += u64::from(count);
            if c != 0 && c != CELLS - 1 {
                inner[b] += u64::from(count);
                index_sum[b] += u64::from(count) * c as u64;
            }
        }
        let mut sums = [0f64; BINS];
        sums[usize::from(self.bucket[0])] += ends[0];
        sums[usize::from(self.bucket[CELLS - 1])] += ends[1];
        let (start, scale) = (f64::from(self.start), f64::from(self.scale));
        let mut codebook = [0f32; BINS];
        for (b, entry) in codebook.iter_mut().enumerate() {
            if all[b] > 0 {
                // Cell c's centre is start + c / scale, where `cell` rounds to.
                let sum = sums[b] + inner[b] as f64 * start + index_sum[b] as f64 / scale;
                *entry = (sum / all[b] as f64) as f32;
            }
        }
        codebook
    }

    /// The codebook: the mean of each bucket (within half a cell), 0 for empty buckets.
    pub(crate) fn codebook(&self) -> [f32; BINS] {
        self.codebook
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

    /// Puts border `k` (1 to 255) at the cell boundary where the cumulative count of the `m`
    /// values comes nearest to `k m / 256`, fills the table, and says whether every border came
    /// within `1 / MAX_SNAP` of a share of its target (if not, whether a finer grid may help).
    fn snap(&mut self, counts: &[u32; CELLS], m: usize) -> Result<(), Declined> {
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
                let Some(&count) = counts.get(c) else { return Err(Declined::Unfit) };
                let next = below + 256 * u64::from(count);
                if next >= target {
                    break next;
                }
                (below, c) = (next, c + 1);
            };
            let (from_start, to_end) = (target - below, next - target);
            let miss = from_start.min(to_end);
            if miss > tolerance {
                return Err(if miss <= FINER_HELPS * tolerance { Declined::Coarse } else { Declined::Unfit });
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
        Ok(())
    }

    /// `dst[i]` = the bucket of `src[i]`: the cells of a group first, in a loop that vectorizes,
    /// then one lookup per value.
    pub(crate) fn bucketize(&self, src: &[f32], dst: &mut [u8]) {
        let mut cells = [0u32; GROUP];
        for (src, dst) in src.chunks(GROUP).zip(dst.chunks_mut(GROUP)) {
            for (c, &x) in cells.iter_mut().zip(src) {
                *c = self.cell(x);
            }
            let table = &self.bucket;
            for (d, &c) in dst.iter_mut().zip(&cells) {
                // The mask only lets the compiler drop the bounds check.
                *d = table[c as usize & (CELLS - 1)];
            }
        }
    }

    /// The width of a cell.
    #[cfg(test)]
    pub(crate) fn cell_width(&self) -> f32 {
        1.0 / self.scale
    }

    /// The bucket of one value.
    #[cfg(test)]
    pub(crate) fn bucket(&self, x: f32) -> u8 {
        self.bucket[self.cell(x) as usize & (CELLS - 1)]
    }
}

/// What a small sample of the values says before any grid is built: the grid's range, and how
/// wide the middle sixteenth of the values is (16 buckets, the narrowest of unimodal data), which
/// tells how many cells resolve the central buckets.
pub(crate) struct Survey {
    start: f32,
    end: f32,
    /// The width of the sample's middle sixteenth.
    middle: f32,
}

/// Central buckets need about this many cells each, so that a cell rarely holds more than an
/// eighth of a bucket's share ([`MAX_SNAP`]); fewer send the values to a finer grid or none.
const CELLS_PER_BUCKET: f32 = 4.0;

impl Survey {
    /// The survey of `values` (at least [`MIN_VALUES`]): the span of ranks [`RANGE_RANK`] from
    /// either end of a sample of [`RANGE_SAMPLE`] values in blocks, widened by [`MARGIN`] on each
    /// side, and its middle sixteenth; `None` if the span is empty or not finite.
    pub(crate) fn new(values: &[f32], scratch: &mut GridScratch) -> Option<Self> {
        if values.len() < MIN_VALUES {
            return None;
        }
        let sample = &mut scratch.sample;
        sample.clear();
        sample::stratified_blocks(values.len(), RANGE_SAMPLE / BLOCK, BLOCK, |at| {
            if let Some(block) = values.get(at..at + BLOCK) {
                sample.extend_from_slice(block);
            }
        });
        let len = sample.len();
        let mut rank = |r: usize| (r < len).then(|| *sample.select_nth_unstable_by(r, f32::total_cmp).1);
        let (lo, hi) = (rank(RANGE_RANK)?, rank(len.checked_sub(1 + RANGE_RANK)?)?);
        let middle = rank(17 * len / 32)? - rank(15 * len / 32)?;
        let margin = (hi - lo) * MARGIN;
        let (start, end) = (lo - margin, hi + margin);
        (start.is_finite() && end.is_finite() && end > start).then_some(Survey { start, end, middle })
    }

    /// Whether a grid of `cells` cells gives the central buckets about [`CELLS_PER_BUCKET`]
    /// cells each: the middle sixteenth of the values fills 16 buckets.
    pub(crate) fn resolves(&self, cells: usize) -> bool {
        cells as f32 * self.middle / (self.end - self.start) >= CELLS_PER_BUCKET * 16.0
    }
}
