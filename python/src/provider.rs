//! The state a donor serves comes from Python: the averager's `get_current_state()`, which a
//! subclass may override, is called (through `DecentralizedAverager._provide_state`) every time
//! a peer downloads this peer's state.

use ::averager::Error;
use ::averager::state::{StateProvider, StateSnapshot};
use async_trait::async_trait;
use pyo3::prelude::*;

use crate::buffers::{BufferSpec, UserBuffer};

/// Calls a Python function returning `(metadata_msgpack: bytes, [buffer spec, ...], keepalive)`.
pub(crate) struct PyStateProvider {
    callback: Py<PyAny>,
}

impl PyStateProvider {
    /// A provider calling `callback`.
    pub(crate) fn new(callback: Py<PyAny>) -> Self {
        PyStateProvider { callback }
    }

    fn snapshot(&self) -> Result<StateSnapshot, Error> {
        Python::with_gil(|py| {
            let fail = |e: PyErr| Error::Internal(format!("get_current_state failed: {e}"));
            let value = self.callback.call0(py).map_err(fail)?;
            // The third element keeps the buffers' owners alive until we return.
            let (metadata, specs, _keepalive): (Vec<u8>, Vec<BufferSpec>, Py<PyAny>) =
                value.extract(py).map_err(fail)?;
            let tensors = specs
                .iter()
                .map(|s| UserBuffer::parse(s).map(|(_, t)| t))
                .collect::<PyResult<Vec<_>>>()
                .map_err(fail)?;
            Ok(StateSnapshot::new(metadata, tensors))
        })
    }
}

#[async_trait]
impl StateProvider for PyStateProvider {
    async fn current_state(&self) -> ::averager::Result<StateSnapshot> {
        // The GIL may be held for a while by the user's threads: wait for it off the workers.
        tokio::task::block_in_place(|| self.snapshot())
    }
}
