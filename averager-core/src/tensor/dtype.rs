//! Element types and their wire names (protocol 2.1: `Tensor.dtype` is the original dtype's name).

use std::fmt;

use crate::error::{Error, Result};

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DType {
    /// IEEE 754 single precision, `"float32"`.
    F32,
    /// IEEE 754 double precision, `"float64"`.
    F64,
    /// IEEE 754 half precision, `"float16"`.
    F16,
    /// Brain floating point (8-bit exponent, 7-bit mantissa), `"bfloat16"`.
    BF16,
    /// Signed 64-bit integer, `"int64"`.
    I64,
    /// Signed 32-bit integer, `"int32"`.
    I32,
    /// Signed 16-bit integer, `"int16"`.
    I16,
    /// Signed 8-bit integer, `"int8"`.
    I8,
    /// Unsigned 8-bit integer, `"uint8"`.
    U8,
    /// Boolean stored as one byte (0 or 1), `"bool"`.
    Bool,
    /// A pair of f32 (real, imaginary), `"complex64"`.
    Complex64,
}

impl DType {
    /// Every dtype, in a fixed order (useful for tests that cover all of them).
    pub const ALL: [DType; 11] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U8,
        DType::Bool,
        DType::Complex64,
    ];

    /// The wire name (PyTorch's name without the `torch.` prefix).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
            DType::Complex64 => "complex64",
        }
    }

    /// Parses a wire name; unknown names are an [`Error::Tensor`].
    pub fn from_name(name: &str) -> Result<Self> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| Error::Tensor(format!("unknown dtype {name:?}")))
    }

    /// Bytes per element in memory and in the raw (NONE) wire format.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::Complex64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Bits per element (`bits(bool) = 8`, protocol 7.1); codecs use it for ratio estimates.
    pub fn bits(self) -> usize {
        self.size_bytes() * 8
    }

    /// Whether this is a real floating-point type (complex is not).
    pub fn is_floating(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// Whether values convert to f32 without losing the type's meaning (everything but complex).
    pub fn is_real(self) -> bool {
        self != DType::Complex64
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DType::from_name(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()).unwrap(), d);
        }
        assert!(DType::from_name("float8").is_err());
        assert_eq!(DType::Bool.bits(), 8);
    }
}
