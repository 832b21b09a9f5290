//! `averager.StepControl`'s engine: the core's step control, plus the task that writes the
//! averaged tensors back into the user's buffers when the all-reduce succeeds.

use std::sync::Arc;
use std::time::Duration;

use ::averager::{Error, Gathered, Stage, StepControl};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tokio::sync::watch;

use crate::averager::{CopyIn, Shared};
use crate::buffers::UserBuffer;

/// Each member's endpoint and msgpack gather bytes (`None`: it gathered nothing), in group order.
type Members = Vec<(String, Option<Vec<u8>>)>;

/// How a step ended, once the user's buffers hold its result.
#[derive(Clone)]
enum Outcome {
    /// The group's members and what they gathered.
    Done(Members),
    /// Cancelled by `cancel()`, Ctrl+C or shutdown.
    Cancelled(String),
    /// Failed (no group, all-reduce error, ...).
    Failed(String),
}

/// One step, running in the background.
#[pyclass(module = "averager._native", frozen)]
pub(crate) struct NativeControl {
    shared: Arc<Shared>,
    control: StepControl<Gathered>,
    buffers: Vec<UserBuffer>,
    outcome: watch::Receiver<Option<Outcome>>,
}

fn members(gathered: &Gathered) -> Result<Members, Error> {
    let decoded = gathered.decode::<rmpv::Value>()?;
    // Group order, as hivemind's dict.
    Ok(gathered
        .endpoints()
        .map(|e| {
            let bytes = decoded.get(e).cloned().flatten().map(|value| {
                let mut out = Vec::new();
                // Writing into a Vec cannot fail.
                let _ = rmpv::encode::write_value(&mut out, &value);
                out
            });
            (e.to_string(), bytes)
        })
        .collect())
}

impl NativeControl {
    /// Wraps a started step and spawns the task that finishes it.
    pub(crate) fn start(
        shared: Arc<Shared>,
        control: StepControl<Gathered>,
        copied: CopyIn,
        buffers: Vec<UserBuffer>,
        keepalive: Py<PyAny>,
    ) -> Self {
        let (tx, outcome) = watch::channel(None);
        let task_control = control.clone();
        let task_shared = Arc::clone(&shared);
        let task_buffers = buffers.clone();
        shared.runtime.spawn(async move {
            // Owns the Python objects whose memory `task_buffers` points into until the copy is done.
            let _keepalive = keepalive;
            // Checked before the step started, so a failed copy is a bug; still, the step must
            // not average what it did not read.
            let copy_failed = match copied.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("reading the tensors: {e}")),
                Err(_) => Some("reading the tensors: the runtime shut down".to_string()),
            };
            if let Some(reason) = copy_failed {
                task_control.cancel();
                let _ = task_control.result().await;
                let _ = tx.send(Some(Outcome::Failed(reason)));
                return;
            }
            let result = task_control.result().await.and_then(|g| members(&g));
            let outcome = match result {
                Ok(members) => match task_shared.copy_out(&task_buffers).await {
                    Ok(()) => Outcome::Done(members),
                    Err(e) => Outcome::Failed(format!("writing the averaged tensors back: {e}")),
                },
                Err(Error::Cancelled(msg)) => Outcome::Cancelled(msg),
                Err(e) => Outcome::Failed(e.to_string()),
            };
            let _ = tx.send(Some(outcome));
        });
        NativeControl { shared, control, buffers, outcome }
    }
}

#[pymethods]
impl NativeControl {
    /// The stage number (hivemind's `AveragingStage` values).
    #[getter]
    fn stage(&self) -> u8 {
        self.control.stage() as u8
    }

    /// Whether the step is over and its result is in the user's buffers.
    fn done(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    /// Waits up to `timeout` seconds (GIL released) for the step to end; whether it did.
    fn wait(&self, py: Python<'_>, timeout: f64) -> bool {
        let mut rx = self.outcome.clone();
        let limit = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
        self.shared.runtime.block_on(py, async move {
            tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await.is_ok()
        })
    }

    /// `None` while running, else `("done", {endpoint: msgpack bytes or None})`,
    /// `("cancelled", message)` or `("failed", message)`.
    fn outcome(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let outcome = self.outcome.borrow().clone();
        let value = match outcome {
            None => return Ok(None),
            Some(Outcome::Done(members)) => {
                let dict = PyDict::new(py);
                for (endpoint, bytes) in members {
                    dict.set_item(endpoint, bytes.map(|b| PyBytes::new(py, &b)))?;
                }
                ("done", dict).into_pyobject(py)?.into_any()
            }
            Some(Outcome::Cancelled(msg)) => ("cancelled", msg).into_pyobject(py)?.into_any(),
            Some(Outcome::Failed(msg)) => ("failed", msg).into_pyobject(py)?.into_any(),
        };
        Ok(Some(value.unbind()))
    }

    /// Lets a `require_trigger` step run its all-reduce, after re-reading the user's buffers
    /// (hivemind's all-reduce reads the tensors when it starts, not when the step is called).
    fn allow_allreduce(&self, py: Python<'_>) -> PyResult<()> {
        if self.control.require_trigger()
            && !self.control.triggered()
            && self.control.stage() < Stage::RunningAllreduce
        {
            let shared = Arc::clone(&self.shared);
            let buffers = self.buffers.clone();
            self.shared.runtime.block_on(py, async move { shared.copy_in(&buffers).await })?;
        }
        self.control.allow_allreduce();
        Ok(())
    }

    /// Cancels the step unless its all-reduce already began; whether it was cancelled.
    fn cancel(&self) -> bool {
        self.control.cancel()
    }

    /// Whether `cancel()` took effect.
    fn cancelled(&self) -> bool {
        self.control.cancelled()
    }

    /// Whether the step waits for `allow_allreduce()`.
    #[getter]
    fn triggered(&self) -> bool {
        self.control.triggered()
    }

    /// The step's scheduled time (DHT time).
    #[getter]
    fn scheduled_time(&self) -> f64 {
        self.control.scheduled_time()
    }

    /// The step's weight.
    #[getter]
    fn weight(&self) -> f64 {
        self.control.weight()
    }
}
