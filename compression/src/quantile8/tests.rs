//! QUANTILE_8BIT's unit tests: quantiles against a full sort, the sampled borders against exact
//! ones, bucketing, layout and malformed input.

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::test_support::{codebook_refuses_malformed_input, mse, randn};
use averager_core::compression::{Compression, CompressionInfo, WireTensor};
use averager_core::tensor::Tensor;
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
        assert_eq!(quantiles(&mut values.clone(), &mut SortScratch::default()).to_vec(), expected, "n = {n}");
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
            assert!((0.6..=1.4).contains(&ratio), "n {n}, bucket {bucket}: {c} values, {ratio:.2} shares");
        }
        let decoded: Vec<f32> = q.iter().map(|&b| book[usize::from(b)]).collect();
        let mut exact_q = Vec::with_capacity(n);
        let exact_book = quantize_with(&exact, &data, &mut |chunk: &[u8]| exact_q.extend_from_slice(chunk));
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

/// Borders that crowd one to six to a grid cell (pairs, triples... of near or equal borders
/// among evenly spread ones): the branch-free lookup for up to four, the search beyond, and both
/// count exactly the borders below each value.
#[test]
fn crowded_cells_count_the_borders_below_each_value() {
    let mut rng = StdRng::seed_from_u64(11);
    for crowd in 1..=6usize {
        let mut b = [f32::INFINITY; BINS];
        for (k, border) in b[..255].iter_mut().enumerate() {
            // Groups of `crowd` borders 1e-6 apart (the last of a group may equal the next's
            // start after rounding), groups spread evenly over [-1, 1].
            let (group, within) = (k / crowd, k % crowd);
            *border = -1.0 + 2.0 * (group * crowd) as f32 / 255.0 + within as f32 * 1e-6;
        }
        b[..255].sort_unstable_by(f32::total_cmp);
        let table = BucketTable::new(&b).unwrap();
        assert_eq!(table.crowd(), crowd);
        let inner = &b[..255];
        let probes: Vec<f32> = inner
            .iter()
            .flat_map(|&x| [x, x.next_up(), x.next_down()])
            .chain(randn(&mut rng, 5000))
            .chain([f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, f32::MAX, f32::MIN, f32::NAN])
            .collect();
        let mut q = vec![0u8; probes.len()];
        table.bucketize(&probes, &mut q, &mut BinSums::new());
        for (&x, &got) in probes.iter().zip(&q) {
            let expected = inner.partition_point(|&border| border < x);
            assert_eq!(usize::from(got), expected, "crowd {crowd}: {x}");
        }
    }
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
    let bf = Tensor::from_bf16(vec![64, 64], values.iter().map(|&x| bf16::from_f32(x)).collect()).unwrap();
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
    for (dtype, ratio) in [(DType::BF16, 0.5), (DType::F16, 0.5), (DType::F32, 0.25), (DType::F64, 0.125)] {
        let t = Tensor::zeros(vec![4], dtype).unwrap();
        assert_eq!(
            Quantile8Bit.estimate_compression_ratio(&CompressionInfo::for_tensor(0, &t.view())),
            ratio
        );
    }
}

#[test]
fn malformed_buffers_are_errors() {
    codebook_refuses_malformed_input(&Quantile8Bit, -256);
}

#[test]
fn non_finite_values_do_not_panic() {
    let t = Tensor::from_f32(vec![5], vec![f32::NAN, 1.0, f32::INFINITY, -2.0, f32::NEG_INFINITY]).unwrap();
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

/// Laplace-distributed values (heavier tails than normal, as gradients often have).
fn laplace(rng: &mut StdRng, n: usize) -> Vec<f32> {
    use rand::Rng;
    (0..n)
        .map(|_| {
            let u: f32 = rng.random_range(-0.5f32..0.5);
            -u.signum() * (1.0 - 2.0 * u.abs()).max(1e-7).ln()
        })
        .collect()
}

/// The encoder's buckets and codebook for `data`, through whichever path `quantize` takes.
fn quantized(data: &[f32]) -> (Vec<u8>, [f32; BINS]) {
    let mut q = Vec::with_capacity(data.len());
    let book = quantize(data, &mut |chunk: &[u8]| q.extend_from_slice(chunk));
    (q, book)
}

/// Large tensors of normal-like data take the grid: its buckets are those of some sorted borders
/// (non-decreasing in the value), hold equal shares give or take the snapping, decode to their
/// members' means give or take half a cell, and lose at most a few percent of accuracy against
/// the exact quantiles of all values. Skewed data may take either path, with the same checks.
#[test]
fn grid_buckets_hold_equal_shares_and_stay_close_to_exact_borders() {
    let mut rng = StdRng::seed_from_u64(17);
    let offset: Vec<f32> = randn(&mut rng, 200_000).iter().map(|&x| 100.0 + 0.01 * x).collect();
    let cases = [
        ("normal 131072", randn(&mut rng, 131_072), true),
        ("normal 65536", randn(&mut rng, 65_536), true),
        ("laplace 131072", laplace(&mut rng, 131_072), true),
        ("normal 1000003", randn(&mut rng, 1_000_003), true),
        ("offset normal 200000", offset, true),
        ("skewed 131072", skewed(&mut rng, 131_072), false),
        ("skewed 1000003", skewed(&mut rng, 1_000_003), false),
    ];
    for (name, data, on_grid) in cases {
        let n = data.len();
        // The coarse grid, or the fine one where the coarse one is too coarse (Laplace).
        let grid = match gridded(&data, &mut GridScratch::default()) {
            Some(Gridded::Coarse(g)) => {
                Some((g.cell_width(), data.iter().map(|&x| g.bucket(x)).collect::<Vec<u8>>()))
            }
            Some(Gridded::Fine(g)) => Some((g.cell_width(), data.iter().map(|&x| g.bucket(x)).collect())),
            None => None,
        };
        assert!(!on_grid || grid.is_some(), "{name}: the grid declined");
        let (q, book) = quantized(&data);
        if let Some((_, buckets)) = &grid {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_unstable_by(|&i, &j| data[i].total_cmp(&data[j]));
            assert!(order.windows(2).all(|w| buckets[w[0]] <= buckets[w[1]]), "{name}: buckets not monotone");
            assert!(q == *buckets, "{name}: the encoder did not use the grid");
        }
        let share = n as f64 / BINS as f64;
        let mut sums = [0f64; BINS];
        let mut counts = [0usize; BINS];
        for (&x, &b) in data.iter().zip(&q) {
            sums[usize::from(b)] += f64::from(x);
            counts[usize::from(b)] += 1;
        }
        for (bucket, &c) in counts.iter().enumerate() {
            let ratio = c as f64 / share;
            assert!((0.6..=1.4).contains(&ratio), "{name}, bucket {bucket}: {c} values, {ratio:.2} shares");
            // The grid's entries come from cell centres: within half a cell of the exact mean.
            let mean = (sums[bucket] / c as f64) as f32;
            let slack = grid.as_ref().map_or(0.0, |(width, _)| 0.5 * width) + mean.abs() * 1e-6;
            assert!((book[bucket] - mean).abs() <= slack, "{name}, bucket {bucket}: {} {mean}", book[bucket]);
        }
        let exact_levels = reference_quantiles(&data);
        let mut exact = [f32::INFINITY; BINS];
        exact[..255].copy_from_slice(&exact_levels[1..256]);
        let mut exact_q = Vec::with_capacity(n);
        let exact_book = quantize_with(&exact, &data, &mut |chunk: &[u8]| exact_q.extend_from_slice(chunk));
        let decoded: Vec<f32> = q.iter().map(|&b| book[usize::from(b)]).collect();
        let exact_decoded: Vec<f32> = exact_q.iter().map(|&b| exact_book[usize::from(b)]).collect();
        let (got, best) = (mse(&data, &decoded), mse(&data, &exact_decoded));
        eprintln!("{name}: grid {} mse {got:e}, exact {best:e}, ratio {:.4}", grid.is_some(), got / best);
        assert!(got <= 1.05 * best, "{name}: mse {got:e}, exact borders {best:e}");
    }
}

/// Data the grid cannot split into equal shares (a value repeated in half the tensor, a few
/// distinct values, non-finite values in the range sample, small tensors) goes to the exact path.
#[test]
fn grid_declines_what_it_cannot_snap() {
    let mut rng = StdRng::seed_from_u64(19);
    let mut half_zeros = randn(&mut rng, 131_072);
    for v in half_zeros.iter_mut().step_by(2) {
        *v = 0.0;
    }
    let few: Vec<f32> = (0..131_072).map(|i| (i % 3) as f32).collect();
    let mut infinite = randn(&mut rng, 131_072);
    for v in infinite.iter_mut().step_by(97) {
        *v = f32::INFINITY;
    }
    let small = randn(&mut rng, 5_000);
    for (name, data) in
        [("half zeros", half_zeros), ("three values", few), ("infinities", infinite), ("small", small)]
    {
        let mut scratch = GridScratch::default();
        assert!(gridded(&data, &mut scratch).is_none(), "{name}");
        if let Some(survey) = Survey::new(&data, &mut scratch) {
            assert!(Grid::<COARSE>::new(&data, &survey, &mut scratch).is_err(), "{name}");
            assert!(Grid::<FINE>::new(&data, &survey, &mut scratch).is_err(), "{name}");
        }
        let (q, _) = quantized(&data);
        assert_eq!(q.len(), data.len());
    }
    // NaN anywhere: no panic, one index per value.
    let mut nan = randn(&mut rng, 131_072);
    nan[5000] = f32::NAN;
    assert_eq!(quantized(&nan).0.len(), nan.len());
}
