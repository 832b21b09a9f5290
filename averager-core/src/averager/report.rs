//! The figures of one successful step, for logs and metrics: returned with its [`Gathered`]
//! rather than pushed to a metrics library, so the core depends on no exporter and every caller
//! (the command line, Python, an application) records them its own way.
//!
//! [`Gathered`]: super::Gathered

use std::time::Duration;

/// How one successful step went: its group, its timings and its traffic.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct StepReport {
    /// The id of the group that averaged, in hex.
    pub group_id: String,
    /// Members of that group, this peer included.
    pub group_size: usize,
    /// Rounds the step ran: 1, plus one per retry with a new group.
    pub attempts: usize,
    /// Time spent looking for groups, over every attempt.
    pub matchmaking: Duration,
    /// Time of the successful all-reduce, from taking the tensor lock to applying the result.
    pub all_reduce: Duration,
    /// Bytes of part messages this peer sent in that all-reduce (as a sender and as a reducer).
    pub bytes_sent: u64,
    /// Bytes of part messages this peer received in that all-reduce.
    pub bytes_received: u64,
    /// Reducers whose parts were left at their local values because they failed.
    pub failed_reducers: usize,
}

impl StepReport {
    /// Bytes sent and received, per second of all-reduce (0 for an instant one).
    pub fn bytes_per_second(&self) -> f64 {
        let seconds = self.all_reduce.as_secs_f64();
        if seconds > 0.0 { (self.bytes_sent + self.bytes_received) as f64 / seconds } else { 0.0 }
    }
}
