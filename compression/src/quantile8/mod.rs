//! protocol 7.2 QUANTILE_8BIT: 256 buckets holding equal shares of the values (borders estimated as
//! quantiles of a fixed-size sample), each decoded as the mean of the values it holds.
//!
//! Buffer: `K (i64 LE, = 256) || codebook (f32 LE x K) || q (u8 x numel)`.

use std::cell::RefCell;

use averager_core::compression::{CompressionType, ErrorBound};
use averager_core::tensor::DType;

use crate::bucket_table::{BucketTable, bucket_of};
use crate::codebook::{self, BINS, BinSums, Emit};
use crate::radix::{self, SortScratch};
use crate::sample;

mod grid;

use grid::{COARSE, Declined, FINE, Grid, GridScratch, Survey};

/// Number of quantile levels, `linspace(0, 1, 257)`: the two ends and 255 inner borders.
const LEVELS: usize = BINS + 1;

/// The most values whose quantiles give the borders. A bucket's share of a sample of 65536
/// deviates from 1/256 by about 6% (one standard deviation), which costs little accuracy
/// (`tests::sampled_borders_*`), while sorting 16 million values would cost ten times the rest of
/// the encoder.
const SAMPLE: usize = 1 << 16;

/// Tensors up to this size get their exact quantiles; larger ones a sample of a quarter of their
/// values, at least this many and at most [`SAMPLE`], so that sorting the sample costs well under
/// bucketing the tensor for all-reduce parts too (131072 values at the default part size).
const SAMPLE_FROM: usize = 1 << 14;

/// The sample size for `n` values.
fn sample_size(n: usize) -> usize {
    if n <= SAMPLE_FROM { n } else { (n / 4).clamp(SAMPLE_FROM, SAMPLE) }
}

/// Elements per step of the bucketing pass: indices of a chunk are computed first (independent
/// searches the CPU overlaps), then accumulated into the codebook sums.
const CHUNK: usize = 1024;

/// Below this many candidates per wanted rank, sorting a slice beats selecting ranks in it.
const SORT_WHEN_DENSER_THAN: usize = 8;

/// 8-bit quantization into 256 equally populated buckets, with a codebook of bucket means: 1
/// byte per value plus a 1032-byte header.
///
/// Accepts every floating dtype (bfloat16 included) of any rank. Bucket borders are the 255 inner
/// quantiles at levels `k / 256`, computed with linear interpolation (numpy's default). Each
/// bucket decodes to the mean of its values, so the buckets are narrow where values are dense and
/// the outermost two hold the tails.
///
/// \[averager\] Empty tensors encode to the header alone (hivemind fails on them).
///
/// \[averager\] Tensors of up to 16384 values get their exact quantiles; larger ones the exact
/// quantiles of a stratified sample of a quarter of their values, 16384 to 65536 of them (one
/// per equal stretch of the tensor, at a pseudo-random offset with a fixed seed), instead of
/// protocol 7.2's quantiles of
/// per-chunk quantiles, which need every value sorted. From 65536 values on, the borders are
/// first snapped to a grid (`grid`): a histogram of all values over 4096 equal cells (16384 where
/// a small sample shows a centre too dense for 4096, as with Laplace-like data) spanning the
/// range of that sample places each border at the cell boundary nearest its quantile, a value's
/// bucket is one table lookup by its cell, and the codebook comes from the histogram (exact
/// counts; sums from the cells' centres, within half a cell of the exact means, the two end cells
/// summed exactly). Where snapping would still move a border by more than an eighth of a
/// bucket's share (data concentrated on few values, heavier tails), the sorted sample decides.
/// Only the encoder chooses borders and rounds the means: the wire format, and what a decoder
/// does, are unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantile8Bit;

impl Quantile8Bit {
    /// The registry name.
    pub const NAME: &'static str = "quantile8";

    /// The declared mean squared error on standard-normal data (`error_bound` below says where it
    /// comes from).
    const MSE: f64 = 2e-2;

    /// protocol 10.5 scenario 23's bound, which holds for large tensors such as its
    /// `randn(128, 128, 64)` but not for every small one.
    #[cfg(test)]
    const SCENARIO_23_MSE: f64 = 8e-4;
}

/// Where level `k / 256` falls among `n` sorted values (numpy's "linear" method): the index
/// `floor(h)` and the fraction `h - floor(h)` of `h = (n - 1) k / 256`, computed exactly in
/// integers.
fn level_position(n: usize, k: usize) -> (usize, f64) {
    let scaled = (n as u128 - 1) * k as u128;
    let lo = (scaled / BINS as u128) as usize;
    let frac = (scaled % BINS as u128) as f64 / BINS as f64;
    (lo, frac)
}

/// numpy's `_lerp`: `a + (b - a) t`, taken from `b`'s side for `t >= 0.5` so that `t = 1` gives
/// exactly `b`.
fn lerp(a: f32, b: f32, t: f64) -> f32 {
    if t == 0.0 || a == b {
        return a;
    }
    let (a, b) = (f64::from(a), f64::from(b));
    let diff = b - a;
    (if t >= 0.5 { b - diff * (1.0 - t) } else { a + diff * t }) as f32
}

/// From this many values on, buckets are found through a [`BucketTable`] (building one costs
/// about as much as searching a few thousand values).
const TABLE_FROM: usize = 1 << 13;

/// From this many values on, a sample is radix-sorted whole instead of selected rank by rank.
const RADIX_FROM: usize = 4096;

/// Puts the value of every rank in `ranks` (sorted, unique, each in `offset..offset +
/// values.len()`) at its sorted position, by recursive selection: each split orders the slice
/// around the middle wanted rank, so the work is about `n log(ranks)` instead of a full sort.
fn select_ranks(values: &mut [f32], offset: usize, ranks: &[usize]) {
    if ranks.is_empty() || values.is_empty() {
        return;
    }
    if ranks.len().saturating_mul(SORT_WHEN_DENSER_THAN) >= values.len() {
        values.sort_unstable_by(f32::total_cmp);
        return;
    }
    let mid = ranks.len() / 2;
    let Some(at) = ranks[mid].checked_sub(offset).filter(|&at| at < values.len()) else {
        return;
    };
    let (left, _, right) = values.select_nth_unstable_by(at, f32::total_cmp);
    select_ranks(left, offset, &ranks[..mid]);
    select_ranks(right, offset + at + 1, &ranks[mid + 1..]);
}

/// The 257 linear-interpolation quantiles of `values` (non-empty), reordering them.
fn quantiles(values: &mut [f32], scratch: &mut SortScratch) -> [f32; LEVELS] {
    let n = values.len();
    // At most two ranks per level; positions grow with the level, so the ranks come sorted and
    // only repeats need skipping.
    let mut ranks = [0usize; 2 * LEVELS];
    let mut count = 0;
    for k in 0..LEVELS {
        let (lo, frac) = level_position(n, k);
        for rank in [Some(lo), (frac > 0.0 && lo + 1 < n).then_some(lo + 1)].into_iter().flatten() {
            if count == 0 || ranks[count - 1] != rank {
                ranks[count] = rank;
                count += 1;
            }
        }
    }
    let mut out = [0f32; LEVELS];
    let mut fill = |at: &dyn Fn(usize) -> Option<f32>| {
        for (k, q) in out.iter_mut().enumerate() {
            let (lo, frac) = level_position(n, k);
            let a = at(lo).unwrap_or(f32::NAN);
            let b = at(lo + 1).unwrap_or(a);
            *q = lerp(a, b, frac);
        }
    };
    if n >= RADIX_FROM {
        // Counting passes beat a selection that visits the values about log2(257) times; only
        // the wanted ranks are read back from the sorted keys.
        let keys = radix::sorted_keys(values, scratch);
        fill(&|i| keys.get(i).map(|&k| radix::value(k)));
    } else {
        select_ranks(values, 0, &ranks[..count]);
        fill(&|i| values.get(i).copied());
    }
    out
}

/// Buffers of the border estimate, reused per thread: the sample (at most [`SAMPLE`] values) and
/// its sort's, about 768 KiB at most.
#[derive(Default)]
struct Scratch {
    sample: Vec<f32>,
    sort: SortScratch,
    grid: GridScratch,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The 255 inner borders (`values` non-empty): the quantiles of all values or of a sample of
/// [`sample_size`], padded with +inf to 256 entries so the search below indexes without bounds
/// checks.
fn borders(values: &[f32]) -> [f32; BINS] {
    // Taken out of the thread-local rather than borrowed: nothing here re-enters, but a take
    // cannot panic.
    let mut scratch = SCRATCH.with_borrow_mut(std::mem::take);
    sample::stratified_into(values, sample_size(values.len()), &mut scratch.sample);
    let Scratch { sample, sort, .. } = &mut scratch;
    let levels = quantiles(sample, sort);
    SCRATCH.with_borrow_mut(|slot| *slot = scratch);
    let mut out = [f32::INFINITY; BINS];
    out[..BINS - 1].copy_from_slice(&levels[1..BINS]);
    out
}

/// Elements searched in lockstep: their searches are independent, so interleaving them hides
/// the latency of each step's load and comparison.
const INTERLEAVE: usize = 8;

/// `dst[i] = bucket_of(borders, src[i])`, several searches at a time.
fn bucketize(borders: &[f32; BINS], src: &[f32], dst: &mut [u8]) {
    let mut src_groups = src.chunks_exact(INTERLEAVE);
    let mut dst_groups = dst.chunks_exact_mut(INTERLEAVE);
    for (xs, out) in (&mut src_groups).zip(&mut dst_groups) {
        let mut pos = [0usize; INTERLEAVE];
        for step in [128, 64, 32, 16, 8, 4, 2, 1] {
            for (p, &x) in pos.iter_mut().zip(xs) {
                *p += step * usize::from(borders[(*p + step - 1) & (BINS - 1)] < x);
            }
        }
        for (o, &p) in out.iter_mut().zip(&pos) {
            *o = p as u8;
        }
    }
    for (o, &x) in dst_groups.into_remainder().iter_mut().zip(src_groups.remainder()) {
        *o = bucket_of(borders, x);
    }
}

/// Hands the bucket of every value to `emit` and returns the codebook: the mean of the values in
/// each bucket, 0 for empty buckets.
fn quantize(values: &[f32], emit: &mut Emit<'_>) -> [f32; BINS] {
    if values.is_empty() {
        return [0f32; BINS];
    }
    if values.len() >= GRID_FROM {
        let mut scratch = SCRATCH.with_borrow_mut(std::mem::take);
        let grid = gridded(values, &mut scratch.grid);
        SCRATCH.with_borrow_mut(|slot| *slot = scratch);
        match grid {
            Some(Gridded::Coarse(grid)) => return quantize_on_grid(&grid, values, emit),
            Some(Gridded::Fine(grid)) => return quantize_on_grid(&grid, values, emit),
            None => {}
        }
    }
    quantize_with(&borders(values), values, emit)
}

/// From this many values on, borders are first tried on a [`Grid`]: with fewer, a cell holds
/// too few values for snapping to keep each border within an eighth of a share of its quantile.
const GRID_FROM: usize = 1 << 16;

/// A grid of either size.
// Lives on the stack for one call; boxing the fine grid would allocate per part.
#[allow(clippy::large_enum_variant)]
enum Gridded {
    Coarse(Grid<COARSE>),
    Fine(Grid<FINE>),
}

/// The grid for `values`: the coarse one where a survey says it resolves the centre (the fine
/// one if it then proves too coarse), the fine one where only that resolves it, else none, so
/// that data no grid suits costs a survey rather than a wasted histogram.
fn gridded(values: &[f32], scratch: &mut GridScratch) -> Option<Gridded> {
    let survey = Survey::new(values, scratch)?;
    if survey.resolves(COARSE) {
        match Grid::<COARSE>::new(values, &survey, scratch) {
            Ok(grid) => return Some(Gridded::Coarse(grid)),
            Err(Declined::Unfit) => return None,
            Err(Declined::Coarse) => {}
        }
    }
    if survey.resolves(FINE) {
        return Grid::<FINE>::new(values, &survey, scratch).ok().map(Gridded::Fine);
    }
    None
}

/// [`quantize`] with the buckets and the codebook of a grid.
fn quantize_on_grid<const CELLS: usize>(
    grid: &Grid<CELLS>,
    values: &[f32],
    emit: &mut Emit<'_>,
) -> [f32; BINS] {
    let mut q = [0u8; CHUNK];
    for src in values.chunks(CHUNK) {
        let q = &mut q[..src.len()];
        grid.bucketize(src, q);
        emit(q);
    }
    grid.codebook()
}

/// [`quantize`] with the given borders.
fn quantize_with(borders: &[f32; BINS], values: &[f32], emit: &mut Emit<'_>) -> [f32; BINS] {
    let table = if values.len() >= TABLE_FROM { BucketTable::new(borders) } else { None };
    let mut sums = BinSums::new();
    let mut q = [0u8; CHUNK];
    for src in values.chunks(CHUNK) {
        let q = &mut q[..src.len()];
        match &table {
            Some(table) => table.bucketize(src, q, &mut sums),
            None => {
                bucketize(borders, src, q);
                sums.add(src, q);
            }
        }
        emit(q);
    }
    sums.means()
}

codebook::codebook_compression!(Quantile8Bit, CompressionType::Quantile8bit, quantize, {
    /// 2e-2 for every dtype: no standard-normal input of any size exceeded it in 100000 seeded
    /// samples per size.
    ///
    /// Each of the 256 buckets holds `n / 256` values and decodes to their mean, so the error is
    /// the spread within buckets. Inner buckets are narrow; the two outermost hold the tails
    /// (beyond about ±2.66 sigma), which dominate: large tensors land near 7.4e-4 (scenario 23's
    /// `randn(128, 128, 64)`: 7.39e-4 from the grid's borders and means, 7.38e-4 from exact
    /// quantiles of all its values, inside its 8e-4), 5535 elements near 7e-4 with the largest
    /// of 100000 samples at 2.7e-3, 1000 elements at most 6.7e-3. Up to 256 elements every value
    /// gets a bucket of its own and decodes exactly; just above that, buckets hold one or two
    /// values and the largest two may share one: the worst sizes, at 257 to 300 elements, reach
    /// 1.6e-2. Constants decode exactly.
    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::MeanSquared(Self::MSE)
    }
});

#[cfg(test)]
mod tests;
