//! **\[averager\]** automatic bandwidth: a peer configured without `bandwidth` declares what it
//! achieved in its recent all-reduces, so load balancing gives slow peers smaller spans without
//! anyone measuring links by hand.
//!
//! **What is metered.** Every tensor-carrying message of a round, in both directions, with the
//! moment it crossed the transport boundary ([`RoundMeter`], filled by `telemetry.rs`): down,
//! the parts other members stream to this peer's reducer and the replies its sender reads; up,
//! the parts its sender hands to the transport and the replies its reducer hands over. Messages
//! on the same link from every stream count together, because they share the link.
//!
//! **A round's sample** in each direction is the best sustained rate: the most bytes carried in
//! any window a quarter as long as that direction's active period (first to last message),
//! divided by the window. Not the average over the round: a fast peer in a group with slow ones
//! spends most of the round waiting for them (every reply waits for the slowest sender's copy of
//! its part), so its average rate says how slow the others are, not what its link can do. Its
//! busiest quarter is when it came closest to its link's capacity. Not a short window either: a
//! part arrives whole (half a megabyte by default), and a window of a few parts would measure
//! message boundaries. Received bytes are the trustworthy side: they arrive no faster than the
//! link carries them. Sent bytes are taken by the transport into socket and HTTP/2 flow-control
//! buffers (megabytes per stream) well before they cross the link, which inflates the sending
//! rate; the upload sample is therefore only used as a cap, for links that upload slower than
//! they download.
//!
//! **The estimate** is, per direction, the largest sample of the last [`HISTORY`] rounds, and the
//! declared bandwidth the smaller of the two directions (download alone when nothing was sent).
//! The largest, because a sample is a lower bound of what the link can do: it can fall short
//! (the peer was held up by others, or had little to carry) but not exceed it by more than the
//! measurement's noise. An average would drift down on a fast peer whose share keeps it waiting,
//! until load balancing took its share away. The window of rounds lets a link that got slower
//! show within [`HISTORY`] rounds. The figure is declared in MB/s (10^6 bytes per second), the
//! unit to use when configuring `bandwidth` by hand in a group that mixes both. Memory is
//! bounded: at most [`MAX_EVENTS`] messages per direction and round, [`HISTORY`] samples.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::transport::AveragingData;

/// Rounds whose samples the estimate keeps.
const HISTORY: usize = 5;

/// The window of a sample is the active period divided by this.
const WINDOWS_PER_PERIOD: u32 = 4;

/// Fewer messages than this in a direction give no sample (their rate would be noise).
const MIN_EVENTS: usize = 8;

/// Active periods shorter than this give no sample (the clock's resolution and the scheduler
/// decide them, not the link).
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// Messages recorded per direction and round; more are not timed (a round has one message per
/// part and member, far fewer, unless a peer misbehaves).
const MAX_EVENTS: usize = 1 << 16;

/// Which way a metered message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// Handed by this peer to the transport.
    Up,
    /// Received by this peer from the transport.
    Down,
}

/// One metered message: when it crossed the transport boundary (since the meter started) and
/// its tensor bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Event {
    at: Duration,
    bytes: u64,
}

/// The timed messages of one round.
#[derive(Debug)]
pub(super) struct RoundMeter {
    start: Instant,
    up: Mutex<Vec<Event>>,
    down: Mutex<Vec<Event>>,
}

impl Default for RoundMeter {
    fn default() -> Self {
        RoundMeter { start: Instant::now(), up: Mutex::default(), down: Mutex::default() }
    }
}

impl RoundMeter {
    /// Records that `message` crossed the transport boundary just now, going `direction`;
    /// messages without tensor bytes are not timed.
    pub(super) fn record(&self, direction: Direction, message: &AveragingData) {
        let bytes = tensor_bytes(message);
        if bytes == 0 {
            return;
        }
        let at = self.start.elapsed();
        let events = match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        let mut events = events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.len() < MAX_EVENTS {
            events.push(Event { at, bytes });
        }
    }

    /// The round's sample (see the module docs).
    pub(super) fn sample(&self) -> RoundSample {
        let rate = |events: &Mutex<Vec<Event>>| {
            let mut events = events.lock().unwrap_or_else(PoisonError::into_inner).clone();
            best_rate(&mut events)
        };
        RoundSample { up: rate(&self.up), down: rate(&self.down) }
    }
}

/// What one round showed, in bytes per second (`None`: too little traffic to tell).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct RoundSample {
    up: Option<f64>,
    down: Option<f64>,
}

/// The most bytes that `events` carried in any window of a [`WINDOWS_PER_PERIOD`]th of their
/// active period, per second of that window. A message counts in the windows that end at or
/// after its moment and start strictly before it: its bytes crossed during the time before.
fn best_rate(events: &mut [Event]) -> Option<f64> {
    // Threads record concurrently, so moments can be slightly out of order.
    events.sort_by_key(|e| e.at);
    let (first, last) = (events.first()?, events.last()?);
    let period = last.at.saturating_sub(first.at);
    if events.len() < MIN_EVENTS || period < MIN_PERIOD {
        return None;
    }
    let window = period / WINDOWS_PER_PERIOD;
    // Windows that start at a message's moment are the only ones worth trying: moving a window's
    // start later, up to the next message, loses nothing and may take in more at its end.
    let (mut best, mut end, mut carried) = (0u64, 0usize, 0u64);
    for (i, start) in events.iter().enumerate() {
        if end <= i {
            end = i + 1;
            carried = 0;
        }
        while end < events.len() && events[end].at <= start.at + window {
            carried += events[end].bytes;
            end += 1;
        }
        best = best.max(carried);
        // The next window starts at the next message, which it no longer counts.
        if i + 1 < end {
            carried -= events[i + 1].bytes;
        }
    }
    Some(best as f64 / window.as_secs_f64())
}

/// This peer's estimate from its recent rounds' samples.
#[derive(Debug, Default)]
pub(crate) struct BandwidthEstimator {
    /// The last [`HISTORY`] rounds that gave a sample, oldest first.
    samples: Mutex<VecDeque<RoundSample>>,
}

impl BandwidthEstimator {
    /// The bandwidth to declare: the configured one when there is one, else the estimate (`None`
    /// before the first measured all-reduce: the group's mean).
    pub(crate) fn declared(&self, configured: Option<f64>) -> Option<f64> {
        configured.or_else(|| self.estimate())
    }

    /// The current estimate in MB/s: per direction the largest recent sample, and the smaller of
    /// the two directions.
    pub(crate) fn estimate(&self) -> Option<f64> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let largest = |of: fn(&RoundSample) -> Option<f64>| samples.iter().filter_map(of).reduce(f64::max);
        let (up, down) = (largest(|s| s.up), largest(|s| s.down));
        let bytes_per_second = match (up, down) {
            (Some(up), Some(down)) => up.min(down),
            (up, down) => down.or(up)?,
        };
        Some(bytes_per_second / 1e6)
    }

    /// Keeps one round's sample; a sample with no direction measured, or a rate that is not a
    /// finite positive number, changes nothing.
    pub(super) fn record(&self, sample: RoundSample) {
        let valid = |rate: Option<f64>| rate.filter(|r| r.is_finite() && *r > 0.0);
        let sample = RoundSample { up: valid(sample.up), down: valid(sample.down) };
        if sample.up.is_none() && sample.down.is_none() {
            return;
        }
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == HISTORY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

fn tensor_bytes(message: &AveragingData) -> u64 {
    message.tensor_part.as_ref().map_or(0, |t| t.buffer.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// `count` messages of `bytes` each, `every` apart, starting at `from`.
    fn steady(from: Duration, every: Duration, count: u32, bytes: u64) -> Vec<Event> {
        (0..count).map(|k| Event { at: from + every * k, bytes }).collect()
    }

    fn sample(up: Option<f64>, down: Option<f64>) -> RoundSample {
        RoundSample { up, down }
    }

    #[test]
    fn a_steady_stream_gives_its_rate() {
        // 1 MB every 10 ms for a second: 100 MB/s, whatever the window.
        let mut events = steady(Duration::ZERO, 10 * MS, 101, 1_000_000);
        let rate = best_rate(&mut events).unwrap();
        assert!((rate - 100e6).abs() < 1e-6 * 100e6, "{rate}");
    }

    #[test]
    fn the_busiest_quarter_counts_not_the_average() {
        // 400 ms at 50 MB/s, then 1.2 s trickling at 5 MB/s (waiting for slow members).
        let mut events = steady(Duration::ZERO, 10 * MS, 41, 500_000);
        events.extend(steady(410 * MS, 100 * MS, 12, 500_000));
        events.reverse(); // recorded out of order
        let rate = best_rate(&mut events).unwrap();
        // The period is 1.51 s, the window 377.5 ms: 37 of the fast messages after the first.
        let expected = 37.0 * 500_000.0 / 0.3775;
        assert!((rate - expected).abs() < 1e-6 * expected, "{rate} vs {expected}");
        assert!(rate > 45e6);
    }

    #[test]
    fn too_little_traffic_gives_no_rate() {
        assert_eq!(best_rate(&mut []), None);
        assert_eq!(best_rate(&mut steady(Duration::ZERO, 10 * MS, 7, 1_000)), None, "too few messages");
        assert_eq!(best_rate(&mut steady(Duration::ZERO, MS / 10, 50, 1_000)), None, "too short");
    }

    #[test]
    fn only_tensor_bytes_are_metered_and_events_are_bounded() {
        let meter = RoundMeter::default();
        meter.record(Direction::Down, &AveragingData::default());
        assert!(meter.down.lock().unwrap().is_empty());
        let part = AveragingData {
            tensor_part: Some(crate::compression::WireTensor {
                buffer: vec![0u8; 10].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for _ in 0..MAX_EVENTS + 5 {
            meter.record(Direction::Up, &part);
        }
        assert_eq!(meter.up.lock().unwrap().len(), MAX_EVENTS);
        assert!(meter.down.lock().unwrap().is_empty());
    }

    #[test]
    fn the_estimate_is_the_slower_direction_of_the_best_recent_rounds() {
        let estimator = BandwidthEstimator::default();
        assert_eq!(estimator.declared(None), None);
        estimator.record(sample(Some(30e6), Some(20e6)));
        assert_eq!(estimator.estimate(), Some(20.0));
        // A round where this peer waited on others does not pull the estimate down.
        estimator.record(sample(Some(12e6), Some(8e6)));
        assert_eq!(estimator.estimate(), Some(20.0));
        // The upload caps the download (an asymmetric link).
        estimator.record(sample(Some(5e6), Some(40e6)));
        assert_eq!(estimator.estimate(), Some(30.0));
        // Nothing sent: the download alone; nothing valid: no change.
        let download_only = BandwidthEstimator::default();
        download_only.record(sample(None, Some(7e6)));
        for bad in [0.0, -3.0, f64::NAN, f64::INFINITY] {
            download_only.record(sample(Some(bad), Some(bad)));
        }
        assert_eq!(download_only.estimate(), Some(7.0));
        assert_eq!(download_only.declared(Some(3.0)), Some(3.0), "a configured bandwidth wins");
    }

    #[test]
    fn old_rounds_leave_the_window() {
        let estimator = BandwidthEstimator::default();
        estimator.record(sample(None, Some(100e6)));
        for _ in 0..HISTORY - 1 {
            estimator.record(sample(None, Some(10e6)));
        }
        assert_eq!(estimator.estimate(), Some(100.0));
        estimator.record(sample(None, Some(10e6)));
        assert_eq!(estimator.estimate(), Some(10.0), "the link got slower");
    }
}
