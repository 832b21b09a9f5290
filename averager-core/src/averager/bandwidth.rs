//! **\[averager\]** automatic bandwidth: a peer configured without `bandwidth` declares what it
//! achieved in its recent all-reduces, so load balancing gives slow peers smaller spans without
//! anyone measuring links by hand.
//!
//! During an all-reduce, everything the peer's uplink carries of the round is metered: its
//! sender's calls to each reducer (one `rpc_aggregate_part` stream per member, metered by the
//! round's transport) and its reducer's reply streams to each sender (metered by the service,
//! into the same round's tally): when the transport took each part's or reply's tensor bytes (it
//! takes them as fast as its buffers drain, and both sides produce ahead). The round's sample is
//! the busiest window: the most bytes all streams together had taken in any window of a quarter
//! of the round, at most [`MAX_WINDOW`], divided by its length.
//!
//! Why replies count too: parts and replies share the uplink. Parts alone fill it only until the
//! first replies start (well under a second on `bench/wan.sh`'s links), then carry a varying
//! share of it, so their busiest window told equal 200 Mbit/s links apart by up to 1.7x
//! (14-26 MB/s); with replies the same links gave 23.6-27.8 MB/s in round 1 and 25.8-27.3 MB/s
//! from round 3 on (the link's payload rate is about 24 MB/s: what the sockets take runs a little
//! ahead of the wire).
//!
//! Why the busiest window and not the round's average: a reducer reads a sender's next part only
//! once every sender's copy of the previous one arrived, so after the first second or so every
//! stream of the group runs at the slowest member's pace, and on links of 50/100/200/400 Mbit/s
//! all four peers carry the same bytes in the same time (`bench/wan.sh` measured 3.3-5.5 MB/s
//! for all of them with the median stream's rate times the stream count). Before that, while
//! the reducers' socket buffers fill, each sender's streams run as fast as its link and the
//! reducers' links let them: there the 400 Mbit/s peer took parts at about 3x the slowest one's
//! rate. The slowest link is full all round, so its busiest window is its rate. Each stream's
//! first part is not counted: it is taken at once into empty buffers, before it crossed
//! anything; windows of a second dilute what else the buffers take early.
//!
//! The busiest window is still noisy (socket buffers take bursts), and load balancing magnifies
//! differences, so the plan treats bandwidths within a margin of
//! each other as equal (`merge_close_bandwidths` in `allreduce/load_balancing.rs`). Samples
//! are smoothed with an exponentially weighted moving average and declared in MB/s (10^6 bytes
//! per second), the unit to use when configuring `bandwidth` by hand in a group that mixes both.
//! `RUST_LOG=averager_core::averager::round=debug` logs each round's part timelines and sample.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

use crate::error::Result;
use crate::transport::{AveragingData, MessageStream, RequestStream};

/// Weight of the newest sample in the moving average: half, so the estimate follows a changed
/// link within a few rounds without jumping at every noisy one.
const SMOOTHING: f64 = 0.5;

/// The longest window [`busiest_rate`] looks at: long enough to average out the bursts of a
/// busy machine's scheduler, short enough to fit into the first phase of a round (before the
/// group runs at its slowest member's pace), which lasted 0.5-1 s on `bench/wan.sh`'s links.
const MAX_WINDOW: Duration = Duration::from_secs(1);

/// The shortest window: a round whose parts were all taken at once (an in-process transport)
/// still gives a finite rate.
const MIN_WINDOW: Duration = Duration::from_micros(100);

/// One metered stream, in offsets from the round's start: when it opened, when and how many
/// tensor bytes the transport took of each part, and when it ended.
#[derive(Debug, Clone, Default)]
struct StreamRecord {
    opened: Duration,
    taken: Vec<(Duration, u64)>,
    closed: Duration,
}

/// What one all-reduce's streams carried.
#[derive(Debug)]
pub(crate) struct RoundMeter {
    origin: Instant,
    streams: Mutex<Vec<StreamRecord>>,
}

impl Default for RoundMeter {
    fn default() -> Self {
        RoundMeter { origin: Instant::now(), streams: Mutex::new(Vec::new()) }
    }
}

impl RoundMeter {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, Vec<StreamRecord>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new stream, opened now; its index for [`took`](Self::took) and [`close`](Self::close).
    fn open(&self) -> usize {
        let mut streams = self.streams();
        streams.push(StreamRecord { opened: self.now(), ..StreamRecord::default() });
        streams.len() - 1
    }

    /// The transport took `bytes` tensor bytes of stream `stream` now. Recorded at once, not when
    /// the stream ends: a round's sample is taken while its last reply streams still run.
    fn took(&self, stream: usize, bytes: u64) {
        let now = self.now();
        if let Some(record) = self.streams().get_mut(stream) {
            record.taken.push((now, bytes));
        }
    }

    fn close(&self, stream: usize) {
        let now = self.now();
        if let Some(record) = self.streams().get_mut(stream) {
            record.closed = now;
        }
    }

    /// The round's sample in MB/s ([`busiest_rate`] of its streams); `None` when no stream
    /// carried more than one part.
    pub(crate) fn sample(&self) -> Option<f64> {
        busiest_rate(&self.streams())
    }

    /// Tensor bytes taken over all streams so far.
    #[cfg(test)]
    pub(crate) fn bytes_taken(&self) -> u64 {
        self.streams().iter().flat_map(|s| s.taken.iter().map(|&(_, b)| b)).sum()
    }

    /// The streams' timelines in milliseconds, for a debug log: `opened-closed:t/bytes,...` per
    /// stream, `;` between streams.
    pub(crate) fn timelines(&self) -> String {
        let streams = self.streams();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        streams
            .iter()
            .map(|s| {
                let parts: Vec<String> = s.taken.iter().map(|&(t, b)| format!("{:.1}/{b}", ms(t))).collect();
                format!("{:.1}-{:.1}:{}", ms(s.opened), ms(s.closed), parts.join(","))
            })
            .collect::<Vec<_>>()
            .join(";")
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

/// The most tensor bytes per second (in MB/s) that `streams` together were taken at, over any
/// window of a quarter of the time from their first part to their last one (at least
/// [`MIN_WINDOW`], at most [`MAX_WINDOW`]), without each stream's first part. `None` without
/// such bytes.
fn busiest_rate(streams: &[StreamRecord]) -> Option<f64> {
    let start = streams.iter().filter_map(|s| s.taken.first()).map(|&(t, _)| t).min()?;
    let mut taken: Vec<(Duration, u64)> =
        streams.iter().flat_map(|s| s.taken.iter().skip(1).copied()).filter(|&(_, b)| b > 0).collect();
    taken.sort_unstable_by_key(|&(t, _)| t);
    let end = taken.last()?.0;
    let window = ((end - start) / 4).clamp(MIN_WINDOW, MAX_WINDOW);
    // Windows `(from, from + window]` (`[start, start + window]` for the first) starting at the
    // first part or at any taken part, as long as they fit before the last one (or, for a round
    // shorter than a window, the first one).
    let last_start = end.saturating_sub(window).max(start);
    let mut best = 0u64;
    let (mut inside, mut head, mut tail) = (0u64, 0usize, 0usize);
    let starts = std::iter::once(start).chain(taken.iter().map(|&(t, _)| t)).take_while(|&t| t <= last_start);
    for from in starts {
        while head < taken.len() && taken[head].0 <= from + window {
            inside += taken[head].1;
            head += 1;
        }
        // The first window also holds what was taken at the very first instant.
        while tail < head && taken[tail].0 <= from && from > start {
            inside -= taken[tail].1;
            tail += 1;
        }
        best = best.max(inside);
    }
    let rate = best as f64 / window.as_secs_f64() / 1e6;
    (rate > 0.0).then_some(rate)
}

fn tensor_bytes(message: &AveragingData) -> u64 {
    message.tensor_part.as_ref().map_or(0, |t| t.buffer.len() as u64)
}

/// Passes a stream through and records in `meter` when the transport took each item's tensor
/// bytes (`bytes_of`; items without any are not recorded) and when the stream ended.
fn metered<S>(stream: S, meter: Arc<RoundMeter>, bytes_of: fn(&S::Item) -> u64) -> impl Stream<Item = S::Item>
where
    S: Stream + Unpin,
{
    let index = meter.open();
    futures::stream::unfold((stream, meter), move |(mut stream, meter)| async move {
        match stream.next().await {
            Some(item) => {
                let bytes = bytes_of(&item);
                if bytes > 0 {
                    meter.took(index, bytes);
                }
                Some((item, (stream, meter)))
            }
            None => {
                meter.close(index);
                None
            }
        }
    })
}

/// A sender's part stream to one reducer, metered into `meter`.
pub(crate) fn metered_requests(
    requests: RequestStream<AveragingData>,
    meter: Arc<RoundMeter>,
) -> impl Stream<Item = AveragingData> + Send + 'static {
    metered(requests, meter, tensor_bytes)
}

/// A reducer's reply stream to one sender, metered into `meter`: replies leave by the same
/// uplink as this peer's parts, so a sample of both is what the link carried.
pub(crate) fn metered_replies(
    replies: MessageStream<AveragingData>,
    meter: Arc<RoundMeter>,
) -> impl Stream<Item = Result<AveragingData>> + Send + 'static {
    metered(replies, meter, |reply| reply.as_ref().map_or(0, tensor_bytes))
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

    const MB: u64 = 1_000_000;

    /// A stream of `parts` parts of `bytes` each, taken at `rate` bytes per second from `from`
    /// on (the first at `from`).
    fn steady(from: Duration, parts: usize, bytes: u64, rate: f64) -> Vec<(Duration, u64)> {
        (0..parts).map(|k| (from + Duration::from_secs_f64(k as f64 * bytes as f64 / rate), bytes)).collect()
    }

    fn stream(taken: Vec<(Duration, u64)>) -> StreamRecord {
        let closed = taken.last().map_or(Duration::ZERO, |&(t, _)| t);
        StreamRecord { opened: Duration::ZERO, taken, closed }
    }

    /// One equal-share round of 4 peers x 64 MB as `bench/wan.sh` showed it, for a peer whose
    /// link takes `link` MB/s when the slowest member's takes `slowest`: each of its three streams
    /// of 32 parts runs at a third of its link until it is 10 parts (the reducers' socket buffers)
    /// ahead of the slowest member's stream, then stays that far ahead.
    fn lockstep_round(link: f64, slowest: f64) -> Vec<StreamRecord> {
        let part = MB / 2;
        let (own, pace) = (part as f64 / (link / 3.0 * 1e6), part as f64 / (slowest / 3.0 * 1e6));
        let time =
            |k: usize| Duration::from_secs_f64((k as f64 * own).max(k.saturating_sub(10) as f64 * pace));
        (0..3).map(|_| stream((0..32).map(|k| (time(k), part)).collect())).collect()
    }

    fn close(value: Option<f64>, expected: f64, tolerance: f64) -> bool {
        value.is_some_and(|v| (v - expected).abs() <= tolerance * expected)
    }

    #[test]
    fn the_busiest_window_tells_links_apart_that_the_whole_round_does_not() {
        // Links of 50/100/200/400 Mbit/s: 6.25/12.5/25/50 MB/s.
        let samples: Vec<Option<f64>> =
            [6.25, 12.5, 25.0, 50.0].iter().map(|&link| busiest_rate(&lockstep_round(link, 6.25))).collect();
        // The slowest link is full all round; the others show their rate (up to what the
        // reducers' links take: here at most twice the slowest) in the first second.
        assert!(close(samples[0], 6.25, 0.15), "{samples:?}");
        assert!(close(samples[1], 12.5, 0.15), "{samples:?}");
        assert!(samples[2].unwrap() > 1.7 * samples[0].unwrap(), "{samples:?}");
        assert!(samples[3].unwrap() > 1.7 * samples[0].unwrap(), "{samples:?}");
        // The slowest member's stream is the last to end: the others only ran ahead by the
        // buffers' 10 parts.
        let ends: Vec<Duration> =
            [6.25, 50.0].iter().map(|&link| lockstep_round(link, 6.25)[0].closed).collect();
        assert!(ends[1] > ends[0] / 2, "{ends:?}");
    }

    #[test]
    fn replies_and_parts_together_show_the_link_that_parts_alone_do_not() {
        // A 25 MB/s uplink: for 0.4 s it carries only this peer's parts (3 streams), then half
        // parts and half replies (3 streams) until 5 s. Parts alone never fill a window of a second.
        let part = MB / 4;
        let third = 25e6 / 3.0;
        let early = Duration::from_millis(400);
        let mut parts: Vec<StreamRecord> = (0..3)
            .map(|_| {
                let mut taken = steady(Duration::ZERO, 14, part, third);
                taken.extend(steady(early + Duration::from_millis(30), 76, part, third / 2.0));
                stream(taken)
            })
            .collect();
        let alone = busiest_rate(&parts).unwrap();
        assert!(alone < 20.0, "parts alone: {alone}");
        parts.extend((0..3).map(|_| stream(steady(early, 77, part, third / 2.0))));
        assert!(close(busiest_rate(&parts), 25.0, 0.1), "{:?}", busiest_rate(&parts));
    }

    #[test]
    fn equal_links_give_samples_near_their_rate() {
        // Four streams at 25 MB/s together with a few parts taken in bursts.
        let mut round: Vec<StreamRecord> =
            (0..3).map(|_| stream(steady(Duration::ZERO, 32, MB / 2, 25e6 / 3.0))).collect();
        round[0].taken[5].0 = round[0].taken[3].0;
        round[1].taken[9].0 = round[1].taken[7].0;
        assert!(close(busiest_rate(&round), 25.0, 0.1), "{:?}", busiest_rate(&round));
    }

    #[test]
    fn a_first_part_taken_into_empty_buffers_does_not_count() {
        // 40 MB taken at once, then 1 MB every 100 ms for 4 s: 10 MB/s, not 50.
        let mut taken = vec![(Duration::ZERO, 40 * MB)];
        taken.extend(steady(Duration::from_millis(100), 40, MB, 10e6));
        assert!(close(busiest_rate(&[stream(taken)]), 10.0, 0.1));
    }

    #[test]
    fn rounds_without_a_second_part_have_no_sample() {
        assert_eq!(busiest_rate(&[]), None);
        let single = stream(vec![(Duration::from_millis(3), MB)]);
        assert_eq!(busiest_rate(&[single.clone(), single]), None);
        assert_eq!(busiest_rate(&[stream(Vec::new())]), None);
        // Parts all taken at the same instant still give a finite rate.
        let instant = stream(vec![(Duration::ZERO, MB); 4]);
        let rate = busiest_rate(&[instant]).unwrap();
        assert!(rate.is_finite() && rate > 0.0);
    }

    #[test]
    fn the_meter_records_what_the_transport_took() {
        let meter = Arc::new(RoundMeter::default());
        let part = |bytes: usize| AveragingData {
            tensor_part: Some(crate::compression::WireTensor {
                buffer: vec![0u8; bytes].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let requests: RequestStream<AveragingData> =
            Box::pin(futures::stream::iter(vec![part(10), part(0), part(7)]));
        let passed: Vec<AveragingData> =
            futures::executor::block_on(metered_requests(requests, Arc::clone(&meter)).collect());
        assert_eq!(passed.len(), 3);
        let bytes: Vec<u64> = meter.streams.lock().unwrap()[0].taken.iter().map(|&(_, b)| b).collect();
        assert_eq!(bytes, [10, 7], "parts without tensor bytes are not recorded");
        assert!(!meter.timelines().is_empty());

        // Replies go into the same meter, errors and all, as a stream of their own.
        let replies: MessageStream<AveragingData> = Box::pin(futures::stream::iter(vec![
            Ok(part(5)),
            Err(crate::Error::Internal("broken".into())),
            Ok(part(3)),
        ]));
        let passed: Vec<_> =
            futures::executor::block_on(metered_replies(replies, Arc::clone(&meter)).collect());
        assert_eq!(passed.len(), 3);
        assert_eq!(meter.streams.lock().unwrap().len(), 2);
        assert_eq!(meter.bytes_taken(), 10 + 7 + 5 + 3);
    }
}
