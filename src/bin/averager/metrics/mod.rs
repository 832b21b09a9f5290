//! `averager node --metrics ADDR`: the node's Prometheus metrics, recorded from what each step
//! returns (its [`StepReport`], or its error) and from state downloads, and served as text over
//! HTTP ([`serve`]).
//!
//! The library emits no metrics itself: a step hands its figures back, and this module turns them
//! into counters and histograms. That keeps the core free of any metrics crate, and lets other
//! embedders (Python, an application) record the same figures their own way.

mod http;

use std::sync::Arc;
use std::time::Duration;

use averager::{Error, StepReport};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub(crate) use http::serve;

/// One label, e.g. `outcome="success"`.
type Label = [(&'static str, String); 1];

/// The node's metrics: cheap to clone (every metric is shared).
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Arc<Registry>,
    steps: Family<Label, Counter>,
    failures: Family<Label, Counter>,
    bytes_sent: Counter,
    bytes_received: Counter,
    allreduce_seconds: Histogram,
    matchmaking_seconds: Histogram,
    group_size: Histogram,
    state_downloads: Family<Label, Counter>,
}

impl Metrics {
    /// Every metric at zero, registered under `averager_`.
    pub(crate) fn new() -> Self {
        let steps = Family::<Label, Counter>::default();
        let failures = Family::<Label, Counter>::default();
        let (bytes_sent, bytes_received) = (Counter::default(), Counter::default());
        // 10 ms .. ~80 s: a loopback round of a few MB up to one that waits out a dead peer.
        let allreduce_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let matchmaking_seconds = Histogram::new(exponential_buckets(0.1, 2.0, 10));
        let group_size = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        let state_downloads = Family::<Label, Counter>::default();
        let mut registry = Registry::with_prefix("averager");
        registry.register("steps", "Averaging steps by outcome (success or failure)", steps.clone());
        registry.register(
            "step_failures",
            "Failed steps by message code (the protocol code, else the error kind)",
            failures.clone(),
        );
        registry.register("bytes_sent", "Bytes of all-reduce parts this node sent", bytes_sent.clone());
        registry.register(
            "bytes_received",
            "Bytes of all-reduce parts this node received",
            bytes_received.clone(),
        );
        registry.register(
            "allreduce_seconds",
            "Duration of successful all-reduces",
            allreduce_seconds.clone(),
        );
        registry.register(
            "matchmaking_seconds",
            "Time successful steps spent looking for a group",
            matchmaking_seconds.clone(),
        );
        registry.register("group_size", "Members of the groups this node averaged in", group_size.clone());
        registry.register(
            "state_downloads",
            "State downloads at start by outcome (loaded, none, failed)",
            state_downloads.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            steps,
            failures,
            bytes_sent,
            bytes_received,
            allreduce_seconds,
            matchmaking_seconds,
            group_size,
            state_downloads,
        }
    }

    /// A successful step.
    pub(crate) fn step_succeeded(&self, report: &StepReport) {
        self.steps.get_or_create(&[("outcome", "success".into())]).inc();
        self.bytes_sent.inc_by(report.bytes_sent);
        self.bytes_received.inc_by(report.bytes_received);
        self.allreduce_seconds.observe(report.all_reduce.as_secs_f64());
        self.matchmaking_seconds.observe(report.matchmaking.as_secs_f64());
        self.group_size.observe(report.group_size as f64);
    }

    /// A failed step.
    pub(crate) fn step_failed(&self, error: &Error) {
        self.steps.get_or_create(&[("outcome", "failure".into())]).inc();
        self.failures.get_or_create(&[("code", failure_code(error))]).inc();
    }

    /// A state download at start: `loaded`, `none` (no donor delivered) or `failed`.
    pub(crate) fn state_download(&self, outcome: &'static str) {
        self.state_downloads.get_or_create(&[("outcome", outcome.into())]).inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The wire code a failure carries (`CANCELLED`, `PROTOCOL_VIOLATION`, ...), else its kind in the
/// same style (`NO_GROUP`, `TIMEOUT`, ...): a small, fixed set of label values.
fn failure_code(error: &Error) -> String {
    if let Some(code) = error.message_code() {
        return code.as_str_name().to_string();
    }
    let kind = format!("{:?}", error.kind());
    let mut code = String::with_capacity(kind.len() + 4);
    for (i, c) in kind.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            code.push('_');
        }
        code.push(c.to_ascii_uppercase());
    }
    code
}

/// Seconds as a short decimal for log lines.
pub(crate) fn secs(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_labelled_by_wire_code_or_kind() {
        assert_eq!(failure_code(&Error::NoGroup("alone".into())), "NO_GROUP");
        assert_eq!(failure_code(&Error::Cancelled("bye".into())), "CANCELLED");
        let refused = Error::protocol(averager::proto::MessageCode::ProtocolViolation, "x");
        assert_eq!(failure_code(&refused), "PROTOCOL_VIOLATION");
        assert_eq!(failure_code(&Error::timeout("x", Duration::from_secs(1))), "TIMEOUT");
    }

    #[test]
    fn a_step_shows_in_the_text() {
        let metrics = Metrics::new();
        let mut report = StepReport::default();
        (report.group_size, report.bytes_sent, report.bytes_received) = (4, 1000, 900);
        metrics.step_succeeded(&report);
        metrics.step_failed(&Error::NoGroup("alone".into()));
        metrics.state_download("loaded");
        let text = metrics.encode();
        assert!(text.contains("averager_steps_total{outcome=\"success\"} 1"), "{text}");
        assert!(text.contains("averager_step_failures_total{code=\"NO_GROUP\"} 1"), "{text}");
        assert!(text.contains("averager_bytes_sent_total 1000"), "{text}");
        assert!(text.contains("averager_group_size_count 1"), "{text}");
        assert!(text.contains("averager_state_downloads_total{outcome=\"loaded\"} 1"), "{text}");
    }
}
