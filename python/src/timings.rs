//! Where one step's time went, phase by phase: what the step-overhead benchmark
//! (`bench/step_overhead.py`) reads to tell the binding's own cost (copies, locks, thread
//! handoffs) from the core's step.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::averager::StepReport;

/// The phases of one step, as offsets from `step()`'s entry or as durations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepTimes {
    /// When `step()` was entered.
    pub(crate) started: Instant,
    /// The copy of the user's buffers into the step's inputs (the memcpy alone).
    pub(crate) copy_in: Duration,
    /// How many all-reduces read the user's buffers in place (`lender.rs`) rather than a copy.
    pub(crate) lent: u32,
    /// From `step()`'s entry until the core's step was started.
    pub(crate) core_started: Duration,
    /// From `step()`'s entry until the core's step had its result.
    pub(crate) core_done: Duration,
    /// The core's own figures: matchmaking and the all-reduce (lock to applied result).
    pub(crate) matchmaking: Duration,
    /// See `matchmaking`.
    pub(crate) all_reduce: Duration,
    /// Waiting for the locks before writing the result into the user's buffers (the core's
    /// call of the step's target, `target.rs`).
    pub(crate) result_wait: Duration,
    /// Writing the result into the user's buffers (local values plus the update, in one pass).
    pub(crate) result_write: Duration,
    /// From `step()`'s entry until the result was in the user's buffers and reported.
    pub(crate) finished: Duration,
}

/// A step's times, filled in by the tasks that run its phases.
#[derive(Debug)]
pub(crate) struct Timings(Mutex<StepTimes>);

impl Timings {
    /// Times for a step entered now.
    pub(crate) fn start() -> Self {
        let zero = Duration::ZERO;
        Timings(Mutex::new(StepTimes {
            started: Instant::now(),
            copy_in: zero,
            lent: 0,
            core_started: zero,
            core_done: zero,
            matchmaking: zero,
            all_reduce: zero,
            result_wait: zero,
            result_write: zero,
            finished: zero,
        }))
    }

    /// Changes the times.
    pub(crate) fn update(&self, change: impl FnOnce(&mut StepTimes)) {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Records the core's report.
    pub(crate) fn report(&self, report: &StepReport) {
        self.update(|t| {
            t.matchmaking = report.matchmaking;
            t.all_reduce = report.all_reduce;
        });
    }

    /// A copy of the times.
    pub(crate) fn get(&self) -> StepTimes {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `(name, seconds)` pairs for Python.
    pub(crate) fn seconds(&self) -> Vec<(&'static str, f64)> {
        let t = self.get();
        vec![
            ("copy_in", t.copy_in.as_secs_f64()),
            ("lent", f64::from(t.lent)),
            ("core_started", t.core_started.as_secs_f64()),
            ("core_done", t.core_done.as_secs_f64()),
            ("matchmaking", t.matchmaking.as_secs_f64()),
            ("allreduce", t.all_reduce.as_secs_f64()),
            ("result_wait", t.result_wait.as_secs_f64()),
            ("result_write", t.result_write.as_secs_f64()),
            ("finished", t.finished.as_secs_f64()),
        ]
    }
}
