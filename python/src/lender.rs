//! A step that reads the user's buffers where they are: lent to its all-reduce
//! (`StepOptions::lend_inputs`), which sends their parts straight from that memory and writes the
//! result into it. No copy in before the step and none out after it.
//!
//! Semantics, as the copying path's: a step averages the values its inputs had when it was
//! called (or re-read at `allow_allreduce()`), and `get_tensors()` never sees a half-written
//! result. Nothing is copied as long as nobody writes through `get_tensors()` between the call
//! and the all-reduce: the values are still the ones the call saw, so the all-reduce may read them
//! in place. A `get_tensors()` before the all-reduce begins first copies the step's inputs into
//! the averager (`materialize`), and the step then runs as the copying path does (the lender
//! declines). Once the all-reduce has the buffers, it holds the user lock until the result is in
//! them, so `get_tensors()` waits for the step, as hivemind's does for its all-reduce.
//!
//! Only the step at the head of the queue reads in place; a step queued behind another keeps its
//! snapshot (`queue.rs`).
//!
//! **State downloads** do not wait for a lent all-reduce (the core's own tensors give a donor the
//! values a running round began with; so does this): `get_current_state()` copies the lent
//! buffers under a reader count ([`Readers`]) that the update waits out before writing, and only
//! takes the user lock (waiting for the result) once the update has begun.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, Weak};

use ::averager::averager::{InputLender, LentTensors};
use ::averager::tensor::{TensorSlice, TensorSliceMut, TensorView};
use ::averager::{DType, Error};
use async_trait::async_trait;
use half::{bf16, f16};
use pyo3::prelude::*;
use tokio::sync::OwnedMutexGuard;

use crate::averager::Shared;
use crate::buffers::UserBuffer;
use crate::queue::{Inputs, SharedInputs};
use crate::timings::Timings;

/// The step at the head of the queue whose inputs have not been read yet.
pub(crate) struct Unread {
    /// The step's inputs slot ([`Inputs::Unread`] until read).
    pub(crate) inputs: SharedInputs,
    /// The user's buffers the step was called with.
    pub(crate) buffers: Vec<UserBuffer>,
    /// Keeps their owners alive while this value lives.
    pub(crate) _keepalive: Py<PyAny>,
}

/// Copies a step's unread inputs into the averager's tensors, so that the user may write the
/// buffers before its all-reduce begins; the step then runs on the copy.
pub(crate) async fn materialize(shared: &Shared, unread: &Unread) -> PyResult<()> {
    let mut slot = unread.inputs.lock().await;
    if matches!(*slot, Inputs::Unread) {
        shared.copy_in(&unread.buffers).await?;
        *slot = Inputs::InCore;
    }
    Ok(())
}

/// Lends a step's buffers to its all-reduce, unless they were copied in meanwhile.
pub(crate) struct UserLender {
    /// Weak: a step must not keep a dropped averager alive.
    pub(crate) shared: Weak<Shared>,
    pub(crate) inputs: SharedInputs,
    pub(crate) buffers: Vec<UserBuffer>,
    pub(crate) shapes: Vec<Vec<usize>>,
    /// Keeps the buffers' owners alive; every lent value holds a clone.
    pub(crate) keepalive: Arc<Py<PyAny>>,
    /// The step's phase times, which count the all-reduces that read in place.
    pub(crate) timings: Arc<Timings>,
}

#[async_trait]
impl InputLender for UserLender {
    async fn lend(&self) -> ::averager::Result<Option<Box<dyn LentTensors>>> {
        let shared =
            self.shared.upgrade().ok_or_else(|| Error::Cancelled("the averager was dropped".into()))?;
        let slot = self.inputs.lock().await;
        if !matches!(*slot, Inputs::Unread) {
            return Ok(None);
        }
        // Lock order as everywhere in the binding: the inputs slot, then the user lock.
        let user = Arc::clone(&shared.user_lock).lock_owned().await;
        let readers = Arc::new(Readers {
            buffers: self.buffers.clone(),
            count: AtomicUsize::new(0),
            writing: AtomicBool::new(false),
            _keepalive: Arc::clone(&self.keepalive),
        });
        // Python refuses misaligned buffers when the averager is built (`_tensors.check`).
        let lent = UserTensors::new(&self.shapes, user, Arc::clone(&readers), Arc::downgrade(&shared))
            .ok_or_else(|| Error::Tensor("a tensor's memory is not aligned for its dtype".into()))?;
        *shared.lent.lock().unwrap_or_else(PoisonError::into_inner) = Some(readers);
        self.timings.update(|t| t.lent += 1);
        Ok(Some(Box::new(lent)))
    }
}

/// The buffers a running all-reduce has been lent, for state downloads to copy while the round
/// only reads them: `count` readers copy, and the update sets `writing` and waits for them to
/// finish before it writes (sequentially consistent, so either a reader sees `writing` or the
/// update sees its count).
pub(crate) struct Readers {
    buffers: Vec<UserBuffer>,
    count: AtomicUsize,
    writing: AtomicBool,
    /// Keeps the buffers' owners alive for a reader that outlives the round.
    _keepalive: Arc<Py<PyAny>>,
}

impl Readers {
    /// Copies the lent buffers into `into` (same count, dtypes and sizes) unless the update has
    /// begun; whether it copied.
    pub(crate) fn copy_to(&self, into: &[UserBuffer]) -> PyResult<bool> {
        crate::buffers::check_all_like(into, &self.buffers)?;
        self.count.fetch_add(1, Ordering::SeqCst);
        let copied = !self.writing.load(Ordering::SeqCst);
        if copied {
            for (from, to) in self.buffers.iter().zip(into) {
                // SAFETY: `from` is alive (`_keepalive`) and not written until `count` drops to 0
                // (`begin_writing`); `to` is the caller's fresh buffer of the same size.
                unsafe { to.bytes_mut().copy_from_slice(elements::<u8>(from.address(), from.nbytes())) };
            }
        }
        self.count.fetch_sub(1, Ordering::SeqCst);
        Ok(copied)
    }

    /// Stops new readers and waits for the current ones (each copies one state at memory speed).
    fn begin_writing(&self) {
        if !self.writing.swap(true, Ordering::SeqCst) {
            while self.count.load(Ordering::SeqCst) != 0 {
                std::thread::yield_now();
            }
        }
    }
}

/// The user's buffers as the all-reduce reads and updates them.
struct UserTensors {
    shapes: Vec<Vec<usize>>,
    /// `get_tensors()` and every copy wait while the memory is lent.
    _user: OwnedMutexGuard<()>,
    /// The buffers, and the state downloads copying them.
    readers: Arc<Readers>,
    /// Where `readers` is published, until this value is dropped.
    shared: Weak<Shared>,
}

impl UserTensors {
    /// `None` when a buffer is not aligned for its dtype (numpy allows that).
    fn new(
        shapes: &[Vec<usize>],
        user: OwnedMutexGuard<()>,
        readers: Arc<Readers>,
        shared: Weak<Shared>,
    ) -> Option<Self> {
        let buffers = &readers.buffers;
        let aligned = buffers.iter().all(|b| b.address() % b.dtype().size_bytes() == 0);
        (aligned && buffers.len() == shapes.len()).then(|| UserTensors {
            shapes: shapes.to_vec(),
            _user: user,
            readers,
            shared,
        })
    }
}

impl Drop for UserTensors {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut lent = shared.lent.lock().unwrap_or_else(PoisonError::into_inner);
            if lent.as_ref().is_some_and(|r| Arc::ptr_eq(r, &self.readers)) {
                *lent = None;
            }
        }
    }
}

/// `n` elements of `T` at `address`.
///
/// # Safety
/// As [`UserTensors`]'s `LentTensors` impl promises: the memory is alive (its owners are held),
/// aligned (checked in `UserTensors::new`), `n` elements long (checked against the shape when the
/// buffer was parsed), and written by no one else in this process while the user lock is held.
unsafe fn elements<'a, T>(address: usize, n: usize) -> &'a [T] {
    if n == 0 {
        return &[];
    }
    // SAFETY: see the function's contract.
    unsafe { std::slice::from_raw_parts(address as *const T, n) }
}

/// The mutable counterpart of [`elements`], with the same contract, for `&mut self` only.
unsafe fn elements_mut<'a, T>(address: usize, n: usize) -> &'a mut [T] {
    if n == 0 {
        return &mut [];
    }
    // SAFETY: see `elements`; the caller's `&mut self` rules out any other borrow.
    unsafe { std::slice::from_raw_parts_mut(address as *mut T, n) }
}

impl LentTensors for UserTensors {
    fn count(&self) -> usize {
        self.readers.buffers.len()
    }

    fn view(&self, index: usize) -> Option<TensorView<'_>> {
        let buffer = self.readers.buffers.get(index)?;
        let (address, n) = (buffer.address(), buffer.nbytes() / buffer.dtype().size_bytes());
        // SAFETY: `elements`'s contract holds for a lent buffer (see `UserTensors::new`).
        let data = unsafe {
            match buffer.dtype() {
                DType::F32 => TensorSlice::F32(elements::<f32>(address, n)),
                DType::F64 => TensorSlice::F64(elements::<f64>(address, n)),
                DType::F16 => TensorSlice::F16(elements::<f16>(address, n)),
                DType::BF16 => TensorSlice::BF16(elements::<bf16>(address, n)),
                _ => return None,
            }
        };
        TensorView::new(self.shapes[index].as_slice(), data).ok()
    }

    fn slice_mut(&mut self, index: usize) -> Option<TensorSliceMut<'_>> {
        self.readers.begin_writing();
        let buffer = self.readers.buffers.get(index)?;
        let (address, n) = (buffer.address(), buffer.nbytes() / buffer.dtype().size_bytes());
        // SAFETY: as in `view`, and `&mut self` means no view of this memory remains.
        unsafe {
            Some(match buffer.dtype() {
                DType::F32 => TensorSliceMut::F32(elements_mut::<f32>(address, n)),
                DType::F64 => TensorSliceMut::F64(elements_mut::<f64>(address, n)),
                DType::F16 => TensorSliceMut::F16(elements_mut::<f16>(address, n)),
                DType::BF16 => TensorSliceMut::BF16(elements_mut::<bf16>(address, n)),
                _ => return None,
            })
        }
    }
}
