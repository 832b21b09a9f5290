//! **\[averager\]** telling a live reducer from a dead one (protocol 4.4, 4.7).
//!
//! A reducer completes a part only when every expected sender contributed to it or was banned, so
//! a reducer that waits out a dead sender (up to `sender_timeout`) is silent for that long on every
//! other sender's reply stream. hivemind's senders time each reply with `reducer_timeout` alone, so
//! with the two timeouts close together (or a loaded machine) they take the waiting reducer for a
//! dead one, stop reading its replies, get banned from its span in turn, and one death cascades
//! into survivors averaging over arbitrary subsets.
//!
//! Here a reducer says that it is alive on every sender's reply stream while it serves that
//! stream: a `PART_PENDING` message (no tensor) every [`progress_interval`], whether it waits for
//! the other senders' parts or for this sender's next part (which may still be crossing a slow
//! link). It sends the same while the stream waits for its group to be registered here. The
//! sender's [`ReplyClock`] restarts its `reducer_timeout` at each of them, and at the moment its own
//! part for the awaited reply is handed to the transport. Only a reducer that says nothing for a
//! whole `reducer_timeout` (dead, hung, or cut off) is dropped, whatever the two timeouts are.
//!
//! Patience is bounded, so a reducer cannot keep a sender forever with `PART_PENDING` alone:
//! pending messages restart the wait for one reply only during `2 * sender_timeout +
//! reducer_timeout` after the first of them. An honest reducer answers well within that: after
//! its previous reply it waits at most `sender_timeout` for this sender's next part (or bans it
//! and says so), then at most `sender_timeout` for the other senders' parts (each arrives, or its
//! sender is banned, within `sender_timeout` of its previous part, which had arrived before the
//! previous reply was sent); the extra `reducer_timeout` covers its processing time.

use std::future::Future;
use std::time::Duration;

use averager_proto::MessageCode;
use tokio::time::Instant;

use crate::transport::AveragingData;

/// How many `PART_PENDING` messages a reducer sends per `reducer_timeout` of waiting: several,
/// so one delayed on a loaded machine or a slow link does not let the sender's clock run out.
const PENDING_PER_TIMEOUT: u32 = 4;

/// How often a waiting reducer says it is alive: a quarter of its `reducer_timeout` (members of a
/// group share their settings), or of `sender_timeout` when only that one is set. `None` when
/// neither is set: then no sender times its replies, and nothing needs saying.
pub(crate) fn progress_interval(
    sender_timeout: Option<Duration>,
    reducer_timeout: Option<Duration>,
) -> Option<Duration> {
    let timeout = reducer_timeout.or(sender_timeout)?;
    Some((timeout / PENDING_PER_TIMEOUT).max(Duration::from_millis(1)))
}

/// The message a waiting reducer sends.
pub(crate) fn pending() -> AveragingData {
    AveragingData { code: MessageCode::PartPending as i32, ..Default::default() }
}

/// Whether `message` is a reducer's "still waiting" rather than a reply.
pub(crate) fn is_pending(message: &AveragingData) -> bool {
    message.code == MessageCode::PartPending as i32
}

/// Awaits `work`, calling `say_pending` every `every` meanwhile (the caller sends [`pending`]
/// without waiting: a reply stream that is full has a reader that is not waiting, and needs none).
pub(crate) async fn with_pending<F: Future>(
    work: F,
    every: Option<Duration>,
    mut say_pending: impl FnMut(),
) -> F::Output {
    let Some(every) = every else { return work.await };
    tokio::pin!(work);
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticks.tick() => say_pending(),
        }
    }
}

/// A sender's deadline for a reducer's next reply (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct ReplyClock {
    timeout: Option<Duration>,
    /// How long `PART_PENDING` may extend one reply's wait, from the first of them.
    patience: Duration,
    /// The latest moment the clock (re)started.
    since: Instant,
    /// When the first `PART_PENDING` for the awaited reply came.
    first_pending: Option<Instant>,
}

impl ReplyClock {
    /// A clock with the sender's `reducer_timeout` (`None`: replies are awaited without limit),
    /// starting now.
    pub(crate) fn new(reducer_timeout: Option<Duration>, sender_timeout: Option<Duration>) -> Self {
        ReplyClock {
            timeout: reducer_timeout,
            patience: reducer_timeout.unwrap_or_default() + 2 * sender_timeout.unwrap_or_default(),
            since: Instant::now(),
            first_pending: None,
        }
    }

    /// A reply came: the wait for the next one starts now.
    pub(crate) fn reply(&mut self) {
        self.since = Instant::now();
        self.first_pending = None;
    }

    /// This sender's part for the awaited reply was handed to the transport just now: the reducer
    /// could not have answered before, so the wait starts over.
    pub(crate) fn part_sent(&mut self) {
        self.since = Instant::now();
    }

    /// The reducer said it is waiting for other senders. Restarts the wait unless the reducer has
    /// been saying so for longer than an honest one can.
    pub(crate) fn pending(&mut self) {
        let now = Instant::now();
        let first = *self.first_pending.get_or_insert(now);
        if now.duration_since(first) <= self.patience {
            self.since = now;
        }
    }

    /// When the reducer counts as failed if no reply has come (`None`: never).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| self.since + t)
    }

    /// The reducer timeout, for error messages.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pending_restarts_the_wait_only_within_patience() {
        let second = Duration::from_secs(1);
        let mut clock = ReplyClock::new(Some(2 * second), Some(second));
        let start = Instant::now();
        assert_eq!(clock.deadline(), Some(start + 2 * second));
        tokio::time::advance(second).await;
        clock.pending();
        assert_eq!(clock.deadline(), Some(start + 3 * second));
        // Patience is reducer + 2 x sender timeout = 4 s after the first pending message.
        tokio::time::advance(4 * second).await;
        clock.pending();
        assert_eq!(clock.deadline(), Some(start + 7 * second));
        tokio::time::advance(second / 2).await;
        clock.pending();
        assert_eq!(clock.deadline(), Some(start + 7 * second), "past patience, pending no longer counts");
        // A reply resets patience; a part sent restarts the wait.
        clock.reply();
        tokio::time::advance(second).await;
        clock.pending();
        assert_eq!(clock.deadline(), Some(Instant::now() + 2 * second));
        tokio::time::advance(second).await;
        clock.part_sent();
        assert_eq!(clock.deadline(), Some(Instant::now() + 2 * second));
    }

    #[test]
    fn without_a_reducer_timeout_there_is_no_deadline() {
        assert_eq!(ReplyClock::new(None, Some(Duration::from_secs(1))).deadline(), None);
        assert_eq!(progress_interval(None, None), None);
        assert_eq!(progress_interval(Some(Duration::from_secs(2)), None), Some(Duration::from_millis(500)));
        assert_eq!(
            progress_interval(Some(Duration::from_secs(2)), Some(Duration::from_secs(4))),
            Some(Duration::from_secs(1))
        );
    }
}
