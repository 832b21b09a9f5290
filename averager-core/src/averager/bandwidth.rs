//! **\[averager\]** automatic bandwidth: a peer configured without `bandwidth` declares what it
//! achieved in its recent all-reduces, so load balancing gives slow peers smaller spans without
//! anyone measuring links by hand.
//!
//! During an all-reduce, the sender's calls to each reducer (one `rpc_aggregate_part` stream per
//! member) are metered: the tensor bytes of its parts, and the time the transport took to take
//! them all (it takes them as fast as it can send them: the sender produces parts ahead of the
//! replies). Replies are not timed: a reducer answers a part only once every sender's copy of it
//! arrived, so every reply stream runs at the slowest member's pace. A slow peer is slow on every
//! one of its streams, while a fast peer is slow only on its streams to slow members. Its streams
//! run at the same time and share its link, so the round's sample is the median stream's rate
//! times the number of streams: the median rather than the fastest, because socket and flow-control
//! buffers let a stream's last parts be taken before they cross the link, which makes single
//! streams look faster than the link (`bench/wan.sh` showed the fastest-stream estimate
//! overshooting 200 Mbit/s links many times over). Samples are smoothed with an exponentially
//! weighted moving average and declared in MB/s (10^6 bytes per second), the unit to use when
//! configuring `bandwidth` by hand in a group that mixes both.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

use crate::transport::{AveragingData, RequestStream};

/// Weight of the newest sample in the moving average: half, so the estimate follows a changed
/// link within a few rounds without jumping at every noisy one.
const SMOOTHING: f64 = 0.5;

/// Streams shorter than this are not timed (their rate would be noise, and an empty span's stream
/// carries no information).
const MIN_STREAM_TIME: Duration = Duration::from_micros(100);

/// The bytes and duration of one metered stream.
#[derive(Debug, Clone, Copy)]
struct StreamRecord {
    bytes: u64,
    elapsed: Duration,
}

/// What one all-reduce's streams carried.
#[derive(Debug, Default)]
pub(crate) struct RoundMeter {
    streams: Mutex<Vec<StreamRecord>>,
}

impl RoundMeter {
    fn record(&self, record: StreamRecord) {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner).push(record);
    }

    /// The round's sample in MB/s: the median stream's rate times the number of streams that
    /// carried tensor bytes; `None` when no stream did.
    pub(crate) fn sample(&self) -> Option<f64> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let timed: Vec<&StreamRecord> =
            streams.iter().filter(|s| s.bytes > 0 && s.elapsed >= MIN_STREAM_TIME).collect();
        let mut rates: Vec<f64> = timed.iter().map(|s| s.bytes as f64 / s.elapsed.as_secs_f64()).collect();
        rates.sort_by(f64::total_cmp);
        let median = match rates.len() {
            0 => return None,
            n if n % 2 == 1 => rates[n / 2],
            n => (rates[n / 2 - 1] + rates[n / 2]) / 2.0,
        };
        (median > 0.0).then(|| median * rates.len() as f64 / 1e6)
    }
}

/// This peer's smoothed estimate.
#[derive(Debug, Default)]
pub(crate) struct BandwidthEstimator {
    estimate: Mutex<Option<f64>>,
}

impl BandwidthEstimator {
    /// The bandwidth to declare: the configured one when there is one, else the estimate (`None`
    /// before the first measured all-reduce: the group's mean).
    pub(crate) fn declared(&self, configured: Option<f64>) -> Option<f64> {
        configured.or_else(|| self.estimate())
    }

    /// The current estimate in MB/s.
    pub(crate) fn estimate(&self) -> Option<f64> {
        *self.estimate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Folds in one round's sample (MB/s); non-finite or non-positive samples are ignored.
    pub(crate) fn record(&self, sample: f64) {
        if !(sample.is_finite() && sample > 0.0) {
            return;
        }
        let mut estimate = self.estimate.lock().unwrap_or_else(PoisonError::into_inner);
        *estimate = Some(match *estimate {
            Some(previous) => previous + SMOOTHING * (sample - previous),
            None => sample,
        });
    }
}

fn tensor_bytes(message: &AveragingData) -> u64 {
    message.tensor_part.as_ref().map_or(0, |t| t.buffer.len() as u64)
}

/// Counts a request stream's tensor bytes (for the transport that counts a round's traffic,
/// `telemetry.rs`) and records them with the time the transport took to
/// take them all, when the last one is taken.
pub(crate) fn metered_requests(
    requests: RequestStream<AveragingData>,
    meter: Arc<RoundMeter>,
) -> impl Stream<Item = AveragingData> + Send + 'static {
    let started = Instant::now();
    futures::stream::unfold((requests, meter, 0u64), move |(mut requests, meter, bytes)| async move {
        match requests.next().await {
            Some(message) => {
                let bytes = bytes + tensor_bytes(&message);
                Some((message, (requests, meter, bytes)))
            }
            None => {
                meter.record(StreamRecord { bytes, elapsed: started.elapsed() });
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_an_ewma_of_positive_samples() {
        let estimator = BandwidthEstimator::default();
        assert_eq!(estimator.declared(None), None);
        estimator.record(100.0);
        assert_eq!(estimator.estimate(), Some(100.0));
        estimator.record(50.0);
        assert_eq!(estimator.estimate(), Some(75.0));
        for bad in [0.0, -3.0, f64::NAN, f64::INFINITY] {
            estimator.record(bad);
        }
        assert_eq!(estimator.estimate(), Some(75.0));
        assert_eq!(estimator.declared(Some(7.0)), Some(7.0), "a configured bandwidth wins");
        assert_eq!(estimator.declared(None), Some(75.0));
    }

    #[test]
    fn a_round_sample_is_the_median_stream_times_the_stream_count() {
        let meter = RoundMeter::default();
        assert_eq!(meter.sample(), None);
        meter.record(StreamRecord { bytes: 1_000_000, elapsed: Duration::from_secs(1) });
        meter.record(StreamRecord { bytes: 4_000_000, elapsed: Duration::from_secs(1) });
        // Untimed streams (no bytes, or too short to time) count neither as rate nor as streams.
        meter.record(StreamRecord { bytes: 0, elapsed: Duration::from_secs(1) });
        meter.record(StreamRecord { bytes: 10, elapsed: Duration::from_nanos(5) });
        // Median of 1 and 4 MB/s, times 2 streams.
        assert_eq!(meter.sample(), Some(5.0));
        meter.record(StreamRecord { bytes: 100_000_000, elapsed: Duration::from_secs(1) });
        // One stream far above the others does not carry the sample: median 4, times 3.
        assert_eq!(meter.sample(), Some(12.0));
    }
}
