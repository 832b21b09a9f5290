//! Where a step's result goes when its inputs were copied into the averager (a write through
//! `get_tensors()` before its all-reduce, or a step queued behind another; otherwise the
//! all-reduce reads and writes the user's buffers in place, `lender.rs`): straight into the
//! user's buffers, by the core (`StepOptions::apply_to`), instead of into the averager's tensors
//! and then copied out.
//!
//! The core leaves its own tensors holding the step's inputs and hands over the update
//! (`alpha * (average - local)` per part). The binding writes `local + alpha * delta` into the
//! user's memory, which is exactly what the core would have computed in its own tensors: after a
//! step the user's tensors hold the averaged values, as before, whatever was written into them
//! while the step ran. (Adding the update to the user's current values instead, hivemind's way,
//! would count an update twice when two queued steps' inputs were both read before either
//! ended.) That one pass replaces the core's own update and the copy back: the copy back is gone
//! from the step's critical path, not moved.
//!
//! Lock order as everywhere in the binding: the user lock, then the averager's tensor lock (the
//! core calls a target after releasing its own).

use std::sync::{Arc, Weak};
use std::time::Instant;

use ::averager::averager::{ResultTarget, StepUpdate};
use ::averager::tensor::TensorSlice;
use ::averager::{DType, Error, Tensor};
use async_trait::async_trait;
use half::{bf16, f16};

use crate::averager::Shared;
use crate::buffers::UserBuffer;
use crate::timings::Timings;

/// A step's target: the user's buffers the step was called with.
pub(crate) struct UserTarget {
    /// Weak: a step must not keep a dropped averager alive.
    shared: Weak<Shared>,
    buffers: Vec<UserBuffer>,
    timings: Arc<Timings>,
}

impl UserTarget {
    /// A target writing into `buffers` (whose owners the step keeps alive until it is done).
    pub(crate) fn new(shared: &Arc<Shared>, buffers: Vec<UserBuffer>, timings: Arc<Timings>) -> Self {
        UserTarget { shared: Arc::downgrade(shared), buffers, timings }
    }
}

#[async_trait]
impl ResultTarget for UserTarget {
    async fn apply(&self, update: &StepUpdate<'_>) -> ::averager::Result<()> {
        let shared =
            self.shared.upgrade().ok_or_else(|| Error::Cancelled("the averager was dropped".into()))?;
        let asked = Instant::now();
        let _user = shared.user_lock.lock().await;
        // The step's inputs: the core keeps them in its tensors when it has a target.
        let local = shared.averager.tensors().await;
        let waited = asked.elapsed();
        // A pass over up to gigabytes: off the worker, so the runtime's other tasks keep running.
        let written = tokio::task::block_in_place(|| {
            let started = Instant::now();
            write_all(&self.buffers, &local, update).map(|()| started.elapsed())
        })?;
        self.timings.update(|t| (t.result_wait, t.result_write) = (waited, written));
        Ok(())
    }
}

/// `user = local + alpha * delta` for every part with a delta, `user = local` elsewhere, for
/// every buffer; every buffer is checked before any is written.
fn write_all(buffers: &[UserBuffer], local: &[Tensor], update: &StepUpdate<'_>) -> ::averager::Result<()> {
    if buffers.len() != local.len() {
        return Err(Error::Tensor(format!(
            "{} tensors given, the averager holds {}",
            buffers.len(),
            local.len()
        )));
    }
    for (i, (b, t)) in buffers.iter().zip(local).enumerate() {
        if b.dtype() != t.dtype() || b.nbytes() != t.numel() * t.dtype().size_bytes() {
            return Err(Error::Tensor(format!("tensor {i} no longer matches the averager's")));
        }
    }
    let mut parts: Vec<Vec<(usize, TensorSlice<'_>)>> = vec![Vec::new(); buffers.len()];
    for part in update.parts() {
        // In range: the core checked every part against its tensors, which `local` are.
        parts[part.tensor].push((part.offset, part.delta));
    }
    // Every buffer is cut into pieces (which checks it) before any is written.
    let mut cut = Vec::with_capacity(buffers.len());
    for ((buffer, tensor), parts) in buffers.iter().zip(local).zip(parts) {
        // SAFETY: the buffer's owner is alive until the step is done (the step's task holds it),
        // the user lock is held (nothing else in the binding writes it), and nothing else in
        // this process has a Rust reference into the user's memory.
        let bytes = unsafe { buffer.bytes_mut() };
        cut.push(match tensor.dtype() {
            DType::F32 => Pieces::F32(pieces(bytes, tensor.as_f32()?, &parts)?),
            DType::F64 => Pieces::F64(pieces(bytes, tensor.as_f64()?, &parts)?),
            DType::F16 => Pieces::F16(pieces(bytes, tensor.as_f16()?, &parts)?),
            DType::BF16 => Pieces::BF16(pieces(bytes, tensor.as_bf16()?, &parts)?),
            other => return Err(Error::Tensor(format!("unsupported tensor dtype {other}"))),
        });
    }
    let alpha = update.alpha();
    for (pieces, buffer) in cut.into_iter().zip(buffers) {
        match pieces {
            Pieces::F32(p) => write_pieces(p, alpha, buffer.nbytes()),
            Pieces::F64(p) => write_pieces(p, alpha, buffer.nbytes()),
            Pieces::F16(p) => write_pieces(p, alpha, buffer.nbytes()),
            Pieces::BF16(p) => write_pieces(p, alpha, buffer.nbytes()),
        }
    }
    Ok(())
}

/// One buffer cut into pieces, in its element type.
enum Pieces<'a> {
    F32(Vec<Piece<'a, f32>>),
    F64(Vec<Piece<'a, f64>>),
    F16(Vec<Piece<'a, f16>>),
    BF16(Vec<Piece<'a, bf16>>),
}

/// The element types the binding averages.
trait Element: bytemuck::Pod + Send + Sync {
    /// The delta, if it has this type.
    fn delta<'a>(delta: TensorSlice<'a>) -> Option<&'a [Self]>;
    /// `local + alpha * delta`, computed as the core's own update does.
    fn updated(local: Self, delta: Self, alpha: f64) -> Self;
}

impl Element for f32 {
    fn delta<'a>(delta: TensorSlice<'a>) -> Option<&'a [Self]> {
        if let TensorSlice::F32(d) = delta { Some(d) } else { None }
    }
    fn updated(local: Self, delta: Self, alpha: f64) -> Self {
        local + alpha as f32 * delta
    }
}

impl Element for f64 {
    fn delta<'a>(delta: TensorSlice<'a>) -> Option<&'a [Self]> {
        if let TensorSlice::F64(d) = delta { Some(d) } else { None }
    }
    fn updated(local: Self, delta: Self, alpha: f64) -> Self {
        local + alpha * delta
    }
}

impl Element for f16 {
    fn delta<'a>(delta: TensorSlice<'a>) -> Option<&'a [Self]> {
        if let TensorSlice::F16(d) = delta { Some(d) } else { None }
    }
    fn updated(local: Self, delta: Self, alpha: f64) -> Self {
        f16::from_f32(local.to_f32() + alpha as f32 * delta.to_f32())
    }
}

impl Element for bf16 {
    fn delta<'a>(delta: TensorSlice<'a>) -> Option<&'a [Self]> {
        if let TensorSlice::BF16(d) = delta { Some(d) } else { None }
    }
    fn updated(local: Self, delta: Self, alpha: f64) -> Self {
        bf16::from_f32(local.to_f32() + alpha as f32 * delta.to_f32())
    }
}

/// One stretch of a user buffer: the local values, updated by a delta when there is one.
struct Piece<'a, T> {
    user: &'a mut [T],
    local: &'a [T],
    delta: Option<&'a [T]>,
}

impl<T: Element> Piece<'_, T> {
    fn write(self, alpha: f64) {
        match self.delta {
            Some(delta) => {
                for ((u, &l), &d) in self.user.iter_mut().zip(self.local).zip(delta) {
                    *u = T::updated(l, d, alpha);
                }
            }
            None => self.user.copy_from_slice(self.local),
        }
    }
}

/// Buffers from this many bytes on are written by several threads.
const PARALLEL_BYTES: usize = 8 << 20;

/// At most this many threads write one buffer: memory bandwidth, not cores, is the limit.
const THREADS: usize = 4;

/// Cuts one buffer into the pieces its local values and its parts' deltas (disjoint, checked
/// here) are written to.
fn pieces<'a, T: Element>(
    bytes: &'a mut [u8],
    local: &'a [T],
    parts: &[(usize, TensorSlice<'a>)],
) -> ::averager::Result<Vec<Piece<'a, T>>> {
    let user: &mut [T] = bytemuck::try_cast_slice_mut(bytes)
        .map_err(|e| Error::Tensor(format!("the tensor's memory is not aligned for its dtype: {e}")))?;
    if user.len() != local.len() {
        return Err(Error::Tensor("tensor changed size since the averager was built".into()));
    }
    let mut sorted = parts
        .iter()
        .map(|&(offset, delta)| {
            T::delta(delta)
                .map(|d| (offset, d))
                .ok_or_else(|| Error::Tensor(format!("a {} delta for a different tensor", delta.dtype())))
        })
        .collect::<::averager::Result<Vec<_>>>()?;
    sorted.sort_by_key(|&(offset, _)| offset);
    // Cut the buffer into pieces, parts and the gaps between them, front to back.
    let mut out = Vec::with_capacity(2 * sorted.len() + 1);
    let (mut user_rest, mut local_rest, mut at) = (user, local, 0usize);
    for (offset, delta) in sorted {
        let gap = offset
            .checked_sub(at)
            .ok_or_else(|| Error::Tensor(format!("overlapping deltas at element {offset}")))?;
        let end = gap + delta.len();
        if end > user_rest.len() {
            return Err(Error::Tensor(format!("a delta at {offset} runs past the tensor's end")));
        }
        let (gap_user, rest) = user_rest.split_at_mut(gap);
        let (part_user, rest) = rest.split_at_mut(delta.len());
        let (gap_local, rest_local) = local_rest.split_at(gap);
        let (part_local, rest_local) = rest_local.split_at(delta.len());
        out.push(Piece { user: gap_user, local: gap_local, delta: None });
        out.push(Piece { user: part_user, local: part_local, delta: Some(delta) });
        (user_rest, local_rest, at) = (rest, rest_local, offset + delta.len());
    }
    out.push(Piece { user: user_rest, local: local_rest, delta: None });
    Ok(out)
}

/// Writes the pieces, on a few threads when they are large.
fn write_pieces<T: Element>(pieces: Vec<Piece<'_, T>>, alpha: f64, bytes: usize) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(THREADS);
    if bytes < PARALLEL_BYTES || threads < 2 {
        pieces.into_iter().for_each(|p| p.write(alpha));
        return;
    }
    // Consecutive pieces per thread, about the same number of elements each.
    let total: usize = pieces.iter().map(|p| p.user.len()).sum();
    let share = total.div_ceil(threads);
    let mut groups: Vec<Vec<Piece<'_, T>>> = vec![Vec::new()];
    let mut filled = 0;
    for piece in pieces {
        if filled >= share {
            groups.push(Vec::new());
            filled = 0;
        }
        filled += piece.user.len();
        if let Some(group) = groups.last_mut() {
            group.push(piece);
        }
    }
    std::thread::scope(|scope| {
        for group in groups {
            scope.spawn(move || group.into_iter().for_each(|p| p.write(alpha)));
        }
    });
}
