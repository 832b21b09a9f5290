//! protocol 8.2: `StepControl`, the handle of one averaging step that the user and the averager's round
//! loop share.
//!
//! All mutable state lives in one `watch` channel: every waiter (a stage, the trigger, the cancel
//! signal, the result) wakes on exactly the change it waits for, without polling, and any number of
//! clones can wait at once.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use super::step_options::check_weight;
use crate::error::{Error, Result};
use crate::time::DhtTime;

/// Where a step is (protocol 8.2); the numbers are hivemind's `AveragingStage` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Stage {
    /// Created; the round loop has not started.
    Idle = 0,
    /// Matchmaking: looking for a group.
    LookingForGroup = 1,
    /// A group was found; all-reduce waits for [`StepControl::allow_allreduce`].
    AwaitingTrigger = 2,
    /// All-reduce runs; weight and schedule are fixed and cancellation is no longer observed.
    RunningAllreduce = 3,
    /// The round loop is over; the result is set.
    Finished = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Pending,
    Allowed,
    Cancelled,
}

struct State<T> {
    stage: Stage,
    /// A retry moves the stage back to `LookingForGroup`; waiters compare with the highest stage so
    /// that a stage that was entered and left before they looked still counts.
    highest: Stage,
    began_allreduce: bool,
    scheduled_time: DhtTime,
    weight: f64,
    trigger: Trigger,
    cancel_requested: bool,
    cancelled: bool,
    result: Option<Result<T>>,
    /// The endpoints of the group the current attempt formed, in group order.
    group: Option<Vec<String>>,
}

struct Shared<T> {
    state: watch::Sender<State<T>>,
    deadline: Option<DhtTime>,
    allow_retries: bool,
    require_trigger: bool,
    data_for_gather: Vec<u8>,
}

/// Held only by user-side handles, so that its drop means "the user let go of the step".
struct UserGuard<T>(Arc<Shared<T>>);

#[cfg(test)]
thread_local! {
    static UNTRIGGERED_DROPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<T> Drop for UserGuard<T> {
    fn drop(&mut self) {
        let state = self.0.state.borrow();
        if state.trigger == Trigger::Pending && state.result.is_none() {
            tracing::warn!(
                "a StepControl awaiting its trigger was dropped without allow_allreduce() or cancel(); \
                 its group will likely time out waiting for this peer"
            );
            #[cfg(test)]
            UNTRIGGERED_DROPS.with(|n| n.set(n.get() + 1));
        }
    }
}

/// The handle of one averaging step (hivemind's `StepControl`), returned by
/// `Averager::step_background`.
///
/// Clones are cheap and share the step. `T` is the step's output: for the averager the gathered
/// map (endpoint to that member's gather bytes); generic so that the control neither depends on the
/// averager's result type nor decodes anything.
///
/// Methods marked *averager side* are for the round loop; users only read what they change.
pub struct StepControl<T> {
    shared: Arc<Shared<T>>,
    /// `None` in handles made by [`StepControl::averager_handle`].
    user: Option<Arc<UserGuard<T>>>,
}

impl<T> Clone for StepControl<T> {
    fn clone(&self) -> Self {
        StepControl { shared: self.shared.clone(), user: self.user.clone() }
    }
}

impl<T> fmt::Debug for StepControl<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.shared.state.borrow();
        f.debug_struct("StepControl")
            .field("stage", &s.stage)
            .field("scheduled_time", &s.scheduled_time)
            .field("weight", &s.weight)
            .field("trigger", &s.trigger)
            .field("done", &s.result.is_some())
            .field("deadline", &self.shared.deadline)
            .finish_non_exhaustive()
    }
}

impl<T: Clone + Send + Sync + 'static> StepControl<T> {
    /// A user-side control in stage [`Stage::Idle`]; usually made by `StepOptions::into_control`.
    ///
    /// `deadline` is in DHT time (`None`: no deadline). Without `require_trigger` the trigger is set
    /// at once. `data_for_gather` is the protocol 2.4 payload, fixed for the whole step.
    ///
    /// # Errors
    /// [`Error::Config`] when `weight` is negative or not finite, or `scheduled_time` is not finite.
    pub(crate) fn new(
        scheduled_time: DhtTime,
        weight: f64,
        deadline: Option<DhtTime>,
        allow_retries: bool,
        require_trigger: bool,
        data_for_gather: Vec<u8>,
    ) -> Result<Self> {
        check_weight(weight)?;
        if !scheduled_time.is_finite() {
            return Err(Error::Config(format!("scheduled time {scheduled_time} is not finite")));
        }
        let state = State {
            stage: Stage::Idle,
            highest: Stage::Idle,
            began_allreduce: false,
            scheduled_time,
            weight,
            trigger: if require_trigger { Trigger::Pending } else { Trigger::Allowed },
            cancel_requested: false,
            cancelled: false,
            result: None,
            group: None,
        };
        let shared = Arc::new(Shared {
            state: watch::Sender::new(state),
            deadline,
            allow_retries,
            require_trigger,
            data_for_gather,
        });
        Ok(StepControl { user: Some(Arc::new(UserGuard(shared.clone()))), shared })
    }

    /// *Averager side.* A handle to the same step that does not count as the user's, so that the
    /// round loop holding it does not hide a user's drop of an untriggered control.
    pub(crate) fn averager_handle(&self) -> Self {
        StepControl { shared: self.shared.clone(), user: None }
    }

    fn read<R>(&self, f: impl FnOnce(&State<T>) -> R) -> R {
        f(&self.shared.state.borrow())
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.read(|s| s.stage)
    }

    /// Resolves once the step has reached `stage` or a later one (at any time since its creation, so
    /// a stage left again by a retry still counts). The future does not borrow the control.
    pub fn wait_for_stage(&self, stage: Stage) -> impl Future<Output = ()> + Send + use<T> {
        // The future keeps the sender alive, so the channel cannot close under the wait.
        let shared = self.shared.clone();
        async move {
            let mut rx = shared.state.subscribe();
            let _ = rx.wait_for(|s| s.highest >= stage).await;
        }
    }

    /// When all-reduce is to start, in DHT time.
    pub fn scheduled_time(&self) -> DhtTime {
        self.read(|s| s.scheduled_time)
    }

    /// Moves the start of all-reduce. Ignored with a warning once all-reduce has begun, or when
    /// `time` is not finite.
    pub fn set_scheduled_time(&self, time: DhtTime) {
        if !time.is_finite() {
            tracing::warn!(time, "ignoring a scheduled time that is not finite");
            return;
        }
        self.change_unless_running("scheduled time", |s| s.scheduled_time = time);
    }

    /// This peer's weight in the average.
    pub fn weight(&self) -> f64 {
        self.read(|s| s.weight)
    }

    /// Changes the weight. Ignored with a warning once all-reduce has begun.
    ///
    /// # Errors
    /// [`Error::Config`] when `weight` is negative or not finite.
    pub fn set_weight(&self, weight: f64) -> Result<()> {
        check_weight(weight)?;
        self.change_unless_running("weight", |s| s.weight = weight);
        Ok(())
    }

    fn change_unless_running(&self, what: &str, change: impl FnOnce(&mut State<T>)) {
        let changed = self.shared.state.send_if_modified(|s| {
            if s.began_allreduce {
                return false;
            }
            change(s);
            true
        });
        if !changed {
            tracing::warn!("changing the {what} has no effect after all-reduce has begun");
        }
    }

    /// The members of the group the current attempt formed, in group order (the order that fixes
    /// who reduces which span); `None` while looking for one.
    pub fn group(&self) -> Option<Vec<String>> {
        self.read(|s| s.group.clone())
    }

    /// *Averager side.* Records the group the current attempt formed (`None` when a retry starts
    /// looking again).
    pub(crate) fn set_group(&self, group: Option<Vec<String>>) {
        self.shared.state.send_modify(|s| s.group = group);
    }

    /// Whether all-reduce has begun (in this or an earlier attempt); stays true.
    pub fn began_allreduce(&self) -> bool {
        self.read(|s| s.began_allreduce)
    }

    /// The step's deadline in DHT time; `None`: no deadline.
    pub fn deadline(&self) -> Option<DhtTime> {
        self.shared.deadline
    }

    /// Whether a failed round may be retried with a new group while time remains.
    pub fn allow_retries(&self) -> bool {
        self.shared.allow_retries
    }

    /// Whether the step was created with `require_trigger`.
    pub fn require_trigger(&self) -> bool {
        self.shared.require_trigger
    }

    /// The protocol 2.4 gather payload sent to the group; fixed for the whole step.
    pub fn data_for_gather(&self) -> &[u8] {
        &self.shared.data_for_gather
    }

    /// Whether all-reduce is allowed: [`StepControl::allow_allreduce`] was called, or the step did
    /// not require a trigger. Unlike hivemind, a cancelled trigger does not count as triggered.
    pub fn triggered(&self) -> bool {
        self.read(|s| s.trigger == Trigger::Allowed)
    }

    /// Lets all-reduce begin once a group is found. Calling it again, or after a cancel, only logs a
    /// warning.
    pub fn allow_allreduce(&self) {
        let set = self.shared.state.send_if_modified(|s| {
            let pending = s.trigger == Trigger::Pending;
            if pending {
                s.trigger = Trigger::Allowed;
            }
            pending
        });
        if !set {
            tracing::warn!("the trigger is already set (or the step was cancelled)");
        }
    }

    /// Cancels the step: cancels a pending trigger, signals the round loop, and completes the result
    /// with [`Error::Cancelled`] unless it is already set. Returns whether it did the latter.
    ///
    /// The round loop observes the cancellation only during matchmaking and while awaiting the
    /// trigger; a running all-reduce still finishes (protocol 11.19), although the result stays
    /// cancelled.
    pub fn cancel(&self) -> bool {
        let mut cancelled = false;
        self.shared.state.send_modify(|s| {
            s.cancel_requested = true;
            if s.trigger == Trigger::Pending {
                s.trigger = Trigger::Cancelled;
            }
            if s.result.is_none() {
                s.result = Some(Err(Error::Cancelled("the step was cancelled".into())));
                s.cancelled = true;
                cancelled = true;
            }
        });
        cancelled
    }

    /// Whether [`StepControl::cancel`] completed the result (a cancel after the result does not).
    pub fn cancelled(&self) -> bool {
        self.read(|s| s.cancelled)
    }

    /// Whether the result is set (success, failure or cancellation).
    pub fn is_done(&self) -> bool {
        self.read(|s| s.result.is_some())
    }

    /// Waits for the step's result; any number of callers and clones may wait.
    ///
    /// # Errors
    /// The step's error: [`Error::Cancelled`] after [`StepControl::cancel`], or why the round loop
    /// failed (for example, no group was found before the deadline).
    pub async fn result(&self) -> Result<T> {
        let mut rx = self.shared.state.subscribe();
        let result = match rx.wait_for(|s| s.result.is_some()).await {
            Ok(state) => state.result.clone(),
            Err(_) => None,
        };
        // The sender lives in `self.shared`, so the channel cannot close while `self` is borrowed.
        result.unwrap_or_else(|| Err(Error::Internal("step control channel closed".into())))
    }

    /// *Averager side.* Moves the step to `stage`.
    ///
    /// Stages move forward, except that [`Stage::LookingForGroup`] may be re-entered (a retry
    /// starts a new round); [`Stage::Idle`] is never re-entered and [`Stage::Finished`] is final.
    /// Other moves are ignored. Entering [`Stage::RunningAllreduce`] sets `began_allreduce`;
    /// entering [`Stage::Finished`] without a result sets [`Error::Internal`], so a finished step is
    /// always done.
    pub(crate) fn set_stage(&self, stage: Stage) {
        self.shared.state.send_if_modified(|s| {
            let allowed = match (s.stage, stage) {
                (Stage::Finished, _) | (_, Stage::Idle) => false,
                (current, Stage::LookingForGroup) => current != Stage::LookingForGroup,
                (current, next) => next > current,
            };
            if !allowed {
                if s.stage != stage {
                    tracing::debug!(from = ?s.stage, to = ?stage, "ignoring a backward stage change");
                }
                return false;
            }
            s.stage = stage;
            s.highest = s.highest.max(stage);
            match stage {
                Stage::RunningAllreduce => s.began_allreduce = true,
                Stage::Finished if s.result.is_none() => {
                    s.result = Some(Err(Error::Internal("the round loop finished without a result".into())));
                }
                _ => {}
            }
            true
        });
    }

    /// *Averager side.* Waits until all-reduce is allowed.
    ///
    /// # Errors
    /// [`Error::Cancelled`] when the step was cancelled before the trigger was set.
    pub(crate) async fn wait_for_trigger(&self) -> Result<()> {
        let mut rx = self.shared.state.subscribe();
        let trigger = rx.wait_for(|s| s.trigger != Trigger::Pending).await.map(|s| s.trigger);
        match trigger {
            Ok(Trigger::Allowed) => Ok(()),
            _ => Err(Error::Cancelled("the step was cancelled while awaiting its trigger".into())),
        }
    }

    /// *Averager side.* Resolves once [`StepControl::cancel`] has been called (even after the result
    /// was set), so matchmaking can be raced against it.
    pub(crate) async fn cancelled_signal(&self) {
        let mut rx = self.shared.state.subscribe();
        let _ = rx.wait_for(|s| s.cancel_requested).await;
    }

    /// *Averager side.* Completes the step with `result` (unless it already has one: the first
    /// wins) and moves it to [`Stage::Finished`] in the same change, so whoever is woken by the
    /// result already sees the final stage.
    pub(crate) fn finish(&self, result: Result<T>) {
        self.shared.state.send_if_modified(|s| {
            let mut changed = false;
            if s.result.is_none() {
                s.result = Some(result);
                changed = true;
            }
            if s.stage != Stage::Finished {
                s.stage = Stage::Finished;
                s.highest = Stage::Finished;
                changed = true;
            }
            changed
        });
    }

    /// *Averager side.* Completes the step; the first result wins (a cancel counts), later ones are
    /// ignored. Returns whether this one was taken. (The averager finishes with
    /// [`StepControl::finish`]; tests set a result apart from the stage.)
    #[cfg(test)]
    pub(crate) fn set_result(&self, result: Result<T>) -> bool {
        self.shared.state.send_if_modified(|s| {
            let first = s.result.is_none();
            if first {
                s.result = Some(result);
            }
            first
        })
    }
}

#[cfg(test)]
mod tests;
