//! protocol 7.2 FLOAT16: each value saturated to `[-65504, 65504]` and rounded to IEEE half
//! precision (nearest-even); the buffer is the little-endian f16 values.

use averager_core::compression::{
    BytesMut, CodecCapabilities, Compression, CompressionInfo, CompressionType, ErrorBound, WireTensor,
    check_decode_len, wire_dtype, wire_header, wire_shape,
};
use averager_core::tensor::{DType, Tensor, TensorData, TensorSlice, TensorView};
use averager_core::{Error, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;

pub(crate) mod lanes;

use lanes::{narrow, narrow_append, narrow_difference_append, widen, widen_add};

/// Elements converted per step where a stack buffer sits between the tensor and the wire
/// (float64 and float16 tensors): a few KiB.
const CHUNK: usize = 1024;

/// Half-precision floats: 2 bytes per value, about 3 significant decimal digits.
///
/// Accepts float32, float64 and float16 tensors of any rank; bfloat16 is refused, as in hivemind
/// (its range exceeds f16's, so FLOAT16 would saturate most large values). Values beyond
/// ±65504, infinities included, become ±65504; NaN stays NaN. Decoding restores the original dtype.
#[derive(Debug, Clone, Copy, Default)]
pub struct Float16;

impl Float16 {
    /// The registry name.
    pub const NAME: &'static str = "float16";

    /// Relative tolerance of one f16 rounding: half an ulp of an 11-bit significand.
    const RTOL: f64 = 1.0 / 2048.0;

    /// Absolute tolerance below f16's normal range, where values are multiples of 2^-24: half of
    /// that spacing.
    const ATOL: f64 = 1.0 / 33_554_432.0;
}

/// Reads the f16 values of `bytes` (an even number of them) into `out`.
fn read_halves(bytes: &[u8], out: &mut [f16]) {
    for (h, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *h = f16::from_le_bytes([b[0], b[1]]);
    }
}

/// Writes the FLOAT16 buffer of `data` into `out` (`out.len() == 2 * data.len()`).
fn encode_slice(data: TensorSlice<'_>, out: &mut [u8]) -> Result<()> {
    match data {
        TensorSlice::F32(values) => narrow(values, out),
        TensorSlice::F64(values) => {
            let mut narrowed = [0f32; CHUNK];
            for (src, out) in values.chunks(CHUNK).zip(out.chunks_mut(2 * CHUNK)) {
                for (n, &x) in narrowed.iter_mut().zip(src) {
                    *n = x as f32;
                }
                narrow(&narrowed[..src.len()], out);
            }
        }
        TensorSlice::F16(values) => {
            // Already f16: only the infinities change (to ±65504); NaN keeps its bits.
            for (&h, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                let h = if h.is_infinite() { f16::MAX.copysign(h) } else { h };
                o.copy_from_slice(&h.to_le_bytes());
            }
        }
        other => {
            return Err(Error::codec(
                Float16::NAME,
                format!("{} tensors are not accepted (float32, float64 or float16 only)", other.dtype()),
            ));
        }
    }
    Ok(())
}

/// The message of `tensor` without its buffer.
fn header(tensor: &TensorView<'_>) -> WireTensor {
    wire_header(tensor, tensor.dtype(), CompressionType::Float16, Float16::NAME)
}

/// The f16 payload of `message` after checking its dtype and length, and the element count.
fn payload(message: &WireTensor) -> Result<(DType, Vec<usize>, &[u8])> {
    let dtype = wire_dtype(Float16::NAME, message)?;
    if !Float16.accepts(dtype, message.size.len()) {
        return Err(Error::codec(Float16::NAME, format!("{dtype} is not a FLOAT16 dtype")));
    }
    let (shape, numel) = wire_shape(Float16::NAME, message)?;
    let bytes = &message.buffer[..];
    if numel.checked_mul(2) != Some(bytes.len()) {
        return Err(Error::codec(
            Float16::NAME,
            format!("buffer of {} bytes does not hold {numel} f16 values", bytes.len()),
        ));
    }
    Ok((dtype, shape, bytes))
}

impl Compression for Float16 {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn wire_type(&self) -> CompressionType {
        CompressionType::Float16
    }

    fn accepts(&self, dtype: DType, _ndim: usize) -> bool {
        matches!(dtype, DType::F32 | DType::F64 | DType::F16)
    }

    fn compress(&self, tensor: &TensorView<'_>, _info: &CompressionInfo) -> Result<WireTensor> {
        // The tensor's elements take at least 2 bytes each in memory, so this cannot overflow.
        let mut buffer = vec![0u8; 2 * tensor.numel()];
        encode_slice(tensor.data(), &mut buffer)?;
        Ok(WireTensor { buffer: buffer.into(), ..header(tensor) })
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        let (dtype, shape, bytes) = payload(message)?;
        let numel = bytes.len() / 2;
        let data = match dtype {
            DType::F16 => {
                let mut out = vec![f16::ZERO; numel];
                read_halves(bytes, &mut out);
                TensorData::F16(out)
            }
            DType::F32 => {
                let mut out = vec![0f32; numel];
                widen(bytes, &mut out);
                TensorData::F32(out)
            }
            _ => {
                let mut out = vec![0f64; numel];
                let mut halves = [f16::ZERO; CHUNK];
                for (src, dst) in bytes.chunks(2 * CHUNK).zip(out.chunks_mut(CHUNK)) {
                    read_halves(src, &mut halves[..dst.len()]);
                    halves[..dst.len()].convert_to_f64_slice(dst);
                }
                TensorData::F64(out)
            }
        };
        Ok(Tensor::new(shape, data)?.with_requires_grad(message.requires_grad))
    }

    fn encode_into(
        &self,
        tensor: &TensorView<'_>,
        _info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Result<WireTensor> {
        if let TensorSlice::F32(values) = tensor.data() {
            // The all-reduce's case: appended without zeroing the bytes first.
            narrow_append(values, out);
            return Ok(header(tensor));
        }
        let start = out.len();
        out.resize(start + 2 * tensor.numel(), 0);
        if let Err(e) = encode_slice(tensor.data(), &mut out[start..]) {
            out.truncate(start);
            return Err(e);
        }
        Ok(header(tensor))
    }

    /// A float32 part's reply in one pass: the part's halves widened, taken from the average and
    /// narrowed again, with the arithmetic of the stepwise path (`a + (-1) * w` is exactly
    /// `a - w`).
    fn encode_difference_into(
        &self,
        average: &[f32],
        part: &WireTensor,
        _info: &CompressionInfo,
        out: &mut BytesMut,
    ) -> Option<Result<WireTensor>> {
        let bytes = match payload(part) {
            Ok((DType::F32, _, bytes)) => bytes,
            Ok(_) => return None,
            Err(e) => return Some(Err(e)),
        };
        if let Err(e) = check_decode_len(Self::NAME, bytes.len() / 2, average.len()) {
            return Some(Err(e));
        }
        narrow_difference_append(average, bytes, out);
        let shape = [average.len()];
        Some(TensorView::new(&shape[..], TensorSlice::F32(average)).map(|view| header(&view)))
    }

    /// Every accepted dtype decodes to f16 values, which f32 holds exactly: the f32 of the
    /// wire's halves is what `extract` gives, whatever the message's dtype.
    fn decode_into(&self, message: &WireTensor, out: &mut [f32]) -> Result<()> {
        let (_, _, bytes) = payload(message)?;
        check_decode_len(Self::NAME, bytes.len() / 2, out.len())?;
        widen(bytes, out);
        Ok(())
    }

    fn decode_add_into(&self, message: &WireTensor, weight: f32, out: &mut [f32]) -> Result<()> {
        let (_, _, bytes) = payload(message)?;
        check_decode_len(Self::NAME, bytes.len() / 2, out.len())?;
        widen_add(bytes, weight, out);
        Ok(())
    }

    /// `16 / bits(dtype)` (protocol 7.1); a descriptor without a dtype counts as float32.
    fn estimate_compression_ratio(&self, info: &CompressionInfo) -> f64 {
        16.0 / info.descriptor.dtype.unwrap_or(DType::F32).bits() as f64
    }

    /// For values within ±65504: float16 input round-trips exactly; float32 is off by at most one
    /// f16 rounding, `2^-11 |x|` in the normal range and `2^-25` among f16's subnormals (below
    /// 2^-14); float64 adds its rounding to f32 first (`2^-24 |x|`, covered by `2^-23`).
    fn error_bound(&self, dtype: DType) -> ErrorBound {
        match dtype {
            DType::F16 => ErrorBound::Exact,
            DType::F64 => ErrorBound::Elementwise { atol: Self::ATOL, rtol: Self::RTOL + 1.0 / 8_388_608.0 },
            _ => ErrorBound::Elementwise { atol: Self::ATOL, rtol: Self::RTOL },
        }
    }

    fn capabilities(&self) -> CodecCapabilities {
        CodecCapabilities { lossless: false }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn encode(t: &Tensor) -> WireTensor {
        Float16.compress(&t.view(), &CompressionInfo::for_tensor(0, &t.view())).unwrap()
    }

    fn round_trip_f32(values: Vec<f32>) -> Vec<f32> {
        let t = Tensor::from_f32(vec![values.len()], values).unwrap();
        Float16.extract(&encode(&t)).unwrap().as_f32().unwrap().to_vec()
    }

    #[test]
    fn the_buffer_is_little_endian_f16() {
        // 1.0 = 0x3c00, -2.0 = 0xc000, 0.5 = 0x3800, 65504 = 0x7bff (the largest finite f16).
        let t = Tensor::from_f32(vec![2, 2], vec![1.0, -2.0, 0.5, 65504.0]).unwrap().with_requires_grad(true);
        let wire = encode(&t);
        assert_eq!(&wire.buffer[..], &[0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38, 0xff, 0x7b]);
        assert_eq!(wire.size, vec![2, 2]);
        assert_eq!(wire.dtype, "float32");
        assert_eq!(wire.codec, "float16");
        assert_eq!(wire.compression, CompressionType::Float16 as i32);
        assert!(wire.requires_grad);
        assert_eq!(Float16.extract(&wire).unwrap(), t);
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // Between 1 and 2 the f16 spacing is 2^-10: 1 + 2^-11 is a tie and goes to the even 1.0,
        // 1 + 3 * 2^-11 is a tie that goes up to the even 1 + 2^-9.
        let tie_down = 1.0 + 2f32.powi(-11);
        let tie_up = 1.0 + 3.0 * 2f32.powi(-11);
        assert_eq!(round_trip_f32(vec![tie_down, tie_up]), vec![1.0, 1.0 + 2f32.powi(-9)]);
    }

    #[test]
    fn out_of_range_values_saturate_and_nan_stays_nan() {
        let got = round_trip_f32(vec![1e6, -1e6, f32::INFINITY, f32::NEG_INFINITY, 65519.0, f32::NAN, -0.0]);
        assert_eq!(&got[..5], &[65504.0, -65504.0, 65504.0, -65504.0, 65504.0]);
        assert!(got[5].is_nan());
        assert!(got[6] == 0.0 && got[6].is_sign_negative());

        let halves = Tensor::from_f16(vec![3], vec![f16::INFINITY, f16::NEG_INFINITY, f16::NAN]).unwrap();
        let back = Float16.extract(&encode(&halves)).unwrap();
        let back = back.as_f16().unwrap();
        assert_eq!(&back[..2], &[f16::MAX, f16::MIN]);
        assert!(back[2].is_nan());
    }

    #[test]
    fn float64_keeps_its_dtype_within_the_declared_bound() {
        let values = vec![std::f64::consts::PI, -1e-3, 12345.678, 1e-7, 0.0];
        let t = Tensor::from_f64(vec![5], values.clone()).unwrap();
        let wire = encode(&t);
        assert_eq!((wire.dtype.as_str(), wire.buffer.len()), ("float64", 10));
        let back = Float16.extract(&wire).unwrap();
        let ErrorBound::Elementwise { atol, rtol } = Float16.error_bound(DType::F64) else {
            panic!("float64 bound is elementwise");
        };
        for (&x, &d) in values.iter().zip(back.as_f64().unwrap()) {
            assert!((d - x).abs() <= atol + rtol * x.abs(), "{x} decoded to {d}");
        }
        assert_eq!(back.as_f64().unwrap()[0], f64::from(f16::from_f64(std::f64::consts::PI)));
    }

    #[test]
    fn bfloat16_and_integers_are_refused() {
        let t = Tensor::zeros(vec![3], DType::BF16).unwrap();
        assert!(matches!(Float16.compress(&t.view(), &CompressionInfo::default()), Err(Error::Codec { .. })));
        let wire = encode(&Tensor::zeros(vec![3], DType::F32).unwrap());
        for dtype in ["bfloat16", "int64", "bool"] {
            let forged = WireTensor { dtype: dtype.into(), ..wire.clone() };
            assert!(Float16.extract(&forged).is_err(), "{dtype}");
        }
    }

    #[test]
    fn ratio_is_sixteen_bits_over_the_dtype() {
        for (dtype, ratio) in [(DType::F16, 1.0), (DType::F32, 0.5), (DType::F64, 0.25)] {
            let t = Tensor::zeros(vec![4], dtype).unwrap();
            let info = CompressionInfo::for_tensor(0, &t.view());
            assert_eq!(Float16.estimate_compression_ratio(&info), ratio);
        }
    }

    #[test]
    fn lengths_other_than_two_per_element_are_errors() {
        let wire = encode(&Tensor::zeros(vec![4], DType::F32).unwrap());
        for len in [0, 7, 9, 16] {
            let forged = WireTensor { buffer: vec![0u8; len].into(), ..wire.clone() };
            assert!(matches!(Float16.extract(&forged), Err(Error::Codec { .. })), "{len}");
        }
        let huge = WireTensor { size: vec![u32::MAX, u32::MAX], ..wire };
        assert!(matches!(Float16.extract(&huge), Err(Error::Codec { .. })));
    }

    /// protocol 10.5 scenario 23: `randn(128, 128, 64)` round-trips with mse < 5e-8, and
    /// `zeros(5, 5)` decodes to finite values.
    #[test]
    fn scenario_23_tensor_compression() {
        let mut rng = StdRng::seed_from_u64(23);
        let values: Vec<f32> = (0..128 * 128 * 64)
            .map(|_| {
                let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect();
        let t = Tensor::from_f32(vec![128, 128, 64], values.clone()).unwrap();
        let back = Float16.extract(&encode(&t)).unwrap();
        assert_eq!(back.shape(), &[128, 128, 64]);
        let mse = values
            .iter()
            .zip(back.as_f32().unwrap())
            .map(|(&x, &d)| (f64::from(x) - f64::from(d)).powi(2))
            .sum::<f64>()
            / values.len() as f64;
        assert!(mse > 0.0 && mse < 5e-8, "mse {mse}");

        let zeros = Float16.extract(&encode(&Tensor::zeros(vec![5, 5], DType::F32).unwrap())).unwrap();
        assert!(zeros.as_f32().unwrap().iter().all(|&x| x == 0.0));
    }
}
