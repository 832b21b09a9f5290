//! The tensors one all-reduce reads: the averager's own, taken from it for the round, or memory
//! lent from outside it ([`LentTensors`]), which the update is then written into in place.

use std::ops::Range;

use crate::averager::LentTensors;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, TensorSliceMut, TensorView};

/// This peer's inputs to one all-reduce.
pub(crate) enum RoundTensors {
    /// The averager's own tensors, given back when the round is over.
    Owned(Vec<Tensor>),
    /// Memory lent for the round by the step's [`InputLender`](crate::averager::InputLender).
    Lent(Box<dyn LentTensors>),
}

impl std::fmt::Debug for RoundTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundTensors::Owned(tensors) => write!(f, "Owned({} tensors)", tensors.len()),
            RoundTensors::Lent(lent) => write!(f, "Lent({} tensors)", lent.count()),
        }
    }
}

impl From<Vec<Tensor>> for RoundTensors {
    fn from(tensors: Vec<Tensor>) -> Self {
        RoundTensors::Owned(tensors)
    }
}

impl RoundTensors {
    /// How many tensors there are.
    pub(crate) fn len(&self) -> usize {
        match self {
            RoundTensors::Owned(tensors) => tensors.len(),
            RoundTensors::Lent(lent) => lent.count(),
        }
    }

    /// Tensor `index`, shaped; `None` out of range.
    pub(crate) fn get(&self, index: usize) -> Option<TensorView<'_>> {
        match self {
            RoundTensors::Owned(tensors) => tensors.get(index).map(Tensor::view),
            RoundTensors::Lent(lent) => lent.view(index),
        }
    }

    /// Tensor `index`, shaped.
    ///
    /// # Errors
    /// [`Error::Tensor`] out of range.
    pub(crate) fn view(&self, index: usize) -> Result<TensorView<'_>> {
        self.get(index).ok_or_else(|| Error::Tensor(format!("no tensor {index} among {}", self.len())))
    }

    /// The flat `range` of tensor `index`, as a 1-D view.
    ///
    /// # Errors
    /// [`Error::Tensor`] when the tensor does not exist or does not hold the range.
    pub(crate) fn flat_view(&self, index: usize, range: Range<usize>) -> Result<TensorView<'_>> {
        match self {
            RoundTensors::Owned(tensors) => tensors
                .get(index)
                .ok_or_else(|| Error::Tensor(format!("no tensor {index} among {}", tensors.len())))?
                .flat_view(range),
            RoundTensors::Lent(_) => {
                let len = range.len();
                TensorView::new(vec![len], self.view(index)?.data().slice(range)?)
            }
        }
    }

    /// Every tensor's dtype, in order.
    pub(crate) fn dtypes(&self) -> Vec<DType> {
        (0..self.len()).filter_map(|i| self.get(i).map(|v| v.dtype())).collect()
    }

    /// A copy of the tensors (for a state download while the round runs).
    pub(crate) fn to_vec(&self) -> Vec<Tensor> {
        match self {
            RoundTensors::Owned(tensors) => tensors.clone(),
            RoundTensors::Lent(lent) => {
                (0..lent.count()).filter_map(|i| lent.view(i)).map(|v| v.to_tensor()).collect()
            }
        }
    }
}

/// Tensors a step's update can be written into: the averager's own or lent ones.
pub(crate) trait UpdateTensors {
    /// The dtype of tensor `index`, if it exists.
    fn dtype_of(&self, index: usize) -> Option<DType>;

    /// Tensor `index`'s elements for writing, if it exists.
    fn slice_mut(&mut self, index: usize) -> Option<TensorSliceMut<'_>>;
}

impl UpdateTensors for [Tensor] {
    fn dtype_of(&self, index: usize) -> Option<DType> {
        self.get(index).map(Tensor::dtype)
    }

    fn slice_mut(&mut self, index: usize) -> Option<TensorSliceMut<'_>> {
        self.get_mut(index).map(Tensor::as_slice_mut)
    }
}

impl UpdateTensors for Vec<Tensor> {
    fn dtype_of(&self, index: usize) -> Option<DType> {
        self.as_slice().dtype_of(index)
    }

    fn slice_mut(&mut self, index: usize) -> Option<TensorSliceMut<'_>> {
        self.as_mut_slice().slice_mut(index)
    }
}

impl UpdateTensors for dyn LentTensors {
    fn dtype_of(&self, index: usize) -> Option<DType> {
        self.view(index).map(|v| v.dtype())
    }

    fn slice_mut(&mut self, index: usize) -> Option<TensorSliceMut<'_>> {
        LentTensors::slice_mut(self, index)
    }
}
