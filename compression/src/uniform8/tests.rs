use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::test_support::{codebook_refuses_malformed_input, mse, randn};
use averager_core::compression::{Compression, CompressionInfo, WireTensor};
use averager_core::tensor::Tensor;
use half::bf16;

use crate::codebook::HEADER;

fn encode(t: &Tensor) -> WireTensor {
    Uniform8Bit.compress(&t.view(), &CompressionInfo::for_tensor(0, &t.view())).unwrap()
}

fn codebook(wire: &WireTensor) -> Vec<f32> {
    wire.buffer[8..HEADER].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

#[test]
fn byte_layout_of_a_small_tensor() {
    // mean 0; centred norm sqrt(8); sigma = sqrt(8 / 3); scale = 6 sigma / 256 = 0.0382733.
    // q = round(x / scale) + 128: -2 -> 128 - 52 = 76, -0 -> 128, 0 -> 128, 2 -> 180.
    let t = Tensor::from_f32(vec![2, 2], vec![-2.0, -0.0, 0.0, 2.0]).unwrap();
    let wire = encode(&t);
    assert_eq!(wire.buffer.len(), 8 + 4 * 256 + 4);
    assert_eq!(&wire.buffer[..8], &256i64.to_le_bytes());
    assert_eq!(&wire.buffer[HEADER..], &[76, 128, 128, 180]);
    let book = codebook(&wire);
    assert_eq!((book[76], book[128], book[180]), (-2.0, 0.0, 2.0));
    assert_eq!(book.iter().filter(|&&v| v != 0.0).count(), 2);
    assert_eq!(&wire.buffer[8 + 4 * 180..8 + 4 * 181], &2f32.to_le_bytes());
    assert_eq!((wire.dtype.as_str(), wire.codec.as_str()), ("float32", "uniform8"));
    assert_eq!(wire.compression, CompressionType::Uniform8bit as i32);
    assert_eq!(Uniform8Bit.extract(&wire).unwrap(), t);
}

#[test]
fn bins_round_half_to_even_and_clamp() {
    let reference = |y: f32| (y.round_ties_even() + ZERO_POINT).clamp(0.0, 255.0) as u8;
    let mut rng = StdRng::seed_from_u64(3);
    let special = [0.5, -0.5, 1.5, 2.5, -2.5, 126.5, 127.5, -127.5, -128.5, 0.49999997, -0.0, 1e10];
    let random = (0..100_000).map(|_| rng.random_range(-140.0f32..140.0));
    let halves = (-300..300).map(|k| k as f32 / 2.0);
    for y in special.into_iter().chain(random).chain(halves) {
        assert_eq!(bin_of(y), reference(y), "{y}");
    }
    assert_eq!((bin_of(f32::INFINITY), bin_of(f32::NEG_INFINITY), bin_of(f32::NAN)), (255, 0, 0));
}

#[test]
fn codebook_entries_are_means_of_the_original_values() {
    // Values far from zero: a codebook built from centred values would be off by the mean.
    let values = vec![100.0, 100.001, 100.002, 110.0, 110.001, 90.0];
    let wire = encode(&Tensor::from_f32(vec![6], values.clone()).unwrap());
    let q = &wire.buffer[HEADER..];
    let book = codebook(&wire);
    for (bin, &entry) in book.iter().enumerate() {
        let members: Vec<f64> = values
            .iter()
            .zip(q)
            .filter(|&(_, &b)| usize::from(b) == bin)
            .map(|(&x, _)| f64::from(x))
            .collect();
        let expected =
            if members.is_empty() { 0.0 } else { members.iter().sum::<f64>() / members.len() as f64 };
        assert_eq!(entry, expected as f32, "bin {bin}");
    }
    // The three values near 100 share a bin (6 sigma / 256 is about 0.18 wide here).
    assert!(q[0] == q[1] && q[1] == q[2] && q[3] == q[4]);
}

#[test]
fn tensors_without_spread_use_bin_128() {
    for values in [vec![1.5f32; 7], vec![-3.0], vec![0.0; 25]] {
        let t = Tensor::from_f32(vec![values.len()], values.clone()).unwrap();
        let wire = encode(&t);
        assert!(wire.buffer[HEADER..].iter().all(|&b| b == 128));
        let book = codebook(&wire);
        assert_eq!(book[128], values[0]);
        assert!(book.iter().enumerate().all(|(i, &v)| i == 128 || v == 0.0));
        assert_eq!(Uniform8Bit.extract(&wire).unwrap(), t);
    }
    let scalar = Tensor::from_f32(vec![], vec![4.25]).unwrap();
    assert_eq!(Uniform8Bit.extract(&encode(&scalar)).unwrap(), scalar);
    let empty = Tensor::zeros(vec![3, 0], DType::F32).unwrap();
    let wire = encode(&empty);
    assert_eq!(wire.buffer.len(), HEADER);
    assert_eq!(Uniform8Bit.extract(&wire).unwrap(), empty);
}

#[test]
fn bfloat16_and_float64_keep_their_dtype() {
    let mut rng = StdRng::seed_from_u64(7);
    let values = randn(&mut rng, 4096);
    let bf = Tensor::from_bf16(vec![64, 64], values.iter().map(|&x| bf16::from_f32(x)).collect()).unwrap();
    let wire = encode(&bf);
    assert_eq!((wire.dtype.as_str(), wire.buffer.len()), ("bfloat16", HEADER + 4096));
    let back = Uniform8Bit.extract(&wire).unwrap();
    let back: Vec<f32> = back.as_bf16().unwrap().iter().map(|x| x.to_f32()).collect();
    let original: Vec<f32> = bf.as_bf16().unwrap().iter().map(|x| x.to_f32()).collect();
    assert!(mse(&original, &back) < 2e-4, "bf16 mse {}", mse(&original, &back));

    let f64s: Vec<f64> = values.iter().map(|&x| f64::from(x) * 1e3).collect();
    let t = Tensor::from_f64(vec![4096], f64s.clone()).unwrap();
    let back = Uniform8Bit.extract(&encode(&t)).unwrap();
    let back = back.as_f64().unwrap();
    let err = f64s.iter().zip(back).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / 4096.0;
    // The error scales with the variance (1e6 here).
    assert!(err < Uniform8Bit::SCENARIO_23_MSE * 1e6, "f64 mse {err}");
}

#[test]
fn ratio_is_eight_bits_over_the_dtype() {
    for (dtype, ratio) in [(DType::BF16, 0.5), (DType::F16, 0.5), (DType::F32, 0.25), (DType::F64, 0.125)] {
        let t = Tensor::zeros(vec![4], dtype).unwrap();
        assert_eq!(Uniform8Bit.estimate_compression_ratio(&CompressionInfo::for_tensor(0, &t.view())), ratio);
    }
}

#[test]
fn malformed_buffers_are_errors() {
    codebook_refuses_malformed_input(&Uniform8Bit, 255);
}

/// protocol 10.5 scenario 23: `randn(128, 128, 64)` round-trips with mse < 8e-4, and
/// `zeros(5, 5)` decodes to finite values.
#[test]
fn scenario_23_tensor_compression() {
    let mut rng = StdRng::seed_from_u64(23);
    let values = randn(&mut rng, 128 * 128 * 64);
    let t = Tensor::from_f32(vec![128, 128, 64], values.clone()).unwrap();
    let back = Uniform8Bit.extract(&encode(&t)).unwrap();
    assert_eq!(back.shape(), &[128, 128, 64]);
    let err = mse(&values, back.as_f32().unwrap());
    assert!(err > 0.0 && err < Uniform8Bit::SCENARIO_23_MSE, "mse {err}");

    let zeros = Uniform8Bit.extract(&encode(&Tensor::zeros(vec![5, 5], DType::F32).unwrap())).unwrap();
    assert!(zeros.as_f32().unwrap().iter().all(|&x| x == 0.0));
}
