//! Typed element storage, owned ([`TensorData`]) and borrowed ([`TensorSlice`]).
//!
//! One variant per [`DType`], each a plain `Vec`/slice of the element type, so numeric code works
//! on properly typed, aligned memory and codecs read straight from it.

use std::borrow::Cow;
use std::ops::Range;

use half::{bf16, f16};

use super::DType;
use super::slice_mut::TensorSliceMut;
use crate::error::{Error, Result};

/// Owned elements of one dtype.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // one variant per DType; the names say it
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I16(Vec<i16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
    Complex64(Vec<[f32; 2]>),
}

/// Borrowed elements of one dtype: what codecs and reducers read.
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub enum TensorSlice<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    I64(&'a [i64]),
    I32(&'a [i32]),
    I16(&'a [i16]),
    I8(&'a [i8]),
    U8(&'a [u8]),
    Bool(&'a [bool]),
    Complex64(&'a [[f32; 2]]),
}

/// Applies `$body` to the inner vector/slice of any variant, binding it as `$v`.
macro_rules! dispatch {
    ($ty:ident, $value:expr, $v:ident => $body:expr) => {
        match $value {
            $ty::F32($v) => $body,
            $ty::F64($v) => $body,
            $ty::F16($v) => $body,
            $ty::BF16($v) => $body,
            $ty::I64($v) => $body,
            $ty::I32($v) => $body,
            $ty::I16($v) => $body,
            $ty::I8($v) => $body,
            $ty::U8($v) => $body,
            $ty::Bool($v) => $body,
            $ty::Complex64($v) => $body,
        }
    };
}

/// Rebuilds the same variant around the result of `$body`.
macro_rules! map_variant {
    ($from:ident => $to:ident, $value:expr, $v:ident => $body:expr) => {
        match $value {
            $from::F32($v) => $to::F32($body),
            $from::F64($v) => $to::F64($body),
            $from::F16($v) => $to::F16($body),
            $from::BF16($v) => $to::BF16($body),
            $from::I64($v) => $to::I64($body),
            $from::I32($v) => $to::I32($body),
            $from::I16($v) => $to::I16($body),
            $from::I8($v) => $to::I8($body),
            $from::U8($v) => $to::U8($body),
            $from::Bool($v) => $to::Bool($body),
            $from::Complex64($v) => $to::Complex64($body),
        }
    };
}

/// An element type that reads and writes itself as little-endian bytes and as f64.
trait Element: Copy + Default {
    const SIZE: usize;
    fn write_le(self, out: &mut [u8]);
    fn read_le(bytes: &[u8]) -> Self;

    /// The elements' little-endian bytes without a conversion, where memory already holds them so.
    fn le_bytes(_values: &[Self]) -> Option<&[u8]> {
        None
    }

    /// The elements of little-endian `bytes` (a whole number of them), copied at memory speed
    /// where memory holds elements in that form.
    fn from_le_slice(_bytes: &[u8]) -> Option<Vec<Self>> {
        None
    }
}

macro_rules! element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn write_le(self, out: &mut [u8]) { out.copy_from_slice(&self.to_le_bytes()) }
            fn read_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
            // Parts are megabytes of numbers: on little-endian machines they are copied whole
            // instead of converted one element at a time.
            #[cfg(target_endian = "little")]
            fn le_bytes(values: &[Self]) -> Option<&[u8]> {
                Some(bytemuck::cast_slice(values))
            }
            #[cfg(target_endian = "little")]
            fn from_le_slice(bytes: &[u8]) -> Option<Vec<Self>> {
                // Copies into a fresh, aligned buffer: `bytes` (a network buffer) may be unaligned.
                Some(bytemuck::pod_collect_to_vec(bytes))
            }
        }
    )*};
}
element!(f32, f64, f16, bf16, i64, i32, i16, i8, u8);

impl Element for bool {
    const SIZE: usize = 1;
    fn write_le(self, out: &mut [u8]) {
        out[0] = self as u8;
    }
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
}

impl Element for [f32; 2] {
    const SIZE: usize = 8;
    fn write_le(self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self[0].to_le_bytes());
        out[4..].copy_from_slice(&self[1].to_le_bytes());
    }
    fn read_le(bytes: &[u8]) -> Self {
        [f32::read_le(&bytes[..4]), f32::read_le(&bytes[4..])]
    }
    #[cfg(target_endian = "little")]
    fn le_bytes(values: &[Self]) -> Option<&[u8]> {
        Some(bytemuck::cast_slice(values))
    }
    #[cfg(target_endian = "little")]
    fn from_le_slice(bytes: &[u8]) -> Option<Vec<Self>> {
        Some(bytemuck::pod_collect_to_vec(bytes))
    }
}

fn write_all<T: Element>(values: &[T], out: &mut Vec<u8>) {
    if let Some(bytes) = T::le_bytes(values) {
        out.extend_from_slice(bytes);
        return;
    }
    let start = out.len();
    out.resize(start + values.len() * T::SIZE, 0);
    for (v, chunk) in values.iter().zip(out[start..].chunks_exact_mut(T::SIZE)) {
        v.write_le(chunk);
    }
}

fn read_all<T: Element>(bytes: &[u8]) -> Vec<T> {
    let whole = &bytes[..bytes.len() - bytes.len() % T::SIZE];
    T::from_le_slice(whole).unwrap_or_else(|| whole.chunks_exact(T::SIZE).map(T::read_le).collect())
}

impl TensorData {
    /// The dtype of these elements.
    pub fn dtype(&self) -> DType {
        self.as_slice().dtype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        dispatch!(TensorData, self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zero elements of `dtype`.
    pub fn zeros(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::F64 => TensorData::F64(vec![0.0; n]),
            DType::F16 => TensorData::F16(vec![f16::ZERO; n]),
            DType::BF16 => TensorData::BF16(vec![bf16::ZERO; n]),
            DType::I64 => TensorData::I64(vec![0; n]),
            DType::I32 => TensorData::I32(vec![0; n]),
            DType::I16 => TensorData::I16(vec![0; n]),
            DType::I8 => TensorData::I8(vec![0; n]),
            DType::U8 => TensorData::U8(vec![0; n]),
            DType::Bool => TensorData::Bool(vec![false; n]),
            DType::Complex64 => TensorData::Complex64(vec![[0.0, 0.0]; n]),
        }
    }

    /// Borrows all elements.
    pub fn as_slice(&self) -> TensorSlice<'_> {
        map_variant!(TensorData => TensorSlice, self, v => v.as_slice())
    }

    /// Decodes raw little-endian element bytes (the NONE wire format) of `dtype`.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the length is not a whole number of elements.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Result<Self> {
        let size = dtype.size_bytes();
        if !bytes.len().is_multiple_of(size) {
            return Err(Error::Tensor(format!(
                "{} bytes are not a whole number of {dtype} elements",
                bytes.len()
            )));
        }
        Ok(match dtype {
            DType::F32 => TensorData::F32(read_all(bytes)),
            DType::F64 => TensorData::F64(read_all(bytes)),
            DType::F16 => TensorData::F16(read_all(bytes)),
            DType::BF16 => TensorData::BF16(read_all(bytes)),
            DType::I64 => TensorData::I64(read_all(bytes)),
            DType::I32 => TensorData::I32(read_all(bytes)),
            DType::I16 => TensorData::I16(read_all(bytes)),
            DType::I8 => TensorData::I8(read_all(bytes)),
            DType::U8 => TensorData::U8(read_all(bytes)),
            DType::Bool => TensorData::Bool(read_all(bytes)),
            DType::Complex64 => TensorData::Complex64(read_all(bytes)),
        })
    }

    /// Builds `dtype` elements from f32 values (rounding to nearest for integers, `!= 0` for bool).
    ///
    /// # Errors
    /// [`Error::Tensor`] for complex64, which has no f32 form.
    pub fn from_f32(dtype: DType, values: &[f32]) -> Result<Self> {
        if dtype == DType::F32 {
            return Ok(TensorData::F32(values.to_vec()));
        }
        Self::from_f64_iter(dtype, values.len(), values.iter().map(|&x| x as f64))
    }

    /// Builds `dtype` elements from f64 values; complex64 takes interleaved (re, im) pairs.
    ///
    /// Integers are rounded to nearest and saturate at the type's bounds; bool is `x != 0`.
    pub fn from_f64(dtype: DType, values: &[f64]) -> Result<Self> {
        if dtype == DType::Complex64 {
            if !values.len().is_multiple_of(2) {
                return Err(Error::Tensor("complex64 needs an even number of f64 values".into()));
            }
            return Ok(TensorData::Complex64(
                values.chunks_exact(2).map(|c| [c[0] as f32, c[1] as f32]).collect(),
            ));
        }
        Self::from_f64_iter(dtype, values.len(), values.iter().copied())
    }

    fn from_f64_iter(dtype: DType, n: usize, it: impl Iterator<Item = f64>) -> Result<Self> {
        let mut out = Self::zeros(dtype, 0);
        match &mut out {
            TensorData::F32(v) => v.extend(it.map(|x| x as f32)),
            TensorData::F64(v) => v.extend(it),
            TensorData::F16(v) => v.extend(it.map(f16::from_f64)),
            TensorData::BF16(v) => v.extend(it.map(bf16::from_f64)),
            TensorData::I64(v) => v.extend(it.map(|x| x.round() as i64)),
            TensorData::I32(v) => v.extend(it.map(|x| x.round() as i32)),
            TensorData::I16(v) => v.extend(it.map(|x| x.round() as i16)),
            TensorData::I8(v) => v.extend(it.map(|x| x.round() as i8)),
            TensorData::U8(v) => v.extend(it.map(|x| x.round() as u8)),
            TensorData::Bool(v) => v.extend(it.map(|x| x != 0.0)),
            TensorData::Complex64(_) => {
                return Err(Error::Tensor("complex64 cannot be built from real values".into()));
            }
        }
        debug_assert_eq!(out.len(), n);
        Ok(out)
    }
}

/// `out[i] = f(a[i], b[i])` for two slices of one element type.
fn zip_map<T: Copy, U>(a: &[T], b: &[T], f: impl Fn(T, T) -> U) -> Vec<U> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

/// `dst[i] = f(dst[i], src[i])` for two slices of one element type.
pub(super) fn zip_apply<T: Copy>(dst: &mut [T], src: &[T], f: impl Fn(T, T) -> T) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(*d, s);
    }
}

pub(super) fn mismatch(what: &str, a: (usize, DType), b: (usize, DType)) -> Error {
    Error::Tensor(format!("{what}: {} x {} and {} x {} differ", a.0, a.1, b.0, b.1))
}

impl TensorData {
    /// `self[offset..offset + delta.len()] += alpha * delta`, in the elements' own type
    /// (integers round to nearest, bool stays 0/1 by `!= 0`); protocol 4.8's update.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the dtypes differ or the range is out of bounds.
    pub fn add_scaled_at(&mut self, offset: usize, delta: TensorSlice<'_>, alpha: f64) -> Result<()> {
        self.as_slice_mut().add_scaled_at(offset, delta, alpha)
    }

    /// Borrows all elements for writing (their count and dtype cannot change through it).
    pub fn as_slice_mut(&mut self) -> TensorSliceMut<'_> {
        map_variant!(TensorData => TensorSliceMut, self, v => v.as_mut_slice())
    }
}

impl<'a> TensorSlice<'a> {
    /// `self - other`, element by element, in the elements' own type (protocol 4.5: the delta a
    /// reducer sends back is `average - part`). Integer differences may be negative and saturate
    /// at the type's bounds (`uint8` and `bool` deltas therefore cannot go below zero; average
    /// them as a wider dtype if that matters).
    ///
    /// # Errors
    /// [`Error::Tensor`] when dtype or length differ.
    pub fn difference(&self, other: TensorSlice<'_>) -> Result<TensorData> {
        if self.dtype() != other.dtype() || self.len() != other.len() {
            return Err(mismatch("difference", (self.len(), self.dtype()), (other.len(), other.dtype())));
        }
        Ok(match (*self, other) {
            (TensorSlice::F32(a), TensorSlice::F32(b)) => TensorData::F32(zip_map(a, b, |x, y| x - y)),
            (TensorSlice::F64(a), TensorSlice::F64(b)) => TensorData::F64(zip_map(a, b, |x, y| x - y)),
            (TensorSlice::F16(a), TensorSlice::F16(b)) => TensorData::F16(zip_map(a, b, |x, y| x - y)),
            (TensorSlice::BF16(a), TensorSlice::BF16(b)) => TensorData::BF16(zip_map(a, b, |x, y| x - y)),
            (TensorSlice::I64(a), TensorSlice::I64(b)) => TensorData::I64(zip_map(a, b, i64::saturating_sub)),
            (TensorSlice::I32(a), TensorSlice::I32(b)) => TensorData::I32(zip_map(a, b, i32::saturating_sub)),
            (TensorSlice::I16(a), TensorSlice::I16(b)) => TensorData::I16(zip_map(a, b, i16::saturating_sub)),
            (TensorSlice::I8(a), TensorSlice::I8(b)) => TensorData::I8(zip_map(a, b, i8::saturating_sub)),
            (TensorSlice::U8(a), TensorSlice::U8(b)) => TensorData::U8(zip_map(a, b, u8::saturating_sub)),
            (TensorSlice::Bool(a), TensorSlice::Bool(b)) => TensorData::Bool(zip_map(a, b, |x, y| x && !y)),
            (TensorSlice::Complex64(a), TensorSlice::Complex64(b)) => {
                TensorData::Complex64(zip_map(a, b, |x, y| [x[0] - y[0], x[1] - y[1]]))
            }
            _ => return Err(Error::Internal("dtype check let a mismatched pair through".into())),
        })
    }

    /// The dtype of these elements.
    pub fn dtype(&self) -> DType {
        match self {
            TensorSlice::F32(_) => DType::F32,
            TensorSlice::F64(_) => DType::F64,
            TensorSlice::F16(_) => DType::F16,
            TensorSlice::BF16(_) => DType::BF16,
            TensorSlice::I64(_) => DType::I64,
            TensorSlice::I32(_) => DType::I32,
            TensorSlice::I16(_) => DType::I16,
            TensorSlice::I8(_) => DType::I8,
            TensorSlice::U8(_) => DType::U8,
            TensorSlice::Bool(_) => DType::Bool,
            TensorSlice::Complex64(_) => DType::Complex64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        dispatch!(TensorSlice, self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A sub-range of elements.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the range is out of bounds.
    pub fn slice(&self, range: Range<usize>) -> Result<TensorSlice<'a>> {
        if range.start > range.end || range.end > self.len() {
            return Err(Error::Tensor(format!("range {range:?} out of bounds for {} elements", self.len())));
        }
        Ok(map_variant!(TensorSlice => TensorSlice, *self, v => &v[range.clone()]))
    }

    /// Copies the elements into an owned [`TensorData`].
    pub fn to_owned(&self) -> TensorData {
        map_variant!(TensorSlice => TensorData, *self, v => v.to_vec())
    }

    /// Appends the raw little-endian element bytes (the NONE wire format) to `out`.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        dispatch!(TensorSlice, *self, v => write_all(v, out))
    }

    /// The elements as f32: borrowed when they already are f32, converted otherwise.
    ///
    /// # Errors
    /// [`Error::Tensor`] for complex64.
    pub fn to_f32(&self) -> Result<Cow<'a, [f32]>> {
        Ok(match *self {
            TensorSlice::F32(v) => Cow::Borrowed(v),
            TensorSlice::F64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
            TensorSlice::F16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            TensorSlice::BF16(v) => Cow::Owned(v.iter().map(|x| x.to_f32()).collect()),
            TensorSlice::I64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
            TensorSlice::I32(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
            TensorSlice::I16(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
            TensorSlice::I8(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
            TensorSlice::U8(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
            TensorSlice::Bool(v) => Cow::Owned(v.iter().map(|&x| x as u8 as f32).collect()),
            TensorSlice::Complex64(_) => {
                return Err(Error::Tensor("complex64 has no f32 form".into()));
            }
        })
    }

    /// Number of f64 lanes this slice occupies in an accumulator (2 per complex element).
    pub fn f64_lanes(&self) -> usize {
        match self {
            TensorSlice::Complex64(v) => v.len() * 2,
            _ => self.len(),
        }
    }

    /// `acc[i] += weight * self[i]` in f64 (complex64: interleaved real and imaginary lanes).
    ///
    /// # Errors
    /// [`Error::Tensor`] when `acc` has a different number of lanes.
    pub fn add_scaled_to(&self, acc: &mut [f64], weight: f64) -> Result<()> {
        if acc.len() != self.f64_lanes() {
            return Err(Error::Tensor(format!(
                "accumulator has {} lanes, part has {}",
                acc.len(),
                self.f64_lanes()
            )));
        }
        fn go<T: Copy>(v: &[T], acc: &mut [f64], w: f64, f: impl Fn(T) -> f64) {
            for (a, &x) in acc.iter_mut().zip(v) {
                *a += w * f(x);
            }
        }
        match *self {
            TensorSlice::F32(v) => go(v, acc, weight, |x| x as f64),
            TensorSlice::F64(v) => go(v, acc, weight, |x| x),
            TensorSlice::F16(v) => go(v, acc, weight, |x| x.to_f64()),
            TensorSlice::BF16(v) => go(v, acc, weight, |x| x.to_f64()),
            TensorSlice::I64(v) => go(v, acc, weight, |x| x as f64),
            TensorSlice::I32(v) => go(v, acc, weight, |x| x as f64),
            TensorSlice::I16(v) => go(v, acc, weight, |x| x as f64),
            TensorSlice::I8(v) => go(v, acc, weight, |x| x as f64),
            TensorSlice::U8(v) => go(v, acc, weight, |x| x as f64),
            TensorSlice::Bool(v) => go(v, acc, weight, |x| x as u8 as f64),
            TensorSlice::Complex64(v) => {
                for (a, x) in acc.chunks_exact_mut(2).zip(v) {
                    a[0] += weight * x[0] as f64;
                    a[1] += weight * x[1] as f64;
                }
            }
        }
        Ok(())
    }

    /// The elements as f64 lanes (complex64 interleaved), for tests and reducers.
    pub fn to_f64_lanes(&self) -> Vec<f64> {
        let mut acc = vec![0.0; self.f64_lanes()];
        // Lane counts match by construction.
        let _ = self.add_scaled_to(&mut acc, 1.0);
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_bytes_round_trip_for_every_dtype() {
        for d in DType::ALL {
            let data = TensorData::from_f64(d, &[1.0, 0.0, 3.0, 2.0]).unwrap();
            let mut bytes = Vec::new();
            data.as_slice().write_le_bytes(&mut bytes);
            assert_eq!(bytes.len(), data.len() * d.size_bytes(), "{d}");
            assert_eq!(TensorData::from_le_bytes(d, &bytes).unwrap(), data, "{d}");
        }
        assert!(TensorData::from_le_bytes(DType::F32, &[0, 1, 2]).is_err());
    }

    #[test]
    fn difference_then_scaled_add_moves_towards_the_average() {
        for d in [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I64, DType::I32, DType::Complex64] {
            let local = TensorData::from_f64(d, &[1.0, 2.0, 3.0, 4.0]).unwrap();
            let average = TensorData::from_f64(d, &[3.0, 2.0, 5.0, 0.0]).unwrap();
            let delta = average.as_slice().difference(local.as_slice()).unwrap();
            let mut full = local.clone();
            full.add_scaled_at(0, delta.as_slice(), 1.0).unwrap();
            assert_eq!(full, average, "{d}");
            let mut half = local.clone();
            half.add_scaled_at(0, delta.as_slice(), 0.5).unwrap();
            let expected = TensorData::from_f64(d, &[2.0, 2.0, 4.0, 2.0]).unwrap();
            assert_eq!(half, expected, "{d}");
        }
        let mut t = TensorData::F32(vec![0.0; 4]);
        t.add_scaled_at(2, TensorSlice::F32(&[1.0, 2.0]), 1.0).unwrap();
        assert_eq!(t, TensorData::F32(vec![0.0, 0.0, 1.0, 2.0]));
        assert!(t.add_scaled_at(3, TensorSlice::F32(&[1.0, 2.0]), 1.0).is_err());
        assert!(t.add_scaled_at(usize::MAX, TensorSlice::F32(&[1.0]), 1.0).is_err());
        assert!(t.add_scaled_at(0, TensorSlice::F64(&[1.0]), 1.0).is_err());
        assert!(t.as_slice().difference(TensorSlice::F32(&[1.0])).is_err());
    }

    #[test]
    fn accumulate_checks_lanes() {
        let data = TensorData::F32(vec![1.0, 2.0]);
        let mut acc = vec![0.0; 2];
        data.as_slice().add_scaled_to(&mut acc, 2.0).unwrap();
        assert_eq!(acc, vec![2.0, 4.0]);
        assert!(data.as_slice().add_scaled_to(&mut [0.0; 3], 1.0).is_err());
        assert!(data.as_slice().slice(1..3).is_err());
    }
}
