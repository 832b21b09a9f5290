//! uniform8's quantizing pass for large tensors: a histogram of sub-cells instead of per-bin sums.
//!
//! Adding every value to its bin's f64 sum and count is a scatter of a conversion, two additions
//! and a 16-byte store per value, and it was half of the encoder's time. Here each bin is split
//! into [`SUB_CELLS`] equal sub-cells; a loop that vectorizes computes each value's sub-cell and
//! takes its bin from it, and the scalar work per value is one `u32` increment in a 16 KiB table
//! that stays in L1. A bin's count is then exact, and its sum is taken as the sum of its
//! sub-cells' centres times their counts: every value lies within half a sub-cell of its
//! sub-cell's centre, so each codebook entry lies within half a sub-cell (`width / 32`) of its
//! bin's exact mean, and inside the bin, so entries keep the bins' order. The two end bins hold
//! everything beyond ±3 sigma, far from any centre, and are summed exactly.
//!
//! The bin is `floor` of the scaled value plus 128.5, computed as the sub-cell in f32: the same
//! as the exact path's `round_half_even` except for values within about 2^-16 of a bin's width
//! from a border (ties included), which either neighbour may take, as the exact path's
//! multiplication by the inverse width already allows.

use crate::codebook::BINS;

use super::ZERO_POINT;

/// Sub-cells per bin: 16 keeps the entries within 1/32 of a bin of the exact means (on
/// standard-normal data 7e-4 sigma, a tenth of the rounding error of a value), with the
/// histogram still small enough for L1.
pub(crate) const SUB_CELLS: usize = 16;

/// Cells of the histogram.
const CELLS: usize = BINS * SUB_CELLS;

/// The least values for the histogram: below this, clearing and reading its 4096 cells costs
/// about as much as the per-value sums it saves, and small tensors keep exact means.
pub(crate) const MIN_VALUES: usize = 1 << 14;

/// Values counted between two checks of the end cells; a group with a value in an end bin is
/// visited again to sum those values exactly (on normal data about one group in 25).
const GROUP: usize = 16;

/// Values whose cells are computed before they are counted (a 4 KiB buffer).
const BATCH: usize = 1024;

/// The one cell of bin 0 that values are put in: the last of its sub-cells, so that every value
/// beyond bin 1's border lands there.
const LOW_END: u32 = (SUB_CELLS - 1) as u32;

/// The one cell of bin 255 that values are put in: the first of its sub-cells.
const HIGH_END: u32 = (CELLS - SUB_CELLS) as u32;

/// 2^23: adding it to an f32 in `0..2^22` leaves the nearest integer (ties to even) in the low
/// mantissa bits, a rounding that vectorizes where `as u32` does not.
const CELL_MAGIC: f32 = 8_388_608.0;

/// The sub-cell of a scaled value `y` (in bins from the mean) is `round(16 y + OFFSET)`, so that
/// the 16 sub-cells of bin `b` cover `y` in `[b - 128.5, b - 127.5]`.
const OFFSET: f32 = (ZERO_POINT + 0.5) * SUB_CELLS as f32 - 0.5;

/// The sub-cell of `x` (bins of width `SUB_CELLS / fine` centred on `mu`) in the low 12 bits of
/// the result; the bits above are a constant, which the callers' uses of the cell drop. Values of
/// the end bins all go to one cell each, [`LOW_END`] and [`HIGH_END`], where [`Histogram::add`]
/// notices them.
#[inline(always)]
fn cell_bits(x: f32, mu: f32, fine: f32) -> u32 {
    // `max` and `min` drop NaN (which never gets here: the spread would not be finite).
    #[allow(clippy::manual_clamp)]
    let f = ((x - mu) * fine + OFFSET).max(LOW_END as f32).min(HIGH_END as f32);
    (f + CELL_MAGIC).to_bits()
}

/// The values counted in the end cells so far.
#[inline(always)]
fn at_ends(counts: &[u32; CELLS]) -> u32 {
    // Each at most the values counted (at most u32::MAX): the sum may wrap, but any change of it
    // still shows.
    counts[LOW_END as usize].wrapping_add(counts[HIGH_END as usize])
}

/// Adds those of `values` whose cells are the end cells to `ends`, the end bins' exact sums.
#[cold]
fn add_ends(ends: &mut [f64; 2], values: &[f32], cells: &[u32]) {
    for (&x, &c) in values.iter().zip(cells) {
        let c = c & (CELLS - 1) as u32;
        if c == LOW_END || c == HIGH_END {
            ends[usize::from(c == HIGH_END)] += f64::from(x);
        }
    }
}

/// Counts per sub-cell, and the exact sums of the two end bins.
pub(crate) struct Histogram {
    counts: Box<[u32; CELLS]>,
    ends: [f64; 2],
    /// The sub-cells of the values being counted.
    cells: Box<[u32; BATCH]>,
    mu: f32,
    /// Sub-cells per unit of `x - mu`: 16 times the inverse of a bin's width.
    fine: f32,
}

impl Histogram {
    /// An empty histogram for bins of width `1 / inverse` centred on `mu`, or `None` if the
    /// sub-cells' scale overflows (the exact path then takes the tensor).
    pub(crate) fn new(mu: f32, inverse: f32) -> Option<Self> {
        let fine = inverse * SUB_CELLS as f32;
        (fine.is_finite() && fine > 0.0 && mu.is_finite()).then(|| Histogram {
            counts: Box::new([0; CELLS]),
            ends: [0.0; 2],
            cells: Box::new([0; BATCH]),
            mu,
            fine,
        })
    }

    /// Writes the bin of each of `values` to `q` and counts the values in their sub-cells; at most
    /// `u32::MAX` values in all.
    pub(crate) fn add(&mut self, values: &[f32], q: &mut [u8]) {
        for (values, q) in values.chunks(BATCH).zip(q.chunks_mut(BATCH)) {
            self.add_batch(values, q);
        }
    }

    /// [`Self::add`] for at most [`BATCH`] values.
    fn add_batch(&mut self, values: &[f32], q: &mut [u8]) {
        let Histogram { counts, ends, cells, mu, fine } = self;
        let (mu, fine) = (*mu, *fine);
        let Some(cells) = cells.get_mut(..values.len()) else { return };
        let (vs, v_rest) = values.as_chunks::<GROUP>();
        let (qs, q_rest) = q.as_chunks_mut::<GROUP>();
        let (cs, c_rest) = cells.as_chunks_mut::<GROUP>();
        for ((v, b), c) in vs.iter().zip(qs).zip(cs.iter_mut()) {
            for i in 0..GROUP {
                c[i] = cell_bits(v[i], mu, fine);
            }
            for i in 0..GROUP {
                // The constant above the cell's 12 bits is a multiple of 2^12: the byte is the bin.
                b[i] = (c[i] / SUB_CELLS as u32) as u8;
            }
        }
        for ((&x, b), c) in v_rest.iter().zip(q_rest).zip(c_rest.iter_mut()) {
            *c = cell_bits(x, mu, fine);
            *b = (*c / SUB_CELLS as u32) as u8;
        }
        // Counting a group at a time, and checking after each whether the end cells' counts
        // changed: a group with a value in an end bin (on normal data about one in 25) is visited
        // again for its exact sums, so no value needs a test of its own.
        let mut seen = at_ends(counts);
        for (v, c) in vs.iter().zip(cs.iter()) {
            for i in 0..GROUP {
                counts[c[i] as usize & (CELLS - 1)] += 1;
            }
            let now = at_ends(counts);
            if now != seen {
                seen = now;
                add_ends(ends, v, c);
            }
        }
        for &c in c_rest.iter() {
            counts[c as usize & (CELLS - 1)] += 1;
        }
        add_ends(ends, v_rest, c_rest);
    }

    /// The codebook: each bin's mean, from its sub-cells' centres (`mu + scaled / inverse`, the
    /// scaling undone), the end bins' from their exact sums; 0 for empty bins.
    pub(crate) fn means(&self) -> [f32; BINS] {
        let mut codebook = [0f32; BINS];
        let (mu, fine) = (f64::from(self.mu), f64::from(self.fine));
        for (b, (entry, cells)) in codebook.iter_mut().zip(self.counts.chunks_exact(SUB_CELLS)).enumerate() {
            let count: u64 = cells.iter().map(|&c| u64::from(c)).sum();
            if count == 0 {
                continue;
            }
            *entry = if b == 0 || b == BINS - 1 {
                (self.ends[usize::from(b != 0)] / count as f64) as f32
            } else {
                // Sub-cell c's centre is at `c - OFFSET` sub-cells from the mean: integer sums
                // of the cells' indices, divided once.
                let index_sum: u64 =
                    cells.iter().zip((b * SUB_CELLS) as u64..).map(|(&c, index)| u64::from(c) * index).sum();
                let centre = index_sum as f64 / count as f64 - f64::from(OFFSET);
                (mu + centre / fine) as f32
            };
        }
        codebook
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::{RANGE_IN_SIGMAS, bin_of, quantize};
    use super::*;
    use crate::sums::moments;
    use crate::test_support::randn;

    /// The codebook and indices the encoder gives `values`, and the `mu` and inverse width it
    /// used (computed as `quantize` computes them).
    fn encode(values: &[f32]) -> ([f32; BINS], Vec<u8>, f32, f32) {
        let mut q = Vec::with_capacity(values.len());
        let book = quantize(values, &mut |chunk: &[u8]| q.extend_from_slice(chunk));
        let n = values.len() as f64;
        let (total, centred) = moments(values);
        let sigma = (centred / (n - 1.0)).sqrt();
        let inverse = 1.0 / (RANGE_IN_SIGMAS * sigma / BINS as f64) as f32;
        (book, q, (total / n) as f32, inverse)
    }

    /// The exact mean of the values with each index, `None` for empty bins.
    fn exact_means(values: &[f32], q: &[u8]) -> Vec<Option<f64>> {
        let mut sums = vec![(0f64, 0u64); BINS];
        for (&x, &b) in values.iter().zip(q) {
            let s = &mut sums[usize::from(b)];
            *s = (s.0 + f64::from(x), s.1 + 1);
        }
        sums.into_iter().map(|(s, c)| (c > 0).then(|| s / c as f64)).collect()
    }

    fn laplace(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u: f32 = rng.random_range(-0.5..0.5);
                -u.signum() * (1.0 - 2.0 * u.abs()).max(1e-30).ln()
            })
            .collect()
    }

    /// Normal, offset and Laplace data: every entry within half a sub-cell of its bin's exact
    /// mean (the end bins' exact), entries increasing with the index, and the round trip's error
    /// within 1% of what exact means would give.
    #[test]
    fn entries_are_within_half_a_sub_cell_of_the_exact_means() {
        let mut rng = StdRng::seed_from_u64(14);
        let normal = randn(&mut rng, 200_003);
        let offset: Vec<f32> = randn(&mut rng, MIN_VALUES).iter().map(|&x| 1e3 + 0.25 * x).collect();
        let heavy = laplace(&mut rng, 131_072);
        for values in [normal, offset, heavy] {
            let (book, q, _, inverse) = encode(&values);
            let half_sub_cell = 0.5 / (inverse as f64 * SUB_CELLS as f64);
            let exact = exact_means(&values, &q);
            let mut last = f64::NEG_INFINITY;
            let (mut err, mut exact_err) = (0f64, 0f64);
            for (b, (&entry, mean)) in book.iter().zip(&exact).enumerate() {
                let Some(mean) = *mean else {
                    assert_eq!(entry, 0.0, "empty bin {b}");
                    continue;
                };
                let entry = f64::from(entry);
                // f32 rounding of the entry (and of the scaled values) besides the half sub-cell.
                let rounding = 4e-7 * mean.abs();
                let bound = if b == 0 || b == BINS - 1 { rounding } else { half_sub_cell * 1.01 + rounding };
                assert!((entry - mean).abs() <= bound, "bin {b}: entry {entry}, mean {mean}, bound {bound}");
                assert!(entry > last, "bin {b}: {entry} after {last}");
                last = entry;
            }
            for (&x, &b) in values.iter().zip(&q) {
                let mean = exact[usize::from(b)].unwrap_or(0.0);
                err += (f64::from(x) - f64::from(book[usize::from(b)])).powi(2);
                exact_err += (f64::from(x) - mean).powi(2);
            }
            assert!(err <= exact_err * 1.01, "error {err}, with exact means {exact_err}");
        }
    }

    /// The histogram's bins are the exact rule's, `round_half_even((x - mu) * inverse) + 128`
    /// clamped, but for values within a hair of a border.
    #[test]
    fn bins_follow_the_exact_rule_away_from_borders() {
        let mut rng = StdRng::seed_from_u64(15);
        let mut values = randn(&mut rng, 100_000);
        // Values on and next to borders and beyond the range.
        values.extend((-300..300).map(|k| k as f32 * 0.0117));
        values.extend([40.0, -40.0, 1e30, -1e30]);
        let (_, q, mu, inverse) = encode(&values);
        let mut near_border = 0;
        for (&x, &b) in values.iter().zip(&q) {
            let y = (x - mu) * inverse;
            if b != bin_of(y) {
                assert!((y - y.floor() - 0.5).abs() < 1e-4, "{x}: scaled {y}, bin {b}");
                near_border += 1;
            }
        }
        assert!(near_border < 50, "{near_border} values near borders moved");
    }

    /// Constant tensors, non-finite values, values near f32's limits and spreads too small for
    /// the sub-cells: no panic, and the codebook still decodes every index.
    #[test]
    fn unusual_inputs_do_not_panic() {
        let n = 2 * MIN_VALUES;
        let mut rng = StdRng::seed_from_u64(16);
        let normal = randn(&mut rng, n);
        let with = |special: &[f32]| {
            let mut v = normal.clone();
            for (i, &s) in special.iter().enumerate() {
                v[i * 997] = s;
            }
            v
        };
        let cases = [
            vec![2.5; n],
            with(&[f32::NAN]),
            with(&[f32::INFINITY, f32::NEG_INFINITY]),
            with(&[f32::MAX, f32::MIN, f32::MAX]),
            normal.iter().map(|&x| x * 1e-38).collect(),
            normal.iter().map(|&x| 1.0 + x * 1e-7).collect(),
        ];
        for values in cases {
            let (book, q, _, _) = encode(&values);
            assert_eq!(q.len(), n);
            let exact = exact_means(&values, &q);
            for (b, mean) in exact.iter().enumerate() {
                if let Some(mean) = mean
                    && mean.is_finite()
                {
                    let entry = f64::from(book[b]);
                    assert!(entry.is_finite(), "bin {b}: {entry} for a mean of {mean}");
                }
            }
        }
        let (book, q, _, _) = encode(&vec![2.5; n]);
        assert!(q.iter().all(|&b| b == ZERO_POINT as u8) && book[ZERO_POINT as usize] == 2.5);
    }
}
