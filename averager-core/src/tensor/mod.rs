//! The tensor type: a shape, a dtype and typed row-major data.
//!
//! [`Tensor`] owns its elements; [`TensorView`] borrows a tensor or a flat run of one (a *part*,
//! protocol 4.3), so codecs encode straight from the tensor's memory without copying it per peer.

mod data;
mod dtype;
mod slice_mut;

use std::borrow::Cow;
use std::ops::Range;

pub use data::{TensorData, TensorSlice};
pub use dtype::DType;
use half::{bf16, f16};
pub use slice_mut::TensorSliceMut;

use crate::error::{Error, Result};

/// Number of elements of a shape, or an error when it overflows `usize`.
pub fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Tensor(format!("shape {shape:?} has more elements than fit in memory")))
}

/// An owned n-dimensional tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
    requires_grad: bool,
}

macro_rules! typed_access {
    ($($from:ident, $as:ident, $as_mut:ident, $variant:ident, $t:ty);* $(;)?) => {$(
        #[doc = concat!("A `", stringify!($t), "` tensor of `shape` from row-major `values`.")]
        ///
        /// # Errors
        /// [`Error::Tensor`] when the number of values does not match the shape.
        pub fn $from(shape: Vec<usize>, values: Vec<$t>) -> Result<Self> {
            Self::new(shape, TensorData::$variant(values))
        }

        #[doc = concat!("The elements as `", stringify!($t), "`, or an error for another dtype.")]
        pub fn $as(&self) -> Result<&[$t]> {
            match &self.data {
                TensorData::$variant(v) => Ok(v),
                other => Err(Error::Tensor(format!(
                    "tensor is {}, not {}", other.dtype(), DType::$variant
                ))),
            }
        }

        #[doc = concat!("The elements as mutable `", stringify!($t), "`, or an error for another dtype.")]
        pub fn $as_mut(&mut self) -> Result<&mut [$t]> {
            match &mut self.data {
                TensorData::$variant(v) => Ok(v),
                other => Err(Error::Tensor(format!(
                    "tensor is {}, not {}", other.dtype(), DType::$variant
                ))),
            }
        }
    )*};
}

impl Tensor {
    /// A tensor of `shape` holding `data` (row-major).
    ///
    /// # Errors
    /// [`Error::Tensor`] when the number of elements does not match the shape.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self> {
        let n = numel(&shape)?;
        if n != data.len() {
            return Err(Error::Tensor(format!("shape {shape:?} needs {n} elements, got {}", data.len())));
        }
        Ok(Tensor { shape, data, requires_grad: false })
    }

    /// A zero-filled tensor.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the shape's element count overflows.
    pub fn zeros(shape: Vec<usize>, dtype: DType) -> Result<Self> {
        let n = numel(&shape)?;
        Ok(Tensor { shape, data: TensorData::zeros(dtype, n), requires_grad: false })
    }

    typed_access! {
        from_f32, as_f32, as_f32_mut, F32, f32;
        from_f64, as_f64, as_f64_mut, F64, f64;
        from_f16, as_f16, as_f16_mut, F16, f16;
        from_bf16, as_bf16, as_bf16_mut, BF16, bf16;
        from_i64, as_i64, as_i64_mut, I64, i64;
        from_i32, as_i32, as_i32_mut, I32, i32;
        from_u8, as_u8, as_u8_mut, U8, u8;
        from_bool, as_bool, as_bool_mut, Bool, bool;
    }

    /// Sets whether the tensor requires gradients (carried on the wire, not used by averaging).
    pub fn with_requires_grad(mut self, requires_grad: bool) -> Self {
        self.requires_grad = requires_grad;
        self
    }

    /// The shape; empty for a 0-d tensor.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Number of elements (1 for a 0-d tensor).
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor requires gradients.
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    /// The elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The elements for writing in place (their count and dtype cannot change through it).
    pub fn as_slice_mut(&mut self) -> TensorSliceMut<'_> {
        self.data.as_slice_mut()
    }

    /// The elements, mutably (the shape cannot change through this).
    pub fn data_mut(&mut self) -> TensorDataMut<'_> {
        TensorDataMut(&mut self.data)
    }

    /// Consumes the tensor, returning its shape and elements.
    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    /// A view of the whole tensor.
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            shape: Cow::Borrowed(&self.shape),
            data: self.data.as_slice(),
            requires_grad: self.requires_grad,
        }
    }

    /// A flat view of elements `range` of the flattened tensor (shape `[range.len()]`).
    ///
    /// # Errors
    /// [`Error::Tensor`] when the range is out of bounds.
    pub fn flat_view(&self, range: Range<usize>) -> Result<TensorView<'_>> {
        let len = range.len();
        Ok(TensorView {
            shape: Cow::Owned(vec![len]),
            data: self.data.as_slice().slice(range)?,
            requires_grad: self.requires_grad,
        })
    }

    /// The same elements under another shape with the same element count.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the counts differ.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self> {
        let requires_grad = self.requires_grad;
        Ok(Tensor::new(shape, self.data)?.with_requires_grad(requires_grad))
    }
}

/// Mutable access to a tensor's elements that cannot change their count or dtype.
#[derive(Debug)]
pub struct TensorDataMut<'a>(&'a mut TensorData);

impl TensorDataMut<'_> {
    /// Replaces the elements with `data` of the same dtype and length.
    ///
    /// # Errors
    /// [`Error::Tensor`] when dtype or length differ.
    pub fn replace(&mut self, data: TensorData) -> Result<()> {
        if data.dtype() != self.0.dtype() || data.len() != self.0.len() {
            return Err(Error::Tensor(format!(
                "cannot replace {} x {} with {} x {}",
                self.0.len(),
                self.0.dtype(),
                data.len(),
                data.dtype()
            )));
        }
        *self.0 = data;
        Ok(())
    }

    /// `self[offset..offset + delta.len()] += alpha * delta` (see [`TensorData::add_scaled_at`]).
    ///
    /// # Errors
    /// [`Error::Tensor`] when the dtypes differ or the range is out of bounds.
    pub fn add_scaled_at(&mut self, offset: usize, delta: TensorSlice<'_>, alpha: f64) -> Result<()> {
        self.0.add_scaled_at(offset, delta, alpha)
    }

    /// The elements (read-only).
    pub fn get(&self) -> &TensorData {
        self.0
    }
}

/// A borrowed tensor, or a flat part of one: what codecs encode and reducers read.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorView<'a> {
    shape: Cow<'a, [usize]>,
    data: TensorSlice<'a>,
    requires_grad: bool,
}

impl<'a> TensorView<'a> {
    /// A view of `data` under `shape`.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the element count does not match the shape.
    pub fn new(shape: impl Into<Cow<'a, [usize]>>, data: TensorSlice<'a>) -> Result<Self> {
        let shape = shape.into();
        if numel(&shape)? != data.len() {
            return Err(Error::Tensor(format!(
                "shape {:?} needs {} elements, got {}",
                shape,
                numel(&shape)?,
                data.len()
            )));
        }
        Ok(TensorView { shape, data, requires_grad: false })
    }

    /// Sets the `requires_grad` flag carried by the view.
    pub fn with_requires_grad(mut self, requires_grad: bool) -> Self {
        self.requires_grad = requires_grad;
        self
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Whether the viewed tensor requires gradients.
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    /// The elements.
    pub fn data(&self) -> TensorSlice<'a> {
        self.data
    }

    /// Copies the view into an owned tensor.
    pub fn to_tensor(&self) -> Tensor {
        Tensor { shape: self.shape.to_vec(), data: self.data.to_owned(), requires_grad: self.requires_grad }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_checks_the_shape() {
        assert!(Tensor::from_f32(vec![2, 3], vec![0.0; 6]).is_ok());
        assert!(Tensor::from_f32(vec![2, 3], vec![0.0; 5]).is_err());
        let scalar = Tensor::from_f32(vec![], vec![4.0]).unwrap();
        assert_eq!(scalar.numel(), 1);
        let empty = Tensor::zeros(vec![1, 0], DType::F16).unwrap();
        assert_eq!(empty.numel(), 0);
        assert!(numel(&[usize::MAX, 2]).is_err());
    }

    #[test]
    fn typed_access_refuses_other_dtypes() {
        let mut t = Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap();
        t.as_f32_mut().unwrap()[0] = 5.0;
        assert_eq!(t.as_f32().unwrap(), &[5.0, 2.0]);
        assert!(t.as_f64().is_err());
        let part = t.flat_view(1..2).unwrap();
        assert_eq!(part.shape(), &[1]);
        assert_eq!(part.data(), TensorSlice::F32(&[2.0]));
        assert!(t.flat_view(1..3).is_err());
        assert!(t.data_mut().replace(TensorData::F32(vec![1.0])).is_err());
    }
}
