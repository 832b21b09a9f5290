//! Numbers for people and for scripts: medians, algbw, the bench table and its JSON line.
//!
//! algbw is the tensor bytes one peer averages divided by the all-reduce seconds, in MB/s with
//! MB = 10^6 bytes: the figure the benchmarks of other systems report per peer.

use std::time::Duration;

use serde_json::json;

/// Bytes of an f32 tensor of `floats` elements.
pub(crate) fn tensor_bytes(floats: usize) -> f64 {
    floats as f64 * 4.0
}

/// algbw in MB/s: `bytes` averaged in `seconds`.
pub(crate) fn algbw_mb_s(bytes: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { bytes / seconds / 1e6 } else { f64::INFINITY }
}

/// The median (mean of the middle two for an even count); `None` for no values.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

/// The smallest value; `None` for no values.
pub(crate) fn min(values: &[f64]) -> Option<f64> {
    values.iter().copied().filter(|v| !v.is_nan()).min_by(f64::total_cmp)
}

/// Seconds of a duration.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// What a benchmark run measured, ready to print.
#[derive(Debug, Clone)]
pub(crate) struct BenchSummary {
    /// Transport name.
    pub(crate) transport: &'static str,
    /// DHT name.
    pub(crate) dht: &'static str,
    /// Codec name.
    pub(crate) compression: String,
    /// Peers in the group.
    pub(crate) peers: usize,
    /// f32 elements per peer.
    pub(crate) floats: usize,
    /// Measured rounds that succeeded on every peer.
    pub(crate) rounds: usize,
    /// Measured rounds in which some peer failed (left out of the statistics).
    pub(crate) failed_rounds: usize,
    /// Warm-up rounds before them.
    pub(crate) warmup: usize,
    /// Per successful round: the slowest peer's all-reduce seconds.
    pub(crate) allreduce_s: Vec<f64>,
    /// Per successful round: the slowest peer's matchmaking milliseconds.
    pub(crate) matchmaking_ms: Vec<f64>,
    /// Whether every peer ran in its own process.
    pub(crate) processes: bool,
    /// With `processes`: each peer's peak resident set in bytes (`None` where unknown).
    pub(crate) peak_rss_bytes: Vec<Option<u64>>,
}

impl BenchSummary {
    fn allreduce_median(&self) -> f64 {
        median(&self.allreduce_s).unwrap_or(f64::NAN)
    }

    fn allreduce_min(&self) -> f64 {
        min(&self.allreduce_s).unwrap_or(f64::NAN)
    }

    /// The JSON object of `bench --json` (one line; `bench/run.sh` parses it).
    pub(crate) fn json(&self) -> serde_json::Value {
        let bytes = tensor_bytes(self.floats);
        let finite = |v: f64| if v.is_finite() { json!(v) } else { serde_json::Value::Null };
        json!({
            "system": "averager",
            "transport": self.transport,
            "dht": self.dht,
            "compression": self.compression,
            "peers": self.peers,
            "floats": self.floats,
            "bytes_per_peer": bytes,
            "rounds": self.rounds,
            "failed_rounds": self.failed_rounds,
            "warmup": self.warmup,
            "algbw_mb_s": finite(algbw_mb_s(bytes, self.allreduce_median())),
            "algbw_mb_s_best": finite(algbw_mb_s(bytes, self.allreduce_min())),
            "allreduce_s_median": finite(self.allreduce_median()),
            "allreduce_s_min": finite(self.allreduce_min()),
            // Every successful round, as gloo's and hivemind's scripts report them: the grid
            // pools the rounds of alternating runs (`bench/grid.py --alternate`).
            "allreduce_s_rounds": self.allreduce_s,
            "matchmaking_ms_median": finite(median(&self.matchmaking_ms).unwrap_or(f64::NAN)),
            "processes": self.processes,
            "peak_rss_mb": self.peak_rss_bytes.iter().map(|b| b.map(|b| b as f64 / 1e6)).collect::<Vec<_>>(),
        })
    }

    /// The human-readable table.
    pub(crate) fn table(&self) -> String {
        let bytes = tensor_bytes(self.floats);
        let mut out = format!(
            "averager bench: {} peers in one group, {} f32 per peer ({:.1} MB), transport {}, dht {}, \
             compression {}, {} measured rounds (+{} warm-up){}\n",
            self.peers,
            self.floats,
            bytes / 1e6,
            self.transport,
            self.dht,
            self.compression,
            self.rounds,
            self.warmup,
            if self.failed_rounds > 0 {
                format!(", {} failed rounds left out", self.failed_rounds)
            } else {
                String::new()
            },
        );
        out += &format!(
            "{:<12} {:>14} {:>14} {:>16} {:>16} {:>18}\n",
            "transport",
            "allreduce med",
            "allreduce min",
            "algbw med MB/s",
            "algbw best MB/s",
            "matchmaking med"
        );
        out += &format!(
            "{:<12} {:>12.3} s {:>12.3} s {:>16.1} {:>16.1} {:>15.1} ms",
            self.transport,
            self.allreduce_median(),
            self.allreduce_min(),
            algbw_mb_s(bytes, self.allreduce_median()),
            algbw_mb_s(bytes, self.allreduce_min()),
            median(&self.matchmaking_ms).unwrap_or(f64::NAN),
        );
        if self.processes {
            let peaks: Vec<String> = self
                .peak_rss_bytes
                .iter()
                .map(|b| b.map_or_else(|| "?".to_string(), |b| format!("{:.1}", b as f64 / 1e6)))
                .collect();
            out += &format!(
                "\npeak RSS per peer (MB, one process each): {} (tensor {:.1} MB)",
                peaks.join(", "),
                bytes / 1e6
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_minimums() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(min(&[3.0, 1.0]), Some(1.0));
        assert_eq!(algbw_mb_s(64e6, 0.5), 128.0);
    }

    #[test]
    fn json_has_the_keys_run_sh_reads() {
        let summary = BenchSummary {
            transport: "grpc",
            dht: "memory",
            compression: "none".into(),
            peers: 4,
            floats: 1000,
            rounds: 2,
            failed_rounds: 0,
            warmup: 1,
            allreduce_s: vec![0.002, 0.004],
            matchmaking_ms: vec![5.0, 7.0],
            processes: true,
            peak_rss_bytes: vec![Some(80_000_000), None],
        };
        let v = summary.json();
        for key in [
            "system",
            "transport",
            "compression",
            "peers",
            "floats",
            "rounds",
            "algbw_mb_s",
            "allreduce_s_median",
            "matchmaking_ms_median",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["algbw_mb_s"], json!(4000.0 / 0.003 / 1e6));
        assert!(summary.table().contains("grpc"));
        assert_eq!(v["peak_rss_mb"], json!([80.0, null]));
        assert_eq!(v["allreduce_s_rounds"], json!([0.002, 0.004]));
        assert!(summary.table().contains("peak RSS per peer (MB, one process each): 80.0, ?"));
    }
}
