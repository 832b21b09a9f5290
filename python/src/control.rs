//! `averager.StepControl`'s engine: the core's step control, plus the task that reports the
//! step's end once the core has written its result into the user's buffers (`target.rs`) and
//! releases the averager's tensors to the next step.

use std::sync::{Arc, Weak};
use std::time::Duration;

use ::averager::{Error, Gathered, Stage, StepControl};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tokio::sync::{oneshot, watch};

use crate::averager::{CopyIn, Shared};
use crate::buffers::{self, UserBuffer};
use crate::queue::{Inputs, Released, SharedInputs};
use crate::timings::Timings;

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
    inputs: SharedInputs,
    outcome: watch::Receiver<Option<Outcome>>,
    timings: Arc<Timings>,
}

/// What `NativeAverager::step` hands over to the task that finishes a step.
pub(crate) struct Step {
    /// The core's step.
    pub(crate) control: StepControl<Gathered>,
    /// The copy of the user's buffers into the step's inputs.
    pub(crate) copied: CopyIn,
    /// The user's buffers, written with the result.
    pub(crate) buffers: Vec<UserBuffer>,
    /// Where the step's inputs are.
    pub(crate) inputs: SharedInputs,
    /// Resolves (or fails) once the step's turn in the queue is over.
    pub(crate) turn_passed: oneshot::Receiver<()>,
    /// Set once the step no longer needs the averager's tensors.
    pub(crate) released: Released,
    /// Its phases' times.
    pub(crate) timings: Arc<Timings>,
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

/// Runs a started step to its end: checks its copy in (if it had one), waits for the core's
/// result (already in the user's buffers: written there in place, or by the step's target),
/// reports the outcome and releases the averager's tensors to the next step.
async fn finish(shared: Weak<Shared>, step: Step, tx: watch::Sender<Option<Outcome>>) {
    let Step { control, copied, turn_passed, released, timings, inputs, .. } = step;
    // Checked before the step started, so a failed copy is a bug; still, the step must not
    // average what it did not read.
    let copy_failed = match copied.await {
        Ok(Ok(took)) => {
            timings.update(|t| t.copy_in = took);
            None
        }
        Ok(Err(e)) => Some(format!("reading the tensors: {e}")),
        Err(_) => Some("reading the tensors: the runtime shut down".to_string()),
    };
    let outcome = if let Some(reason) = copy_failed {
        control.cancel();
        let _ = control.result().await;
        Outcome::Failed(reason)
    } else {
        let result = control.result().await;
        timings.update(|t| t.core_done = t.started.elapsed());
        if let Ok(gathered) = &result {
            timings.report(gathered.report());
        }
        match result.and_then(|g| members(&g)) {
            Ok(members) => Outcome::Done(members),
            Err(Error::Cancelled(msg)) => Outcome::Cancelled(msg),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    };
    timings.update(|t| t.finished = t.started.elapsed());
    // Its inputs need no copy any more when `get_tensors()` is called after it.
    if let Some(shared) = shared.upgrade() {
        shared.forget_unread(&inputs);
    }
    let _ = tx.send(Some(outcome));
    // A step cancelled before its turn still waits for it to pass (or be dropped), so that its
    // staged inputs cannot land in the averager's tensors after the next step's.
    let _ = turn_passed.await;
    released.send_replace(true);
}

impl NativeControl {
    /// Wraps a started step and spawns the task that finishes it.
    pub(crate) fn start(shared: Arc<Shared>, step: Step, keepalive: Py<PyAny>) -> Self {
        let (tx, outcome) = watch::channel(None);
        let (control, buffers, inputs, timings) =
            (step.control.clone(), step.buffers.clone(), Arc::clone(&step.inputs), Arc::clone(&step.timings));
        let shared_for_task = Arc::downgrade(&shared);
        shared.runtime.spawn(async move {
            // Owns the Python objects whose memory the buffers point into until the step is
            // over: the core writes its result into them before it reports the step's end.
            let _keepalive = keepalive;
            finish(shared_for_task, step, tx).await;
        });
        NativeControl { shared, control, buffers, inputs, outcome, timings }
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
            let inputs = Arc::clone(&self.inputs);
            self.shared.runtime.block_on(py, async move {
                // Before its turn, the step's inputs are its own snapshot; after, the averager's
                // tensors (which no other step uses until this one releases them).
                let mut slot = inputs.lock().await;
                match &mut *slot {
                    Inputs::Staged(staged) => {
                        let _user = shared.user_lock.lock().await;
                        buffers::copy_all_in(&buffers, staged)
                    }
                    Inputs::InCore => shared.copy_in(&buffers).await,
                    // Read when the all-reduce begins, which is after this trigger.
                    Inputs::Unread => Ok(()),
                }
            })?;
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

    /// Where the step's time went: `{phase: seconds}` (`bench/step_overhead.py` reads it).
    fn timings(&self) -> Vec<(&'static str, f64)> {
        self.timings.seconds()
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
