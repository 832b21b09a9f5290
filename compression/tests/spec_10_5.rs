//! protocol 10.5 scenarios 23-26 (hivemind's compression tests), on the codecs themselves: round-trip
//! errors of every built-in codec, streaming split and combine (protocol 7.4), dtype and
//! `requires_grad` preservation, and bfloat16 with and without the legacy f32 layout.
//!
//! Only scenario 26 changes the environment (`USE_LEGACY_BFLOAT16`), inside one test that restores
//! it; every other test here decodes bfloat16 whichever layout NONE writes, so none depends on it.

use std::ffi::OsString;
use std::sync::Arc;

use averager_compression::{Blockwise8Bit, Float16, MeanStd16Bit, Quantile8Bit, Uniform8Bit};
use averager_conformance::compression::fixtures::standard_normal;
use averager_core::compression::{
    Compression, CompressionInfo, NoCompression, WireTensor, combine_from_streaming, split_for_streaming,
};
use averager_core::tensor::{DType, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// hivemind's default chunk size in `_check` (30 KiB).
const DEFAULT_CHUNK: usize = 30 * 1024;

/// The environment variable that switches NONE's bfloat16 layout (protocol 7.2).
const LEGACY_VAR: &str = "USE_LEGACY_BFLOAT16";

/// Every built-in codec (protocol 7.2), NONE first.
fn all_codecs() -> Vec<Arc<dyn Compression>> {
    vec![
        Arc::new(NoCompression),
        Arc::new(Float16),
        Arc::new(MeanStd16Bit),
        Arc::new(Uniform8Bit),
        Arc::new(Quantile8Bit),
        Arc::new(Blockwise8Bit),
    ]
}

/// `torch.randn(shape).to(dtype)` with a seeded generator: integers truncate toward zero, bool is
/// `x != 0`, complex64 has a zero imaginary part.
fn randn(seed: u64, dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let values = standard_normal(&mut StdRng::seed_from_u64(seed), n);
    let data = match dtype {
        DType::Complex64 => {
            TensorData::from_f64(dtype, &values.iter().flat_map(|&x| [x, 0.0]).collect::<Vec<_>>())
        }
        d if d.is_floating() || d == DType::Bool => TensorData::from_f64(d, &values),
        d => TensorData::from_f64(d, &values.iter().map(|x| x.trunc()).collect::<Vec<_>>()),
    };
    Tensor::new(shape.to_vec(), data.unwrap()).unwrap()
}

fn encode(codec: &dyn Compression, tensor: &Tensor) -> WireTensor {
    codec.compress(&tensor.view(), &CompressionInfo::for_tensor(0, &tensor.view())).unwrap()
}

fn mse(a: &Tensor, b: &Tensor) -> f64 {
    let (x, y) = (a.view().data().to_f64_lanes(), b.view().data().to_f64_lanes());
    assert_eq!(x.len(), y.len());
    x.iter().zip(&y).map(|(p, q)| (p - q).powi(2)).sum::<f64>() / x.len().max(1) as f64
}

/// hivemind's `_check`: encode, split into `chunk`-byte messages (their number is
/// `max(ceil(len / chunk), 1)`), combine, decode; the result keeps the dtype, shape and
/// `requires_grad`, and every value is within `atol + rtol |x|` (torch's `allclose`).
fn check(codec: &dyn Compression, tensor: &Tensor, rtol: f64, atol: f64, chunk: usize) -> Tensor {
    let wire = encode(codec, tensor);
    let len = wire.buffer.len();
    let chunks = split_for_streaming(wire, chunk);
    assert_eq!(chunks.len(), len.div_ceil(chunk).max(1), "{} bytes in {chunk}-byte chunks", len);
    let restored = combine_from_streaming(chunks, usize::MAX).unwrap();
    assert_eq!(restored.buffer.len(), len);
    let decoded = codec.extract(&restored).unwrap();
    assert_eq!(decoded.dtype(), tensor.dtype(), "{}", codec.name());
    assert_eq!(decoded.shape(), tensor.shape(), "{}", codec.name());
    assert_eq!(decoded.requires_grad(), tensor.requires_grad(), "{}", codec.name());
    let (x, d) = (tensor.view().data().to_f64_lanes(), decoded.view().data().to_f64_lanes());
    for (i, (&x, &d)) in x.iter().zip(&d).enumerate() {
        assert!((d - x).abs() <= atol + rtol * x.abs(), "{}: value {i} is {d} for {x}", codec.name());
    }
    decoded
}

/// Scenario 23 (tensor_compression): `randn(128, 128, 64)` round-trips exactly with NONE, with
/// mse < 5e-8 with MEANSTD_16BIT and FLOAT16 and < 8e-4 with the 8-bit codecs; `zeros(5, 5)`
/// decodes to finite values with every codec, BLOCKWISE_8BIT included.
#[test]
fn scenario_23_tensor_compression() {
    let tensor = randn(23, DType::F32, &[128, 128, 64]);
    for codec in all_codecs() {
        let decoded = codec.extract(&encode(&*codec, &tensor)).unwrap();
        assert_eq!(decoded.shape(), tensor.shape());
        let err = mse(&tensor, &decoded);
        let limit = match codec.name() {
            "none" => 0.0,
            "float16" | "meanstd16" => 5e-8,
            _ => 8e-4,
        };
        assert!(err <= limit, "{}: mse {err} exceeds {limit}", codec.name());
        if codec.name() == "none" {
            assert_eq!(decoded, tensor);
        }

        let zeros = Tensor::zeros(vec![5, 5], DType::F32).unwrap();
        let decoded = codec.extract(&encode(&*codec, &zeros)).unwrap();
        assert!(decoded.as_f32().unwrap().iter().all(|x| x.is_finite()), "{}", codec.name());
    }
}

/// Scenario 24 (serialize_tensor): a `randn(512, 12288)` tensor with `requires_grad` streams in
/// chunks of 1024, 65536, 65537 and 10^9 bytes and comes back exactly with NONE; FLOAT16 within
/// 1e-2; integers, a small MEANSTD_16BIT tensor and 0-d scalars too.
#[test]
fn scenario_24_serialize_tensor() {
    let tensor = randn(24, DType::F32, &[512, 12288]).with_requires_grad(true);
    for chunk in [1024, 65536, 65537, 1_000_000_000] {
        let decoded = check(&NoCompression, &tensor, 0.0, 0.0, chunk);
        assert_eq!(decoded, tensor, "chunk {chunk}");
    }
    check(&Float16, &tensor, 0.0, 1e-2, DEFAULT_CHUNK);

    let mut rng = StdRng::seed_from_u64(240);
    let ints: Vec<i64> = (0..512).map(|_| rand::Rng::random_range(&mut rng, 0..100)).collect();
    let ints = Tensor::from_i64(vec![512, 1, 1], ints).unwrap();
    assert_eq!(check(&NoCompression, &ints, 0.0, 0.0, DEFAULT_CHUNK), ints);

    check(&MeanStd16Bit, &randn(241, DType::F32, &[10, 20]), 1e-5, 0.1, DEFAULT_CHUNK);

    let scalar = Tensor::from_f32(vec![], vec![1.0]).unwrap();
    assert_eq!(check(&NoCompression, &scalar, 0.0, 0.0, DEFAULT_CHUNK), scalar);
    assert_eq!(check(&Float16, &scalar, 0.0, 0.0, DEFAULT_CHUNK), scalar);
}

/// Scenario 25 (serialize_tensor_properties): `randn(123, 45).to(dtype)`, with and without
/// `requires_grad`, decodes to the same dtype and `requires_grad` with every codec protocol 7.1 lets
/// it use (floating dtypes: all, except FLOAT16 and MEANSTD_16BIT for bfloat16; others: NONE).
#[test]
fn scenario_25_serialize_tensor_properties() {
    let dtypes = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::Complex64,
        DType::I64,
        DType::I32,
        DType::U8,
        DType::Bool,
    ];
    for (seed, dtype) in (250..).zip(dtypes) {
        for requires_grad in [false, true] {
            let tensor = randn(seed, dtype, &[123, 45]).with_requires_grad(requires_grad);
            let codecs: Vec<Arc<dyn Compression>> = all_codecs()
                .into_iter()
                .filter(|c| match dtype {
                    DType::BF16 => !matches!(c.name(), "float16" | "meanstd16"),
                    d if d.is_floating() => true,
                    _ => c.name() == "none",
                })
                .collect();
            for codec in codecs {
                assert!(codec.accepts(dtype, 2), "{} refuses {dtype}", codec.name());
                let decoded = codec.extract(&encode(&*codec, &tensor)).unwrap();
                assert_eq!(decoded.dtype(), dtype, "{}", codec.name());
                assert_eq!(decoded.requires_grad(), requires_grad, "{} {dtype}", codec.name());
                assert_eq!(decoded.shape(), &[123, 45]);
            }
        }
    }
}

/// Sets `USE_LEGACY_BFLOAT16` for the lifetime of the guard and restores the previous value when
/// dropped, also when an assertion fails.
struct LegacyGuard {
    previous: Option<OsString>,
}

impl LegacyGuard {
    fn set(legacy: bool) -> Self {
        let previous = std::env::var_os(LEGACY_VAR);
        set_legacy_var(Some(if legacy { "1".into() } else { "0".into() }));
        LegacyGuard { previous }
    }
}

impl Drop for LegacyGuard {
    fn drop(&mut self) {
        set_legacy_var(self.previous.take());
    }
}

#[allow(unsafe_code)]
fn set_legacy_var(value: Option<OsString>) {
    // SAFETY: `set_var` and `remove_var` race only with environment access that bypasses std's
    // process-wide environment lock (libc's `getenv` from C code). Nothing in this test binary
    // calls such code: the other tests only read the variable through `std::env::var`.
    unsafe {
        match value {
            Some(v) => std::env::set_var(LEGACY_VAR, v),
            None => std::env::remove_var(LEGACY_VAR),
        }
    }
}

/// Scenario 26 (serialize_bfloat16): legacy layout on and off, shapes (4096, 16) and (0, 0):
/// NONE round-trips exactly (writing 4 or 2 bytes per value), BLOCKWISE_8BIT within rtol 0.1 and
/// atol 0.01 through 1024-byte chunks.
#[test]
fn scenario_26_serialize_bfloat16() {
    for legacy in [true, false] {
        let _guard = LegacyGuard::set(legacy);
        for shape in [[4096, 16], [0, 0]] {
            let tensor = randn(26, DType::BF16, &shape);
            let bytes_per_value = if legacy { 4 } else { 2 };
            assert_eq!(encode(&NoCompression, &tensor).buffer.len(), bytes_per_value * tensor.numel());
            assert_eq!(check(&NoCompression, &tensor, 0.0, 0.0, DEFAULT_CHUNK), tensor, "legacy {legacy}");
            check(&Blockwise8Bit, &tensor, 0.1, 0.01, 1024);
        }
    }
}
