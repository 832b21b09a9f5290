//! protocol 7.1: what a codec is told about the tensor it encodes.

use serde::{Deserialize, Serialize};

use crate::tensor::{DType, TensorView};

/// What a tensor is for; role-adaptive codecs choose by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorRole {
    /// Activations.
    Activation,
    /// Model parameters.
    Parameter,
    /// Gradients.
    Gradient,
    /// Optimizer statistics.
    Optimizer,
    /// No role given (the default).
    #[default]
    Unspecified,
}

/// Identifies a tensor for per-tensor codec selection: its index by default, or a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TensorKey {
    /// Position in the averaged tensor list.
    Index(usize),
    /// A user-chosen name.
    Name(String),
}

impl Default for TensorKey {
    fn default() -> Self {
        TensorKey::Index(0)
    }
}

/// Shape, dtype and gradient flag of a WHOLE tensor (also when a part is being encoded).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TensorDescriptor {
    /// The whole tensor's shape.
    pub shape: Vec<usize>,
    /// The element type; `None` only in a default-constructed descriptor.
    #[serde(with = "dtype_name")]
    pub dtype: Option<DType>,
    /// Whether the tensor requires gradients.
    pub requires_grad: bool,
}

impl TensorDescriptor {
    /// Describes `tensor`.
    pub fn of(tensor: &TensorView<'_>) -> Self {
        TensorDescriptor {
            shape: tensor.shape().to_vec(),
            dtype: Some(tensor.dtype()),
            requires_grad: tensor.requires_grad(),
        }
    }

    /// Number of elements, saturating on overflow.
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }
}

/// What a codec is told about the tensor (or part) it encodes (protocol 7.1).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CompressionInfo {
    /// The tensor's key: its index unless the user named it.
    pub key: TensorKey,
    /// The WHOLE tensor's descriptor.
    pub descriptor: TensorDescriptor,
    /// The tensor's role.
    pub role: TensorRole,
    /// For a part: its index within the tensor.
    pub part_index: usize,
    /// For a part: the maximum number of elements per part; `None` for a whole tensor.
    pub part_size: Option<usize>,
}

impl CompressionInfo {
    /// The default info of tensor number `index`: key = index, role unspecified.
    pub fn for_tensor(index: usize, tensor: &TensorView<'_>) -> Self {
        CompressionInfo {
            key: TensorKey::Index(index),
            descriptor: TensorDescriptor::of(tensor),
            ..Default::default()
        }
    }

    /// The same info with a role.
    pub fn with_role(mut self, role: TensorRole) -> Self {
        self.role = role;
        self
    }

    /// The info of part `part_index` (of at most `part_size` elements) of this tensor.
    pub fn for_part(&self, part_index: usize, part_size: usize) -> Self {
        CompressionInfo { part_index, part_size: Some(part_size), ..self.clone() }
    }
}

mod dtype_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::tensor::DType;

    pub(super) fn serialize<S: Serializer>(d: &Option<DType>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(d.name()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DType>, D::Error> {
        let name: Option<String> = Option::deserialize(d)?;
        name.map(|n| DType::from_name(&n).map_err(serde::de::Error::custom)).transpose()
    }
}
