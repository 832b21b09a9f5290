//! The compression suite on NoCompression, and proof that it catches broken codecs.

use std::sync::Arc;

use averager_conformance::compression::{self, CodecFactory};
use averager_conformance::{Outcome, block_on_case};
use averager_core::compression::{
    BytesMut, CodecCapabilities, Compression, CompressionInfo, ErrorBound, NoCompression, WireTensor,
    wire_dtype, wire_shape,
};
use averager_core::tensor::{DType, Tensor, TensorData, TensorView};
use averager_core::{Error, Result};

averager_conformance::compression_suite!(none, || Arc::new(NoCompression) as Arc<dyn Compression>);

/// Flips one byte of every non-empty buffer it writes, yet claims to be exact.
#[derive(Debug)]
struct CorruptingCodec;

impl Compression for CorruptingCodec {
    fn name(&self) -> &str {
        "test-corrupting"
    }

    fn accepts(&self, dtype: DType, ndim: usize) -> bool {
        NoCompression.accepts(dtype, ndim)
    }

    fn compress(&self, tensor: &TensorView<'_>, info: &CompressionInfo) -> Result<WireTensor> {
        let mut wire = NoCompression.compress(tensor, info)?;
        let mut bytes = wire.buffer.to_vec();
        let middle = bytes.len() / 2;
        if let Some(b) = bytes.get_mut(middle) {
            *b ^= 0x5a;
        }
        wire.buffer = bytes.into();
        wire.codec = self.name().to_string();
        Ok(wire)
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        NoCompression.extract(message)
    }

    fn estimate_compression_ratio(&self, _info: &CompressionInfo) -> f64 {
        1.0
    }

    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::Exact
    }

    fn capabilities(&self) -> CodecCapabilities {
        CodecCapabilities { lossless: true }
    }
}

/// Raw element bytes whose decoder slices the buffer by the declared shape without checking its
/// length, so a short buffer panics.
#[derive(Debug)]
struct UncheckedCodec;

impl Compression for UncheckedCodec {
    fn name(&self) -> &str {
        "test-unchecked"
    }

    fn accepts(&self, _dtype: DType, _ndim: usize) -> bool {
        true
    }

    fn compress(&self, tensor: &TensorView<'_>, _info: &CompressionInfo) -> Result<WireTensor> {
        let mut buffer = Vec::new();
        tensor.data().write_le_bytes(&mut buffer);
        Ok(WireTensor {
            buffer: buffer.into(),
            size: tensor.shape().iter().map(|&d| d as u32).collect(),
            requires_grad: tensor.requires_grad(),
            dtype: tensor.dtype().name().to_string(),
            compression: 0,
            chunks: 0,
            codec: self.name().to_string(),
        })
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        let dtype = wire_dtype(self.name(), message)?;
        let (shape, numel) = wire_shape(self.name(), message)?;
        // The bug under test: no comparison of the buffer's length with the shape.
        let bytes = &message.buffer[..numel * dtype.size_bytes()];
        Ok(Tensor::new(shape, TensorData::from_le_bytes(dtype, bytes)?)?
            .with_requires_grad(message.requires_grad))
    }

    fn estimate_compression_ratio(&self, _info: &CompressionInfo) -> f64 {
        1.0
    }

    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::Exact
    }
}

/// Accepts only float32 but encodes every dtype instead of refusing the others.
#[derive(Debug)]
struct OverreachingCodec;

impl Compression for OverreachingCodec {
    fn name(&self) -> &str {
        "test-overreaching"
    }

    fn accepts(&self, dtype: DType, _ndim: usize) -> bool {
        dtype == DType::F32
    }

    fn compress(&self, tensor: &TensorView<'_>, info: &CompressionInfo) -> Result<WireTensor> {
        let wire = UncheckedCodec.compress(tensor, info)?;
        Ok(WireTensor { codec: self.name().to_string(), ..wire })
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        NoCompression.extract(message)
    }

    fn estimate_compression_ratio(&self, _info: &CompressionInfo) -> f64 {
        1.0
    }

    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::Exact
    }
}

/// A correct lossy codec: float32 through float16, declaring the bound it is given.
#[derive(Debug)]
struct HalfCodec(ErrorBound);

impl HalfCodec {
    const NAME: &'static str = "test-half";
}

impl Compression for HalfCodec {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn accepts(&self, dtype: DType, _ndim: usize) -> bool {
        dtype == DType::F32
    }

    fn compress(&self, tensor: &TensorView<'_>, _info: &CompressionInfo) -> Result<WireTensor> {
        if tensor.dtype() != DType::F32 {
            return Err(Error::codec(Self::NAME, format!("{} is not float32", tensor.dtype())));
        }
        let halves = TensorData::from_f32(DType::F16, &tensor.data().to_f32()?)?;
        let mut buffer = Vec::new();
        halves.as_slice().write_le_bytes(&mut buffer);
        Ok(WireTensor {
            buffer: buffer.into(),
            size: tensor.shape().iter().map(|&d| d as u32).collect(),
            requires_grad: tensor.requires_grad(),
            dtype: tensor.dtype().name().to_string(),
            compression: 0,
            chunks: 0,
            codec: Self::NAME.to_string(),
        })
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        let dtype = wire_dtype(Self::NAME, message)?;
        let (shape, numel) = wire_shape(Self::NAME, message)?;
        if dtype != DType::F32 || numel.checked_mul(2) != Some(message.buffer.len()) {
            return Err(Error::codec(Self::NAME, "buffer does not hold the declared float32 tensor"));
        }
        let halves = TensorData::from_le_bytes(DType::F16, &message.buffer)?;
        let values = halves.as_slice().to_f32()?.into_owned();
        Ok(Tensor::from_f32(shape, values)?.with_requires_grad(message.requires_grad))
    }

    fn estimate_compression_ratio(&self, _info: &CompressionInfo) -> f64 {
        0.5
    }

    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        self.0
    }
}

fn corrupting() -> Arc<dyn Compression> {
    Arc::new(CorruptingCodec)
}

fn unchecked() -> Arc<dyn Compression> {
    Arc::new(UncheckedCodec)
}

fn overreaching() -> Arc<dyn Compression> {
    Arc::new(OverreachingCodec)
}

/// Asserts that a case fails (returns `Err`, not a test panic) and that its message mentions
/// `expected`.
fn assert_fails(outcome: Outcome, case: &str, expected: &str) {
    match outcome {
        Ok(()) => panic!("case {case} passed a broken codec"),
        Err(failure) => assert!(
            failure.message.contains(expected),
            "case {case} failed for another reason than {expected:?}: {failure}"
        ),
    }
}

#[test]
fn a_corrupted_byte_breaks_the_exact_round_trip() {
    let f = corrupting;
    assert_fails(
        block_on_case(compression::round_trip_every_accepted_dtype(&f)),
        "round_trip_every_accepted_dtype",
        "declared Exact",
    );
    assert_fails(
        block_on_case(compression::parts_round_trip_like_whole_tensors(&f)),
        "parts_round_trip_like_whole_tensors",
        "declared Exact",
    );
    assert_fails(
        block_on_case(compression::constant_tensors_decode_to_finite_values(&f)),
        "constant_tensors_decode_to_finite_values",
        "declared Exact",
    );
    assert_fails(block_on_case(compression::scalars_round_trip(&f)), "scalars_round_trip", "declared Exact");
}

#[test]
fn a_panicking_decoder_fails_the_hostile_cases_without_a_test_panic() {
    let f = unchecked;
    for (case, outcome) in [
        ("truncated_buffers_are_errors", block_on_case(compression::truncated_buffers_are_errors(&f))),
        ("garbage_buffers_never_panic", block_on_case(compression::garbage_buffers_never_panic(&f))),
        (
            "huge_declared_shapes_are_refused_quickly",
            block_on_case(compression::huge_declared_shapes_are_refused_quickly(&f)),
        ),
    ] {
        assert_fails(outcome, case, "panicked in extract");
    }
    // Well-formed input decodes fine, so the codec fails only where it is broken.
    assert!(block_on_case(compression::round_trip_every_accepted_dtype(&f)).is_ok());
}

#[test]
fn encoding_a_refused_dtype_fails_the_refusal_case() {
    let f = overreaching;
    assert_fails(
        block_on_case(compression::unaccepted_dtypes_are_refused(&f)),
        "unaccepted_dtypes_are_refused",
        "instead of Error::Codec",
    );
}

#[test]
fn run_all_passes_no_compression_and_names_each_case_once() {
    let f = || Arc::new(NoCompression) as Arc<dyn Compression>;
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let results = runtime.block_on(compression::run_all(&f));
    let mut names: Vec<_> = results.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), results.len());
    for (name, outcome) in results {
        assert!(outcome.is_ok(), "{name}: {}", outcome.unwrap_err());
    }
}

#[test]
fn a_correct_lossy_codec_passes_every_case() {
    let bounds = [ErrorBound::Elementwise { atol: 1e-4, rtol: 1e-3 }, ErrorBound::MeanSquared(5e-7)];
    for bound in bounds {
        let f = move || Arc::new(HalfCodec(bound)) as Arc<dyn Compression>;
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (name, outcome) in runtime.block_on(compression::run_all(&f)) {
            assert!(outcome.is_ok(), "{bound:?}, {name}: {}", outcome.unwrap_err());
        }
    }
}

#[test]
fn an_understated_error_bound_fails_the_round_trip() {
    let cases = [
        (ErrorBound::Exact, "declared Exact"),
        (ErrorBound::Elementwise { atol: 0.0, rtol: 1e-5 }, "values break"),
        (ErrorBound::MeanSquared(1e-12), "mean squared error"),
    ];
    for (bound, expected) in cases {
        let f = move || Arc::new(HalfCodec(bound)) as Arc<dyn Compression>;
        assert_fails(
            block_on_case(compression::round_trip_every_accepted_dtype(&f)),
            "round_trip_every_accepted_dtype",
            expected,
        );
    }
}

#[test]
fn closures_are_factories() {
    let f = || Arc::new(NoCompression) as Arc<dyn Compression>;
    assert_eq!(f.codec().name(), NoCompression::NAME);
}

/// A third-party codec written before the allocation-free methods existed (it implements only
/// `compress` and `extract`) passes their cases through the trait's defaults.
#[test]
fn a_codec_with_only_the_old_methods_passes_the_allocation_free_cases() {
    let f = || Arc::new(HalfCodec(ErrorBound::MeanSquared(5e-7))) as Arc<dyn Compression>;
    for (case, outcome) in [
        (
            "encode_into_appends_what_compress_writes",
            block_on_case(compression::encode_into_appends_what_compress_writes(&f)),
        ),
        ("decode_into_matches_extract", block_on_case(compression::decode_into_matches_extract(&f))),
        (
            "decode_add_into_accumulates_or_leaves_untouched",
            block_on_case(compression::decode_add_into_accumulates_or_leaves_untouched(&f)),
        ),
    ] {
        assert!(outcome.is_ok(), "{case}: {}", outcome.unwrap_err());
    }
}

/// NoCompression whose native allocation-free methods are wrong in the ways the cases look for:
/// `encode_into` replaces the caller's buffer, `decode_add_into` ignores the weight.
#[derive(Debug)]
struct CarelessInto;

impl Compression for CarelessInto {
    fn name(&self) -> &str {
        NoCompression::NAME
    }

    fn accepts(&self, dtype: DType, ndim: usize) -> bool {
        NoCompression.accepts(dtype, ndim)
    }

    fn compress(&self, tensor: &TensorView<'_>, info: &CompressionInfo) -> Result<WireTensor> {
        NoCompression.compress(tensor, info)
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        NoCompression.extract(message)
    }

    fn encode_into(
        &self,
        tensor: &TensorView<'_>,
        info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Result<WireTensor> {
        out.clear();
        NoCompression.encode_into(tensor, info, out)
    }

    fn decode_add_into(&self, message: &WireTensor, _weight: f32, out: &mut [f32]) -> Result<()> {
        NoCompression.decode_add_into(message, 1.0, out)
    }

    fn estimate_compression_ratio(&self, _info: &CompressionInfo) -> f64 {
        1.0
    }

    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::Exact
    }
}

#[test]
fn careless_allocation_free_methods_fail_their_cases() {
    let f = || Arc::new(CarelessInto) as Arc<dyn Compression>;
    assert_fails(
        block_on_case(compression::encode_into_appends_what_compress_writes(&f)),
        "encode_into_appends_what_compress_writes",
        "changed what the buffer held",
    );
    assert_fails(
        block_on_case(compression::decode_add_into_accumulates_or_leaves_untouched(&f)),
        "decode_add_into_accumulates_or_leaves_untouched",
        "decode_add_into gave",
    );
    assert!(block_on_case(compression::decode_into_matches_extract(&f)).is_ok());
}

/// NoCompression, whose fused reply adds the part instead of subtracting it.
#[derive(Debug)]
struct AddingDifferenceCodec;

impl Compression for AddingDifferenceCodec {
    fn name(&self) -> &str {
        NoCompression::NAME
    }

    fn accepts(&self, dtype: DType, ndim: usize) -> bool {
        NoCompression.accepts(dtype, ndim)
    }

    fn compress(&self, tensor: &TensorView<'_>, info: &CompressionInfo) -> Result<WireTensor> {
        NoCompression.compress(tensor, info)
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        NoCompression.extract(message)
    }

    fn encode_difference_into(
        &self,
        average: &[f32],
        part: &WireTensor,
        info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Option<Result<WireTensor>> {
        let negated: Vec<f32> = average.iter().map(|a| -a).collect();
        let header = NoCompression.encode_difference_into(&negated, part, info, out)?;
        Some(header)
    }

    fn estimate_compression_ratio(&self, _info: &CompressionInfo) -> f64 {
        1.0
    }

    fn error_bound(&self, _dtype: DType) -> ErrorBound {
        ErrorBound::Exact
    }
}

#[test]
fn a_wrong_fused_reply_fails_its_case_and_a_codec_without_one_passes() {
    let wrong = || Arc::new(AddingDifferenceCodec) as Arc<dyn Compression>;
    assert_fails(
        block_on_case(compression::encode_difference_into_matches_the_steps(&wrong)),
        "encode_difference_into_matches_the_steps",
        "bytes differ",
    );
    // The corrupting codec has no fused form: the default (`None`) passes.
    assert!(block_on_case(compression::encode_difference_into_matches_the_steps(&corrupting)).is_ok());
}
