//! Mutable borrowed elements ([`TensorSliceMut`]): what a step's update writes into, whether the
//! memory is a [`Tensor`](super::Tensor)'s own or lent from outside the averager (the Python
//! binding's user buffers, see [`LentTensors`](crate::averager::LentTensors)).

use half::{bf16, f16};

use super::DType;
use super::data::{TensorSlice, mismatch, zip_apply};
use crate::error::{Error, Result};

/// Mutable elements of one dtype; their count and dtype cannot change through it.
#[derive(Debug, PartialEq)]
#[allow(missing_docs)] // one variant per DType; the names say it
pub enum TensorSliceMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
    I64(&'a mut [i64]),
    I32(&'a mut [i32]),
    I16(&'a mut [i16]),
    I8(&'a mut [i8]),
    U8(&'a mut [u8]),
    Bool(&'a mut [bool]),
    Complex64(&'a mut [[f32; 2]]),
}

impl<'a> TensorSliceMut<'a> {
    /// The elements read-only.
    pub fn as_slice(&self) -> TensorSlice<'_> {
        match self {
            TensorSliceMut::F32(v) => TensorSlice::F32(v),
            TensorSliceMut::F64(v) => TensorSlice::F64(v),
            TensorSliceMut::F16(v) => TensorSlice::F16(v),
            TensorSliceMut::BF16(v) => TensorSlice::BF16(v),
            TensorSliceMut::I64(v) => TensorSlice::I64(v),
            TensorSliceMut::I32(v) => TensorSlice::I32(v),
            TensorSliceMut::I16(v) => TensorSlice::I16(v),
            TensorSliceMut::I8(v) => TensorSlice::I8(v),
            TensorSliceMut::U8(v) => TensorSlice::U8(v),
            TensorSliceMut::Bool(v) => TensorSlice::Bool(v),
            TensorSliceMut::Complex64(v) => TensorSlice::Complex64(v),
        }
    }

    /// The dtype of these elements.
    pub fn dtype(&self) -> DType {
        self.as_slice().dtype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as mutable `f32`, or an error for another dtype.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the elements are not f32.
    pub fn into_f32(self) -> Result<&'a mut [f32]> {
        match self {
            TensorSliceMut::F32(v) => Ok(v),
            other => Err(Error::Tensor(format!("tensor is {}, not {}", other.dtype(), DType::F32))),
        }
    }
}

impl TensorSliceMut<'_> {
    /// `self[offset..offset + delta.len()] += alpha * delta`, in the elements' own type
    /// (integers round to nearest, bool stays 0/1 by `!= 0`); protocol 4.8's update.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the dtypes differ or the range is out of bounds.
    pub fn add_scaled_at(&mut self, offset: usize, delta: TensorSlice<'_>, alpha: f64) -> Result<()> {
        let (len, dtype) = (self.len(), self.dtype());
        let end = offset.checked_add(delta.len()).filter(|&e| e <= len);
        let Some(end) = end else {
            return Err(Error::Tensor(format!("range {offset}+{} out of bounds for {len}", delta.len())));
        };
        if delta.dtype() != dtype {
            return Err(mismatch("add_scaled_at", (len, dtype), (delta.len(), delta.dtype())));
        }
        let a32 = alpha as f32;
        match (self, delta) {
            (TensorSliceMut::F32(d), TensorSlice::F32(s)) => {
                zip_apply(&mut d[offset..end], s, |x, y| x + a32 * y)
            }
            (TensorSliceMut::F64(d), TensorSlice::F64(s)) => {
                zip_apply(&mut d[offset..end], s, |x, y| x + alpha * y)
            }
            (TensorSliceMut::F16(d), TensorSlice::F16(s)) => {
                zip_apply(&mut d[offset..end], s, |x, y| f16::from_f32(x.to_f32() + a32 * y.to_f32()))
            }
            (TensorSliceMut::BF16(d), TensorSlice::BF16(s)) => {
                zip_apply(&mut d[offset..end], s, |x, y| bf16::from_f32(x.to_f32() + a32 * y.to_f32()))
            }
            (TensorSliceMut::I64(d), TensorSlice::I64(s)) => {
                zip_apply(&mut d[offset..end], s, |x, y| (x as f64 + alpha * y as f64).round() as i64)
            }
            (TensorSliceMut::I32(d), TensorSlice::I32(s)) => {
                zip_apply(&mut d[offset..end], s, |x, y| (x as f64 + alpha * y as f64).round() as i32)
            }
            (TensorSliceMut::I16(d), TensorSlice::I16(s)) => {
                zip_apply(&mut d[offset..end], s, |x, y| (x as f64 + alpha * y as f64).round() as i16)
            }
            (TensorSliceMut::I8(d), TensorSlice::I8(s)) => {
                zip_apply(&mut d[offset..end], s, |x, y| (x as f64 + alpha * y as f64).round() as i8)
            }
            (TensorSliceMut::U8(d), TensorSlice::U8(s)) => {
                zip_apply(&mut d[offset..end], s, |x, y| (x as f64 + alpha * y as f64).round() as u8)
            }
            (TensorSliceMut::Bool(d), TensorSlice::Bool(s)) => zip_apply(&mut d[offset..end], s, |x, y| {
                (x as u8 as f64 + alpha * y as u8 as f64).round() != 0.0
            }),
            (TensorSliceMut::Complex64(d), TensorSlice::Complex64(s)) => {
                zip_apply(&mut d[offset..end], s, |x, y| [x[0] + a32 * y[0], x[1] + a32 * y[1]])
            }
            _ => return Err(Error::Internal("dtype check let a mismatched pair through".into())),
        }
        Ok(())
    }
}
