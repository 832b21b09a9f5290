//! protocol 7.2 QUANTILE_8BIT: 256 buckets holding equal shares of the values (borders estimated as
//! quantiles of a fixed-size sample), each decoded as the mean of the values it holds.
//!
//! Buffer: `K (i64 LE, = 256) || codebook (f32 LE x K) || q (u8 x numel)`.

use std::cell::RefCell;

use averager_core::Result;
use averager_core::compression::{
    BytesMut, CodecCapabilities, Compression, CompressionInfo, CompressionType, ErrorBound, WireTensor,
};
use averager_core::tensor::{DType, Tensor, TensorView};

use crate::bucket_table::{BucketTable, bucket_of};
use crate::codebook::{self, BINS, BinSums, Emit};
use crate::radix::{self, SortScratch};
use crate::sample;

/// Number of quantile levels, `linspace(0, 1, 257)`: the two ends and 255 inner borders.
const LEVELS: usize = BINS + 1;

/// The most values whose quantiles give the borders. A bucket's share of a sample of 65536
/// deviates from 1/256 by about 6% (one standard deviation), which costs little accuracy
/// (`sampled_borders_*` below), while sorting 16 million values would cost ten times the rest of
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
/// per-chunk quantiles, which need every value sorted. Only the encoder chooses borders: the
/// wire format, and what a decoder does, are unchanged.
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
    if n >= RADIX_FROM {
        // Counting passes beat a selection that visits the values about log2(257) times.
        radix::sort_total_with(values, scratch);
    } else {
        select_ranks(values, 0, &ranks[..count]);
    }
    let mut out = [0f32; LEVELS];
    for (k, q) in out.iter_mut().enumerate() {
        let (lo, frac) = level_position(n, k);
        let a = values.get(lo).copied().unwrap_or(f32::NAN);
        let b = values.get(lo + 1).copied().unwrap_or(a);
        *q = lerp(a, b, frac);
    }
    out
}

/// Buffers of the border estimate, reused per thread: the sample (at most [`SAMPLE`] values) and
/// its sort's, about 768 KiB at most.
#[derive(Default)]
struct Scratch {
    sample: Vec<f32>,
    sort: SortScratch,
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
    let Scratch { sample, sort } = &mut scratch;
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
    quantize_with(&borders(values), values, emit)
}

/// [`quantize`] with the given borders.
fn quantize_with(borders: &[f32; BINS], values: &[f32], emit: &mut Emit<'_>) -> [f32; BINS] {
    let table = if values.len() >= TABLE_FROM { BucketTable::new(borders) } else { None };
    let mut sums = BinSums::new();
    let mut q = [0u8; CHUNK];
    for src in values.chunks(CHUNK) {
        let q = &mut q[..src.len()];
        match &table {
            Some(table) => table.bucketize(src, q),
            None => bucketize(borders, src, q),
        }
        sums.add(src, q);
        emit(q);
    }
    sums.means()
}

impl Compression for Quantile8Bit {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn wire_type(&self) -> CompressionType {
        CompressionType::Quantile8bit
    }

    fn accepts(&self, dtype: DType, _ndim: usize) -> bool {
        dtype.is_floating()
    }

    fn compress(&self, tensor: &TensorView<'_>, _info: &CompressionInfo) -> Result<WireTensor> {
        codebook::encode(Self::NAME, CompressionType::Quantile8bit, tensor, quantize)
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        codebook::decode(Self::NAME, message)
    }

    fn encode_into(
        &self,
        tensor: &TensorView<'_>,
        _info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Result<WireTensor> {
        codebook::encode_into(Self::NAME, CompressionType::Quantile8bit, tensor, quantize, out)
    }

    fn decode_into(&self, message: &WireTensor, out: &mut [f32]) -> Result<()> {
        codebook::decode_into(Self::NAME, message, out)
    }

    fn decode_add_into(&self, message: &WireTensor, weight: f32, out: &mut [f32]) -> Result<()> {
        codebook::decode_add_into(Self::NAME, message, weight, out)
    }

    /// `8 / bits(dtype)` (protocol 7.1; the 1032-byte header is not counted, as in hivemind).
    fn estimate_compression_ratio(&self, info: &CompressionInfo) -> f64 {
        codebook::ratio(info)
    }

    /// 2e-2 for every dtype: no standard-normal input of any size exceeded it in 100000 seeded
    /// samples per size.
    ///
    /// Each of the 256 buckets holds `n / 256` values and decodes to their mean, so the error is
    /// the spread within buckets. Inner buckets are narrow; the two outermost hold the tails
    /// (beyond about ±2.66 sigma), which dominate: large tensors land near 7.4e-4 (scenario 23's
    /// `randn(128, 128, 64)`: 7.40e-4 from the sampled borders, 7.38e-4 from exact quantiles of
    /// all its values, inside its 8e-4), 5535 elements near 7e-4 with the largest
    /// of 100000 samples at 2.7e-3, 1000 elements at most 6.7e-3. Up to 256 elements every value
    /// gets a bucket of its own and decodes exactly; just above that, buckets hold one or two
    /// values and the largest two may share one: the worst sizes, at 257 to 300 elements, reach
    /// 1.6e-2. Constants decode exactly.
    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::MeanSquared(Self::MSE)
    }

    fn capabilities(&self) -> CodecCapabilities {
        CodecCapabilities { lossless: false }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::test_support::{mse, randn};
    use averager_core::Error;
    use half::bf16;

    use crate::codebook::HEADER;

    fn encode(t: &Tensor) -> WireTensor {
        Quantile8Bit.compress(&t.view(), &CompressionInfo::for_tensor(0, &t.view())).unwrap()
    }

    fn codebook(wire: &WireTensor) -> Vec<f32> {
        wire.buffer[8..HEADER].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// numpy's `quantile(values, linspace(0, 1, 257))` from a full sort, as the reference.
    fn reference_quantiles(values: &[f32]) -> Vec<f32> {
        let mut sorted = values.to_vec();
        sorted.sort_unstable_by(f32::total_cmp);
        let n = sorted.len();
        (0..LEVELS)
            .map(|k| {
                let h = (n - 1) as f64 * k as f64 / 256.0;
                let lo = h.floor() as usize;
                lerp(sorted[lo], sorted[(lo + 1).min(n - 1)], h - lo as f64)
            })
            .collect()
    }

    #[test]
    fn selected_quantiles_equal_those_of_a_full_sort() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in [1, 2, 3, 100, 256, 257, 258, 513, 1000, 4097, 100_000] {
            let mut values = randn(&mut rng, n);
            // Ties, as in real data with few distinct values.
            for v in values.iter_mut().step_by(7) {
                *v = (*v * 4.0).round() / 4.0;
            }
            let expected = reference_quantiles(&values);
            assert_eq!(
                quantiles(&mut values.clone(), &mut SortScratch::default()).to_vec(),
                expected,
                "n = {n}"
            );
        }
        // Interpolation: level 1/256 of [0, 10] is 10/256.
        let q = quantiles(&mut [10.0, 0.0], &mut SortScratch::default());
        assert_eq!((q[0], q[1], q[128], q[256]), (0.0, 10.0 / 256.0, 5.0, 10.0));
    }

    #[test]
    fn small_tensors_get_their_exact_quantiles() {
        let mut rng = StdRng::seed_from_u64(2);
        for n in [1, 300, SAMPLE_FROM] {
            let values = randn(&mut rng, n);
            let got = borders(&values);
            assert_eq!(&got[..255], &reference_quantiles(&values)[1..256], "n = {n}");
            assert_eq!(got[255], f32::INFINITY);
        }
    }

    /// Skewed data in which the sample must find both a dense region and long tails.
    fn skewed(rng: &mut StdRng, n: usize) -> Vec<f32> {
        let normal = randn(rng, n);
        normal
            .iter()
            .enumerate()
            .map(|(i, &x)| if i % 5 == 0 { -(x * 2.0).exp() } else { (0.5 * x * x.abs()).exp() - 1.0 })
            .collect()
    }

    /// The sampled borders of large tensors against exact-sort quantiles: every border's rank in
    /// the sorted tensor stays within four standard errors of a sample quantile (at least 1.5
    /// buckets' shares) of its level, every bucket holds an equal share give or take five
    /// standard errors (at least 40%), and the round trip's mean squared error stays within 5%
    /// of what the exact borders give.
    #[test]
    fn sampled_borders_stay_close_to_exact_quantiles_on_skewed_data() {
        let mut rng = StdRng::seed_from_u64(9);
        for (n, data) in [
            (1_000_003, skewed(&mut rng, 1_000_003)),
            (300_000, randn(&mut rng, 300_000)),
            (131_072, skewed(&mut rng, 131_072)),
            (40_000, skewed(&mut rng, 40_000)),
        ] {
            let m = sample_size(n) as f64;
            let sampled = borders(&data);
            let exact_levels = reference_quantiles(&data);
            let mut exact = [f32::INFINITY; BINS];
            exact[..255].copy_from_slice(&exact_levels[1..256]);
            let mut sorted = data.clone();
            sorted.sort_unstable_by(f32::total_cmp);
            let share = n as f64 / BINS as f64;
            for (k, &border) in sampled[..255].iter().enumerate() {
                let rank = sorted.partition_point(|&x| x < border) as f64;
                let p = (k + 1) as f64 / BINS as f64;
                let target = p * n as f64;
                let bound = (4.0 * (p * (1.0 - p) / m).sqrt() * n as f64).max(1.5 * share);
                assert!((rank - target).abs() <= bound, "n {n}, border {k}: rank {rank}, level at {target}");
            }
            let mut q = Vec::with_capacity(n);
            let book = quantize_with(&sampled, &data, &mut |chunk: &[u8]| q.extend_from_slice(chunk));
            let mut counts = [0usize; BINS];
            for &b in &q {
                counts[usize::from(b)] += 1;
            }
            for (bucket, &c) in counts.iter().enumerate() {
                let ratio = c as f64 / share;
                assert!(
                    (0.6..=1.4).contains(&ratio),
                    "n {n}, bucket {bucket}: {c} values, {ratio:.2} shares"
                );
            }
            let decoded: Vec<f32> = q.iter().map(|&b| book[usize::from(b)]).collect();
            let mut exact_q = Vec::with_capacity(n);
            let exact_book =
                quantize_with(&exact, &data, &mut |chunk: &[u8]| exact_q.extend_from_slice(chunk));
            let exact_decoded: Vec<f32> = exact_q.iter().map(|&b| exact_book[usize::from(b)]).collect();
            let (got, best) = (mse(&data, &decoded), mse(&data, &exact_decoded));
            assert!(got <= 1.05 * best, "n {n}: sampled borders mse {got:e}, exact {best:e}");
        }
    }

    #[test]
    fn buckets_count_the_borders_below_each_value() {
        let mut rng = StdRng::seed_from_u64(3);
        // Normal data (about one border per table cell) and skewed data (many borders share the
        // cells where values are dense), so both paths of the table are checked.
        for values in [randn(&mut rng, 3000), skewed(&mut rng, 20_000)] {
            let b = borders(&values);
            let inner = &b[..255];
            let specials = [f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e30, -1e30, f32::MAX, f32::MIN];
            let probes: Vec<f32> = values
                .iter()
                .copied()
                .chain(inner.iter().flat_map(|&x| [x, x.next_up(), x.next_down()]))
                .chain(specials)
                .chain(randn(&mut rng, 5000))
                .collect();
            let mut q = vec![0u8; probes.len()];
            bucketize(&b, &probes, &mut q);
            let table = BucketTable::new(&b).unwrap();
            for (&x, &got) in probes.iter().zip(&q) {
                let expected = inner.partition_point(|&border| border < x);
                assert_eq!(usize::from(got), expected, "{x}");
                assert_eq!(got, bucket_of(&b, x));
                assert_eq!(table.bucket(x), got, "{x}");
            }
            // NaN compares false with every border: bucket 0, and no panic.
            assert_eq!((bucket_of(&b, f32::NAN), table.bucket(f32::NAN)), (0, 0));
        }
        // Borders without a usable grid: the binary search alone.
        assert!(BucketTable::new(&[1.0; BINS]).is_none());
        let mut infinite = [f32::INFINITY; BINS];
        infinite[0] = f32::NEG_INFINITY;
        assert!(BucketTable::new(&infinite).is_none());
    }

    #[test]
    fn byte_layout_of_a_small_tensor() {
        // Four values, each in its own bucket: the value of rank r has the borders of levels
        // k < 256 r / 3 below it, so ranks 0..3 go to buckets 0, 85, 170 and 255.
        let t = Tensor::from_f32(vec![2, 2], vec![3.0, 1.0, 2.0, 0.0]).unwrap();
        let wire = encode(&t);
        assert_eq!(wire.buffer.len(), HEADER + 4);
        assert_eq!(&wire.buffer[..8], &256i64.to_le_bytes());
        assert_eq!(&wire.buffer[HEADER..], &[255, 85, 170, 0]);
        let book = codebook(&wire);
        assert_eq!((book[0], book[85], book[170], book[255]), (0.0, 1.0, 2.0, 3.0));
        assert_eq!(book.iter().filter(|&&v| v != 0.0).count(), 3);
        assert_eq!((wire.dtype.as_str(), wire.codec.as_str()), ("float32", "quantile8"));
        assert_eq!(wire.compression, CompressionType::Quantile8bit as i32);
        assert_eq!(Quantile8Bit.extract(&wire).unwrap(), t);
    }

    #[test]
    fn buckets_hold_equal_shares_and_decode_to_their_means() {
        let mut rng = StdRng::seed_from_u64(4);
        let values: Vec<f32> = randn(&mut rng, 12_800).iter().map(|x| x.exp()).collect();
        let wire = encode(&Tensor::from_f32(vec![12_800], values.clone()).unwrap());
        let q = &wire.buffer[HEADER..];
        let book = codebook(&wire);
        assert_eq!(book.len(), BINS);
        for (bucket, &entry) in book.iter().enumerate() {
            let members: Vec<f64> = values
                .iter()
                .zip(q)
                .filter(|&(_, &b)| usize::from(b) == bucket)
                .map(|(&x, _)| f64::from(x))
                .collect();
            // 50 values per bucket, give or take the interpolated borders.
            assert!((49..=51).contains(&members.len()), "bucket {bucket}: {}", members.len());
            let mean = members.iter().sum::<f64>() / members.len() as f64;
            assert_eq!(entry, mean as f32, "bucket {bucket}");
        }
    }

    #[test]
    fn empty_scalar_and_constant_tensors() {
        for shape in [vec![0], vec![3, 0]] {
            let empty = Tensor::zeros(shape, DType::F32).unwrap();
            let wire = encode(&empty);
            assert_eq!(wire.buffer.len(), HEADER);
            assert!(codebook(&wire).iter().all(|&v| v == 0.0));
            assert_eq!(Quantile8Bit.extract(&wire).unwrap(), empty);
        }
        let scalar = Tensor::from_f32(vec![], vec![-4.25]).unwrap();
        assert_eq!(Quantile8Bit.extract(&encode(&scalar)).unwrap(), scalar);
        let constant = Tensor::from_f32(vec![7, 3], vec![1.5; 21]).unwrap();
        let wire = encode(&constant);
        assert!(wire.buffer[HEADER..].iter().all(|&b| b == 0));
        assert_eq!(Quantile8Bit.extract(&wire).unwrap(), constant);
    }

    #[test]
    fn bfloat16_and_float64_keep_their_dtype() {
        let mut rng = StdRng::seed_from_u64(7);
        let values = randn(&mut rng, 4096);
        let bf =
            Tensor::from_bf16(vec![64, 64], values.iter().map(|&x| bf16::from_f32(x)).collect()).unwrap();
        let wire = encode(&bf);
        assert_eq!((wire.dtype.as_str(), wire.buffer.len()), ("bfloat16", HEADER + 4096));
        let back = Quantile8Bit.extract(&wire).unwrap();
        let back: Vec<f32> = back.as_bf16().unwrap().iter().map(|x| x.to_f32()).collect();
        let original: Vec<f32> = bf.as_bf16().unwrap().iter().map(|x| x.to_f32()).collect();
        assert!(mse(&original, &back) < 2e-3, "bf16 mse {}", mse(&original, &back));

        let f64s: Vec<f64> = values.iter().map(|&x| f64::from(x) * 1e3).collect();
        let t = Tensor::from_f64(vec![4096], f64s.clone()).unwrap();
        let back = Quantile8Bit.extract(&encode(&t)).unwrap();
        let err = f64s.iter().zip(back.as_f64().unwrap()).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / 4096.0;
        // The error scales with the variance (1e6 here).
        assert!(err < 2e-3 * 1e6, "f64 mse {err}");
    }

    #[test]
    fn ratio_is_eight_bits_over_the_dtype() {
        for (dtype, ratio) in [(DType::BF16, 0.5), (DType::F16, 0.5), (DType::F32, 0.25), (DType::F64, 0.125)]
        {
            let t = Tensor::zeros(vec![4], dtype).unwrap();
            assert_eq!(
                Quantile8Bit.estimate_compression_ratio(&CompressionInfo::for_tensor(0, &t.view())),
                ratio
            );
        }
    }

    #[test]
    fn malformed_buffers_are_errors() {
        let wire = encode(&Tensor::from_f32(vec![4], vec![1.0, 2.0, 3.0, 4.0]).unwrap());
        let mut wrong_k = wire.buffer.to_vec();
        wrong_k[..8].copy_from_slice(&(-256i64).to_le_bytes());
        for buffer in [wrong_k, wire.buffer[..HEADER + 3].to_vec(), [&wire.buffer[..], &[0]].concat(), vec![]]
        {
            let forged = WireTensor { buffer: buffer.into(), ..wire.clone() };
            assert!(matches!(Quantile8Bit.extract(&forged), Err(Error::Codec { .. })));
        }
        let int = WireTensor { dtype: "int32".into(), ..wire.clone() };
        assert!(Quantile8Bit.extract(&int).is_err());
        let huge = WireTensor { size: vec![u32::MAX, u32::MAX], ..wire };
        assert!(matches!(Quantile8Bit.extract(&huge), Err(Error::Codec { .. })));
        let ints = Tensor::from_i64(vec![2], vec![1, 2]).unwrap();
        assert!(matches!(
            Quantile8Bit.compress(&ints.view(), &CompressionInfo::default()),
            Err(Error::Codec { .. })
        ));
    }

    #[test]
    fn non_finite_values_do_not_panic() {
        let t =
            Tensor::from_f32(vec![5], vec![f32::NAN, 1.0, f32::INFINITY, -2.0, f32::NEG_INFINITY]).unwrap();
        let back = Quantile8Bit.extract(&encode(&t)).unwrap();
        assert_eq!(back.shape(), &[5]);
    }

    /// protocol 10.5 scenario 23: `randn(128, 128, 64)` round-trips with mse < 8e-4, and
    /// `zeros(5, 5)` decodes to finite values.
    #[test]
    fn scenario_23_tensor_compression() {
        let mut rng = StdRng::seed_from_u64(23);
        let values = randn(&mut rng, 128 * 128 * 64);
        let t = Tensor::from_f32(vec![128, 128, 64], values.clone()).unwrap();
        let back = Quantile8Bit.extract(&encode(&t)).unwrap();
        assert_eq!(back.shape(), &[128, 128, 64]);
        let err = mse(&values, back.as_f32().unwrap());
        assert!(err > 0.0 && err < Quantile8Bit::SCENARIO_23_MSE, "mse {err}");

        let zeros = Quantile8Bit.extract(&encode(&Tensor::zeros(vec![5, 5], DType::F32).unwrap())).unwrap();
        assert!(zeros.as_f32().unwrap().iter().all(|&x| x == 0.0));
    }
}
