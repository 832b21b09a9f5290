//! Helpers shared by the codecs' unit tests.

use averager_core::Error;
use averager_core::compression::{Compression, CompressionInfo, WireTensor};
use averager_core::tensor::Tensor;
use rand::Rng;

/// `n` standard-normal values (Box-Muller, so no extra dependency).
pub(crate) fn randn(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

/// Mean squared error between two equally long slices.
pub(crate) fn mse(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>() / a.len() as f64
}

/// A codebook codec (protocol 7.2 UNIFORM_8BIT / QUANTILE_8BIT, see `codebook.rs`) refuses
/// malformed messages with [`Error::Codec`]: a `K` of `bad_k`, a short or long buffer, an empty
/// one, an integer dtype, an impossible shape; and integer input to encode.
pub(crate) fn codebook_refuses_malformed_input(codec: &dyn Compression, bad_k: i64) {
    let t = Tensor::from_f32(vec![4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let wire = codec.compress(&t.view(), &CompressionInfo::for_tensor(0, &t.view())).unwrap();
    let mut wrong_k = wire.buffer.to_vec();
    wrong_k[..8].copy_from_slice(&bad_k.to_le_bytes());
    let header = crate::codebook::HEADER;
    for buffer in [wrong_k, wire.buffer[..header + 3].to_vec(), [&wire.buffer[..], &[0]].concat(), vec![]] {
        let forged = WireTensor { buffer: buffer.into(), ..wire.clone() };
        assert!(matches!(codec.extract(&forged), Err(Error::Codec { .. })));
    }
    let int = WireTensor { dtype: "int32".into(), ..wire.clone() };
    assert!(codec.extract(&int).is_err());
    let huge = WireTensor { size: vec![u32::MAX, u32::MAX], ..wire };
    assert!(matches!(codec.extract(&huge), Err(Error::Codec { .. })));
    let ints = Tensor::from_i64(vec![2], vec![1, 2]).unwrap();
    assert!(matches!(codec.compress(&ints.view(), &CompressionInfo::default()), Err(Error::Codec { .. })));
}
