//! `averager.DecentralizedAverager`'s engine: an [`Averager`] on the gRPC transport and the DHT's
//! Kademlia node, plus the lock that `get_tensors()` and the copies to and from the user's
//! buffers share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::averager::grpc::GrpcTransport;
use ::averager::{Averager, AveragerConfig, Dht, Registry, StepOptions, Transport};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use tokio::sync::{OwnedMutexGuard, oneshot};

use crate::buffers::{self, BufferSpec, UserBuffer, bytes_of};
use crate::control::{NativeControl, Step};
use crate::dht::NativeDht;
use crate::errors::IntoPy;
use crate::lender::{self, Readers, Unread, UserLender};
use crate::provider::PyStateProvider;
use crate::queue::{self, Inputs, SharedInputs, StepQueue};
use crate::runtime::Runtime;
use crate::target::UserTarget;
use crate::timings::Timings;

/// What steps and `get_tensors()` share.
pub(crate) struct Shared {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) averager: Averager,
    /// Taken by `get_tensors()` and by every copy between the user's buffers and the averager's
    /// tensors, always before the averager's own tensor lock.
    pub(crate) user_lock: Arc<tokio::sync::Mutex<()>>,
    /// The user's buffers the averager was built from: every step's buffers must match them.
    pub(crate) built: Vec<UserBuffer>,
    /// Their shapes, for snapshots of a queued step's inputs.
    pub(crate) shapes: Vec<Vec<usize>>,
    /// The order in which steps use the averager's tensors.
    pub(crate) queue: StepQueue,
    /// The step at the head of the queue while its inputs are unread (`lender.rs`).
    pub(crate) unread: Mutex<Option<Arc<Unread>>>,
    /// The buffers a running all-reduce reads in place, for state downloads (`lender.rs`).
    pub(crate) lent: Mutex<Option<Arc<Readers>>>,
}

/// The result of a copy of the user's buffers that runs in the background: how long the memcpy
/// took.
pub(crate) type CopyIn = oneshot::Receiver<PyResult<Duration>>;

impl Shared {
    /// Copies the user's buffers into the averager's tensors under both locks.
    pub(crate) async fn copy_in(&self, buffers: &[UserBuffer]) -> PyResult<()> {
        let _user = self.user_lock.lock().await;
        let mut tensors = self.averager.tensors().await;
        buffers::copy_all_in(buffers, &mut tensors)
    }

    /// Forgets the unread inputs of the step whose inputs slot is `inputs` (it is over).
    pub(crate) fn forget_unread(&self, inputs: &SharedInputs) {
        let mut unread = self.unread.lock().unwrap_or_else(PoisonError::into_inner);
        if unread.as_ref().is_some_and(|u| Arc::ptr_eq(&u.inputs, inputs)) {
            *unread = None;
        }
    }

    /// Starts copying the user's buffers into a queued step's own snapshot on a runtime thread
    /// and returns once the copy holds its locks, so a write through `get_tensors()` waits for
    /// it; the step's turn moves the snapshot into the averager's tensors. The copy task owns
    /// `keepalive`, the Python objects whose memory `buffers` point into.
    pub(crate) async fn start_copy_in(
        self: &Arc<Self>,
        buffers: Vec<UserBuffer>,
        inputs: SharedInputs,
        keepalive: Py<PyAny>,
    ) -> CopyIn {
        let (locked_tx, locked) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            let _keepalive = keepalive;
            let mut slot = inputs.lock().await;
            let _user = shared.user_lock.lock().await;
            let _ = locked_tx.send(());
            // A memcpy of up to gigabytes: off the worker, so the step's tasks keep running.
            let copied = tokio::task::block_in_place(|| {
                let started = Instant::now();
                let staged = buffers::snapshot(&buffers, &shared.shapes)?;
                *slot = Inputs::Staged(staged);
                Ok(started.elapsed())
            });
            let _ = done_tx.send(copied);
        });
        // The task only ends without sending when the runtime shuts down; the step then fails.
        let _ = locked.await;
        done
    }
}

/// A running averager.
#[pyclass(module = "averager._native", frozen)]
pub(crate) struct NativeAverager {
    shared: Arc<Shared>,
    /// The guard `lock_tensors()` took, released by `unlock_tensors()`.
    held: Mutex<Option<OwnedMutexGuard<()>>>,
}

fn secs(value: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| PyValueError::new_err(format!("{what} must be a finite number >= 0, got {s}")))
        })
        .transpose()
}

#[pymethods]
impl NativeAverager {
    /// Starts an averager over `specs` (the user's buffers) with `config_json` (every
    /// `AveragerConfig` key), serving gRPC on `listen` (`host:port`).
    #[new]
    #[pyo3(signature = (dht, specs, config_json, listen, provider=None))]
    fn new(
        py: Python<'_>,
        dht: &NativeDht,
        specs: Vec<BufferSpec>,
        config_json: &str,
        listen: &str,
        provider: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let mut config: AveragerConfig = serde_json::from_str(config_json)
            .map_err(|e| PyValueError::new_err(format!("bad argument: {e}")))?;
        if config.client_mode.is_none() {
            config.client_mode = Some(dht.client_mode);
        }
        config.validate().py_err()?;
        let listen: SocketAddr = listen
            .parse()
            .map_err(|e| PyValueError::new_err(format!("listen address {listen:?} is not host:port: {e}")))?;
        let (built, tensors) = buffers::parse_all(&specs)?;
        let node: Arc<dyn Dht> = dht.node.clone();
        let runtime = Arc::clone(&dht.runtime);
        let provider = provider.map(|p| Arc::new(PyStateProvider::new(p)) as _);
        let averager = runtime.block_on(py, async move {
            let transport: Arc<dyn Transport> = Arc::new(GrpcTransport::bind(listen));
            Averager::with_provider(tensors, node, transport, config, provider, Registry::global()).await
        });
        let averager = averager.py_err()?;
        let user_lock = Arc::new(tokio::sync::Mutex::new(()));
        let shapes = specs.iter().map(|s| s.3.clone()).collect();
        let queue = StepQueue::default();
        let shared = Arc::new(Shared {
            runtime,
            averager,
            user_lock,
            built,
            shapes,
            queue,
            unread: Mutex::new(None),
            lent: Mutex::new(None),
        });
        Ok(NativeAverager { shared, held: Mutex::new(None) })
    }

    /// The endpoint this averager is reached at: the key `step()` results use for it.
    #[getter]
    fn endpoint(&self) -> String {
        self.shared.averager.endpoint().to_string()
    }

    /// `"node"`, `"client"` or `"aux"`.
    #[getter]
    fn mode(&self) -> String {
        format!("{:?}", self.shared.averager.mode()).to_lowercase()
    }

    /// Starts one step; its buffers are re-read now, while matchmaking begins (and again at
    /// `allow_allreduce()` when the step waits for a trigger), and written by the core when the
    /// all-reduce succeeds (`target.rs`), before the step reports done.
    #[pyo3(signature = (specs, keepalive, gather, scheduled_time, weight, timeout, allow_retries, require_trigger))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        py: Python<'_>,
        specs: Vec<BufferSpec>,
        keepalive: Py<PyAny>,
        gather: Option<Vec<u8>>,
        scheduled_time: Option<f64>,
        weight: Option<f64>,
        timeout: Option<f64>,
        allow_retries: bool,
        require_trigger: bool,
    ) -> PyResult<NativeControl> {
        let timings = Arc::new(Timings::start());
        let buffers = specs.iter().map(UserBuffer::new).collect::<PyResult<Vec<_>>>()?;
        buffers::check_all_like(&buffers, &self.shared.built)?;
        let target = UserTarget::new(&self.shared, buffers.clone(), Arc::clone(&timings));
        let mut options = StepOptions::default()
            .allow_retries(allow_retries)
            .require_trigger(require_trigger)
            .apply_to(Arc::new(target));
        if let Some(bytes) = gather {
            let value = rmpv::decode::read_value(&mut bytes.as_slice())
                .map_err(|e| PyValueError::new_err(format!("gather is not msgpack: {e}")))?;
            options = options.gather(&value);
        }
        if let Some(t) = scheduled_time {
            options = options.scheduled_time(t);
        }
        if let Some(w) = weight {
            options = options.weight(w);
        }
        if let Some(t) = secs(timeout, "timeout")? {
            options = options.timeout(t);
        }
        let place = self.shared.queue.join();
        // At the head of the queue, the all-reduce reads the user's buffers in place (unless
        // they are written before it begins, `lender.rs`); behind an earlier step still holding
        // the averager's tensors, this step's inputs are snapshotted now and moved in at its turn.
        let in_place = place.previous.is_none();
        let inputs: SharedInputs = Arc::new(tokio::sync::Mutex::new(if in_place {
            Inputs::Unread
        } else {
            Inputs::Staged(Vec::new())
        }));
        if in_place {
            options = options.lend_inputs(Arc::new(UserLender {
                shared: Arc::downgrade(&self.shared),
                inputs: Arc::clone(&inputs),
                buffers: buffers.clone(),
                shapes: self.shared.shapes.clone(),
                keepalive: Arc::new(keepalive.clone_ref(py)),
                timings: Arc::clone(&timings),
            }));
            let unread = Unread {
                inputs: Arc::clone(&inputs),
                buffers: buffers.clone(),
                _keepalive: keepalive.clone_ref(py),
            };
            *self.shared.unread.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(unread));
        }
        let shared = Arc::clone(&self.shared);
        let copy_keepalive = keepalive.clone_ref(py);
        let (passed_tx, passed) = oneshot::channel();
        let (copied, started) = self.shared.runtime.block_on(py, {
            let (buffers, inputs, timings) = (buffers.clone(), Arc::clone(&inputs), Arc::clone(&timings));
            async move {
                let copied = if in_place {
                    let (done, copied) = oneshot::channel();
                    let _ = done.send(Ok(Duration::ZERO));
                    copied
                } else {
                    shared.start_copy_in(buffers, Arc::clone(&inputs), copy_keepalive).await
                };
                let turn = queue::turn(Arc::downgrade(&shared), place.previous, inputs, passed_tx);
                let started = shared.averager.step_background_after(options, turn).await;
                timings.update(|t| t.core_started = t.started.elapsed());
                (copied, started)
            }
        });
        // A step that did not start still lets the copy finish (it holds its own keepalive), and
        // drops its release signal, so later steps do not wait for it; its unread inputs (and
        // the objects they keep alive) are forgotten.
        if started.is_err() {
            self.shared.forget_unread(&inputs);
        }
        let started = started.py_err()?;
        let step = Step {
            control: started,
            copied,
            buffers,
            inputs,
            turn_passed: passed,
            released: place.released,
            timings,
        };
        Ok(NativeControl::start(Arc::clone(&self.shared), step, keepalive))
    }

    /// The core's own step on the tensors the averager holds, without any copy to or from the
    /// user's buffers: the reference the step-overhead benchmark compares `step()` with, run on
    /// the same peers. Returns `(ok, seconds, matchmaking seconds, all-reduce seconds)`.
    #[pyo3(signature = (timeout))]
    fn bench_core_step(&self, py: Python<'_>, timeout: f64) -> PyResult<(bool, f64, f64, f64)> {
        let timeout = secs(Some(timeout), "timeout")?.unwrap_or_default();
        let shared = Arc::clone(&self.shared);
        let (result, seconds) = self.shared.runtime.block_on(py, async move {
            let started = Instant::now();
            let result = shared.averager.step(StepOptions::default().timeout(timeout)).await;
            (result, started.elapsed().as_secs_f64())
        });
        Ok(match result {
            Ok(gathered) => {
                let report = gathered.report();
                (true, seconds, report.matchmaking.as_secs_f64(), report.all_reduce.as_secs_f64())
            }
            Err(_) => (false, seconds, 0.0, 0.0),
        })
    }

    /// Waits for (and takes) the lock `get_tensors()` holds.
    fn lock_tensors(&self, py: Python<'_>) -> PyResult<()> {
        let shared = Arc::clone(&self.shared);
        let guard = self.shared.runtime.block_on(py, async move {
            // A step whose inputs are still unread must not see what the user writes now.
            let unread = shared.unread.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if let Some(unread) = unread {
                lender::materialize(&shared, &unread).await?;
            }
            Ok::<_, PyErr>(Arc::clone(&shared.user_lock).lock_owned().await)
        })?;
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard);
        Ok(())
    }

    /// Copies the tensors a running all-reduce reads in place into `specs` (fresh buffers like
    /// them) without waiting for its result; `false` when no all-reduce has them or its update
    /// has begun (then `get_tensors()` is the way, once the result is in).
    fn copy_lent(&self, py: Python<'_>, specs: Vec<BufferSpec>) -> PyResult<bool> {
        let into = specs.iter().map(UserBuffer::new).collect::<PyResult<Vec<_>>>()?;
        let readers = self.shared.lent.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match readers {
            Some(readers) => py.allow_threads(|| readers.copy_to(&into)),
            None => Ok(false),
        }
    }

    /// Releases the lock `lock_tensors()` took.
    fn unlock_tensors(&self) {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    /// The current group bits.
    fn get_group_bits(&self, py: Python<'_>) -> String {
        let shared = Arc::clone(&self.shared);
        self.shared.runtime.block_on(py, async move { shared.averager.group_bits().await })
    }

    /// Replaces the group bits.
    fn set_group_bits(&self, py: Python<'_>, bits: String) -> PyResult<()> {
        let shared = Arc::clone(&self.shared);
        self.shared.runtime.block_on(py, async move { shared.averager.set_group_bits(&bits).await }).py_err()
    }

    /// Whether others may download this peer's state.
    #[getter]
    fn get_allow_state_sharing(&self) -> bool {
        self.shared.averager.allow_state_sharing()
    }

    /// Turns state sharing on or off.
    #[setter]
    fn set_allow_state_sharing(&self, py: Python<'_>, allow: bool) -> PyResult<()> {
        let _guard = self.shared.runtime.handle().enter();
        py.allow_threads(|| self.shared.averager.set_allow_state_sharing(allow)).py_err()
    }

    /// This peer's donor priority.
    #[getter]
    fn get_state_sharing_priority(&self) -> f64 {
        self.shared.averager.state_sharing_priority()
    }

    /// Changes this peer's donor priority.
    #[setter]
    fn set_state_sharing_priority(&self, py: Python<'_>, priority: f64) -> PyResult<()> {
        let _guard = self.shared.runtime.handle().enter();
        py.allow_threads(|| self.shared.averager.set_state_sharing_priority(priority)).py_err()
    }

    /// Downloads the best donor's state: `None`, or `(metadata_msgpack, [(bytearray, dtype,
    /// shape), ...])`.
    #[pyo3(signature = (timeout=None))]
    fn load_state_from_peers(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let timeout = secs(timeout, "timeout")?;
        let shared = Arc::clone(&self.shared);
        let state = self
            .shared
            .runtime
            .block_on(py, async move { shared.averager.load_state_from_peers(timeout).await });
        let Some(mut state) = state.py_err()? else { return Ok(None) };
        let mut tensors = Vec::with_capacity(state.tensors.len());
        for t in &mut state.tensors {
            let shape = t.shape().to_vec();
            let dtype = t.dtype().name();
            let data = PyByteArray::new(py, bytes_of(t)?);
            tensors.push((data, dtype, shape).into_pyobject(py)?.into_any().unbind());
        }
        let metadata = PyBytes::new(py, &state.metadata);
        Ok(Some((metadata, tensors).into_pyobject(py)?.into_any().unbind()))
    }

    /// Stops serving and cancels running steps, waiting up to `shutdown_timeout`.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.unlock_tensors();
        let shared = Arc::clone(&self.shared);
        self.shared
            .runtime
            .block_on(py, async move { shared.averager.shutdown().await })
            .map_err(|e| PyRuntimeError::new_err(format!("shutdown: {e}")))
    }
}
