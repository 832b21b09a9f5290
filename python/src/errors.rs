//! Rust errors as Python exceptions: bad arguments are `ValueError`, everything else an
//! `AveragerError` (a `RuntimeError`) carrying the Rust message.

use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};

create_exception!(
    averager,
    AveragerError,
    PyRuntimeError,
    "An averaging, DHT or transport failure reported by the Rust core."
);

/// The Python exception for a core error.
pub(crate) fn to_py(error: ::averager::Error) -> PyErr {
    use ::averager::Error;
    match error {
        Error::Config(msg) | Error::Tensor(msg) => PyValueError::new_err(msg),
        e @ Error::UnknownPlugin { .. } => PyValueError::new_err(e.to_string()),
        other => AveragerError::new_err(other.to_string()),
    }
}

/// Shorthand for mapping a core result.
pub(crate) trait IntoPy<T> {
    /// The result with its error as a Python exception.
    fn py_err(self) -> pyo3::PyResult<T>;
}

impl<T> IntoPy<T> for ::averager::Result<T> {
    fn py_err(self) -> pyo3::PyResult<T> {
        self.map_err(to_py)
    }
}
