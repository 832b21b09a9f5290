//! The tokio runtime a DHT object owns and every averager built on it shares.

use std::future::Future;
use std::sync::Arc;

use pyo3::prelude::*;

/// A runtime that never blocks the thread that drops it: Python may drop the last handle while
/// holding the GIL, and a task waiting for the GIL (a state-provider callback) would then
/// deadlock an ordinary blocking shutdown.
pub(crate) struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    /// A multi-threaded runtime with two workers: averaging is network- and memcpy-bound.
    pub(crate) fn new() -> PyResult<Arc<Self>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("averager")
            .enable_all()
            .build()
            .map_err(|e| {
                pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start a tokio runtime: {e}"))
            })?;
        Ok(Arc::new(Runtime(Some(rt))))
    }

    fn get(&self) -> &tokio::runtime::Runtime {
        // Only `Drop` takes the runtime out.
        self.0.as_ref().expect("runtime present until drop")
    }

    /// Runs `future` to completion on this runtime with the GIL released.
    pub(crate) fn block_on<F>(&self, py: Python<'_>, future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        py.allow_threads(|| self.get().block_on(future))
    }

    /// Spawns `future` on this runtime.
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.get().spawn(future);
    }

    /// A handle for code that needs to enter the runtime.
    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.get().handle()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
