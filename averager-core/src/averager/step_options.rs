//! protocol 8.1: the arguments of `step`, as a builder, and the checks hivemind makes at the call.
//!
//! hivemind's `wait` argument has no field here: it is the choice between `Averager::step` (waits)
//! and `Averager::step_background` (returns the control). Hence hivemind's error for
//! `wait and require_trigger` cannot happen: a waiting step with a trigger nobody can pull is not
//! expressible.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::lent::{InputLender, Lender};
use super::result_target::{ResultTarget, Target};
use super::step_control::StepControl;
use crate::error::{Error, Result};
use crate::time::DhtTime;

/// The options of one averaging step (protocol 8.1).
///
/// ```
/// # use averager_core::averager::StepOptions;
/// # use std::time::Duration;
/// let options = StepOptions::default()
///     .gather(&("batch", 32))
///     .weight(2.0)
///     .timeout(Duration::from_secs(30))
///     .require_trigger(true);
/// assert!(options.validate(0.0, false).is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct StepOptions {
    /// The msgpack encoding of the user's gather object, or why it could not be encoded. Kept
    /// private so that the builder can defer an encoding error to [`StepOptions::validate`].
    gather: Option<std::result::Result<Vec<u8>, String>>,
    /// When to start all-reduce, in DHT time; `None`: now + `min_matchmaking_time`.
    pub scheduled_time: Option<DhtTime>,
    /// This peer's weight in the average; `None`: 1.0, or 0.0 for an AUX peer.
    pub weight: Option<f64>,
    /// How long the whole step may take, retries included; `None`: no limit.
    pub timeout: Option<Duration>,
    /// Whether a failed round is retried with a new group while time remains (default true).
    pub allow_retries: bool,
    /// Whether all-reduce waits for [`StepControl::allow_allreduce`] (default false).
    pub require_trigger: bool,
    /// Where the result goes instead of the averager's own tensors (see [`StepOptions::apply_to`]).
    target: Option<Target>,
    /// Who lends the all-reduce its inputs (see [`StepOptions::lend_inputs`]).
    lender: Option<Lender>,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            gather: None,
            scheduled_time: None,
            weight: None,
            timeout: None,
            allow_retries: true,
            require_trigger: false,
            target: None,
            lender: None,
        }
    }
}

impl StepOptions {
    /// Sends `value` to every group member; the step's result maps each member to its value.
    ///
    /// The value is encoded once, now (msgpack with field names, as hivemind's `MSGPackSerializer`);
    /// a value that cannot be encoded makes [`StepOptions::validate`] fail rather than panic here.
    pub fn gather<G: Serialize + ?Sized>(mut self, value: &G) -> Self {
        self.gather = Some(rmp_serde::to_vec_named(value).map_err(|e| e.to_string()));
        self
    }

    /// Sets [`StepOptions::scheduled_time`].
    pub fn scheduled_time(mut self, time: DhtTime) -> Self {
        self.scheduled_time = Some(time);
        self
    }

    /// Sets [`StepOptions::weight`].
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Sets [`StepOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets [`StepOptions::allow_retries`].
    pub fn allow_retries(mut self, allow: bool) -> Self {
        self.allow_retries = allow;
        self
    }

    /// Sets [`StepOptions::require_trigger`].
    pub fn require_trigger(mut self, require: bool) -> Self {
        self.require_trigger = require;
        self
    }

    /// **\[averager\]** delivers the step's update to `target` instead of the averager's own
    /// tensors: `target` gets `alpha * (average - local)` for every part that came back
    /// ([`ResultTarget::apply`]), and the averager's tensors keep the values the all-reduce read
    /// (the step's inputs). See [`ResultTarget`] for when it is called; a target's error fails the
    /// step, which is then not retried.
    pub fn apply_to(mut self, target: Arc<dyn ResultTarget>) -> Self {
        self.target = Some(Target(target));
        self
    }

    /// The target given to [`StepOptions::apply_to`], if any.
    pub(crate) fn target(&self) -> Option<Arc<dyn ResultTarget>> {
        self.target.as_ref().map(|t| Arc::clone(&t.0))
    }

    /// **\[averager\]** asks `lender`, as each all-reduce of the step begins, for tensors to
    /// average in place instead of the averager's own (see [`InputLender`] and the module
    /// `lent`): no copy in before the step and none out after it. When it lends, the update goes
    /// into the lent tensors and a target given to [`StepOptions::apply_to`] is not called; when
    /// it declines, the step runs as without it.
    pub fn lend_inputs(mut self, lender: Arc<dyn InputLender>) -> Self {
        self.lender = Some(Lender(lender));
        self
    }

    /// The lender given to [`StepOptions::lend_inputs`], if any.
    pub(crate) fn lender(&self) -> Option<Arc<dyn InputLender>> {
        self.lender.as_ref().map(|l| Arc::clone(&l.0))
    }

    /// The msgpack bytes of the gather object, `None` when the user gave none (or it failed to
    /// encode, which [`StepOptions::validate`] reports).
    pub fn gather_bytes(&self) -> Option<&[u8]> {
        match &self.gather {
            Some(Ok(bytes)) => Some(bytes),
            _ => None,
        }
    }

    /// The step's deadline in DHT time for a step starting at `now`; `None`: no deadline.
    pub fn deadline(&self, now: DhtTime) -> Option<DhtTime> {
        self.timeout.map(|t| now + t.as_secs_f64())
    }

    /// The checks protocol 8.1 makes at the call, for a step starting at DHT time `now` on a peer that
    /// is (`is_aux`) or is not an AUX peer.
    ///
    /// # Errors
    /// [`Error::Config`] when the gather object could not be encoded, the weight is negative or not
    /// a finite number, or the scheduled time is not finite or not before the deadline. An explicit
    /// weight on an AUX peer is not an error, only a warning (AUX peers contribute no data).
    pub fn validate(&self, now: DhtTime, is_aux: bool) -> Result<()> {
        if let Some(Err(e)) = &self.gather {
            return Err(Error::Config(format!("gather object is not serializable: {e}")));
        }
        if let Some(weight) = self.weight {
            check_weight(weight)?;
            if is_aux {
                tracing::warn!(weight, "an AUX peer's weight is ignored: it contributes no tensors");
            }
        }
        if let Some(time) = self.scheduled_time {
            self.check_schedule(time, now)?;
        }
        Ok(())
    }

    /// Validates, fills in protocol 8.1's defaults and builds the user's handle of the step.
    ///
    /// `data_for_gather` is the protocol 2.4 payload the averager built from
    /// [`StepOptions::gather_bytes`], its bandwidth and its mode; the control only carries it.
    ///
    /// The default scheduled time is `now + min_matchmaking_time`, clamped to the deadline: a
    /// timeout shorter than `min_matchmaking_time` only shortens matchmaking (declarations expire
    /// at the deadline anyway), whereas an explicit scheduled time at or after the deadline is
    /// an error. (hivemind reads its clock twice and lets the default pass by microseconds.)
    ///
    /// # Errors
    /// As [`StepOptions::validate`].
    pub(crate) fn into_control<T: Clone + Send + Sync + 'static>(
        self,
        now: DhtTime,
        is_aux: bool,
        min_matchmaking_time: Duration,
        data_for_gather: Vec<u8>,
    ) -> Result<StepControl<T>> {
        self.validate(now, is_aux)?;
        let scheduled_time = self.scheduled_time.unwrap_or_else(|| {
            let default = now + min_matchmaking_time.as_secs_f64();
            self.deadline(now).map_or(default, |deadline| default.min(deadline))
        });
        let weight = self.weight.unwrap_or(if is_aux { 0.0 } else { 1.0 });
        StepControl::new(
            scheduled_time,
            weight,
            self.deadline(now),
            self.allow_retries,
            self.require_trigger,
            data_for_gather,
        )
    }

    fn check_schedule(&self, time: DhtTime, now: DhtTime) -> Result<()> {
        if !time.is_finite() {
            return Err(Error::Config(format!("scheduled time {time} is not a finite DHT time")));
        }
        match self.deadline(now) {
            Some(deadline) if time >= deadline => Err(Error::Config(format!(
                "scheduled time {time} does not fit within the timeout (deadline {deadline})"
            ))),
            _ => Ok(()),
        }
    }
}

/// protocol 8.2: a weight must be a finite number >= 0 (a NaN would poison every member's average).
pub(super) fn check_weight(weight: f64) -> Result<()> {
    if weight.is_finite() && weight >= 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!("weight must be a finite number >= 0, got {weight}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::averager::Stage;

    /// A value whose `Serialize` impl fails: the case the builder must survive without panicking.
    struct Unserializable;

    impl Serialize for Unserializable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refuses to serialize"))
        }
    }

    fn is_config(r: Result<()>) -> bool {
        matches!(r, Err(Error::Config(_)))
    }

    #[test]
    fn defaults_match_spec() {
        let o = StepOptions::default();
        assert!(o.allow_retries && !o.require_trigger);
        assert!(o.gather_bytes().is_none() && o.weight.is_none() && o.timeout.is_none());
        assert_eq!(o.deadline(100.0), None);
        assert!(o.validate(100.0, false).is_ok());
    }

    #[test]
    fn gather_is_named_msgpack() {
        #[derive(Serialize)]
        struct Meta {
            batch_size: u32,
        }
        let o = StepOptions::default().gather(&Meta { batch_size: 123 });
        assert_eq!(o.gather_bytes(), Some(&rmp_serde::to_vec_named(&Meta { batch_size: 123 }).unwrap()[..]));
        // Named encoding: a map with the field's name, not a bare array.
        assert_eq!(o.gather_bytes().unwrap()[0], 0x81);
    }

    #[test]
    fn unserializable_gather_is_reported_by_validate() {
        let o = StepOptions::default().gather(&Unserializable);
        assert!(o.gather_bytes().is_none());
        assert!(is_config(o.validate(0.0, false)));
    }

    #[test]
    fn bad_weights_are_refused() {
        for w in [-1.0, f64::NAN, f64::INFINITY, -0.001] {
            assert!(is_config(StepOptions::default().weight(w).validate(0.0, false)), "{w}");
        }
        for w in [0.0, 1.0, 1e6] {
            assert!(StepOptions::default().weight(w).validate(0.0, false).is_ok(), "{w}");
        }
        // AUX peers: an explicit weight is only a warning.
        assert!(StepOptions::default().weight(3.0).validate(0.0, true).is_ok());
    }

    #[test]
    fn schedule_must_fit_the_timeout() {
        let o = StepOptions::default().timeout(Duration::from_secs(2));
        assert!(o.clone().scheduled_time(101.5).validate(100.0, false).is_ok());
        assert!(is_config(o.clone().scheduled_time(102.0).validate(100.0, false)));
        assert!(is_config(o.clone().scheduled_time(f64::NAN).validate(100.0, false)));
        assert!(StepOptions::default().scheduled_time(1e12).validate(100.0, false).is_ok());
        // A default schedule past the deadline is clamped to it, not refused.
        let clamped = o.clone().into_control::<()>(100.0, false, Duration::from_secs(5), vec![]).unwrap();
        assert_eq!(clamped.scheduled_time(), 102.0);
        let explicit =
            o.scheduled_time(103.0).into_control::<()>(100.0, false, Duration::from_secs(5), vec![]);
        assert!(matches!(explicit, Err(Error::Config(_))));
    }

    #[test]
    fn into_control_fills_defaults() {
        let c = StepOptions::default()
            .timeout(Duration::from_secs(10))
            .allow_retries(false)
            .into_control::<u8>(100.0, false, Duration::from_secs(5), vec![7])
            .unwrap();
        assert_eq!((c.scheduled_time(), c.weight(), c.deadline()), (105.0, 1.0, Some(110.0)));
        assert!(!c.allow_retries() && c.triggered() && !c.require_trigger());
        assert_eq!((c.data_for_gather(), c.stage()), (&[7u8][..], Stage::Idle));

        let aux = StepOptions::default()
            .scheduled_time(50.0)
            .require_trigger(true)
            .into_control::<u8>(100.0, true, Duration::from_secs(5), vec![])
            .unwrap();
        assert_eq!((aux.scheduled_time(), aux.weight(), aux.deadline()), (50.0, 0.0, None));
        assert!(aux.require_trigger() && !aux.triggered());
        aux.cancel();
    }
}
