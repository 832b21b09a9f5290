//! protocol 6.1: the donor loop, which keeps this peer's record under `<prefix>.all_averagers` fresh.
//!
//! **\[averager\]** the record is refreshed at half its lifetime, not at its expiry, so there is no
//! moment when a live donor is missing from the DHT (protocol 11.13).

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::sharing::StateSharing;
use crate::dht::Dht;
use crate::error::{Error, Result};
use crate::matchmaking::donors_key;
use crate::time::{DhtTime, dht_now, next_after};

/// msgpack `nil`: the record of a peer that withdrew.
const NIL: u8 = 0xc0;

/// The shortest wait between two declarations, so that a degenerate period cannot spin the loop.
const MIN_REFRESH: Duration = Duration::from_millis(1);

/// The DHT value of a donor record: the priority as a msgpack float, or `nil` for "withdrew".
pub(crate) fn encode_priority(priority: Option<f64>) -> Bytes {
    match priority {
        // A msgpack float64 is the marker 0xcb and 8 big-endian bytes; writing it by hand keeps the
        // encoding fixed whatever the serializer prefers for round numbers.
        Some(p) => {
            let mut out = Vec::with_capacity(9);
            out.push(0xcb);
            out.extend_from_slice(&p.to_be_bytes());
            out.into()
        }
        None => Bytes::from_static(&[NIL]),
    }
}

/// Reads a donor record's value: `Some(priority)` for a msgpack int or float, `None` for `nil`.
///
/// # Errors
/// [`Error::Dht`] for anything else: bytes that are not one msgpack value, a value of another type
/// (string, bool, map, ...), or a priority that is not finite (it could not be ordered).
pub fn decode_priority(value: &[u8]) -> Result<Option<f64>> {
    let mut cursor = Cursor::new(value);
    let decoded = Option::<f64>::deserialize(&mut rmp_serde::Deserializer::new(&mut cursor))
        .map_err(|e| Error::Dht(format!("donor record is not a msgpack number or nil: {e}")))?;
    if cursor.position() != value.len() as u64 {
        return Err(Error::Dht("donor record has bytes after its msgpack value".into()));
    }
    match decoded {
        Some(p) if !p.is_finite() => Err(Error::Dht(format!("donor priority {p} is not finite"))),
        other => Ok(other),
    }
}

/// The running donor loop of one peer; dropping it stops the loop.
///
/// The record it wrote stays in the DHT until it expires (at most one period); to withdraw at once,
/// switch sharing off and wait for the `nil` record before dropping the loop.
#[derive(Debug)]
pub(crate) struct DonorLoop {
    task: JoinHandle<()>,
}

impl DonorLoop {
    #[cfg(test)]
    /// Whether the loop has stopped (it stops only when aborted, or if it panicked).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for DonorLoop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the donor loop of the peer serving at `endpoint` (protocol 6.1).
///
/// Each iteration: while sharing is allowed, or when it was allowed at the previous iteration,
/// store `(<prefix>.all_averagers, endpoint) = priority` (or `nil` once sharing is off), expiring a
/// `period` from now; then wait half the period, or until `sharing` wakes the loop (sharing or,
/// while sharing, the priority changed, or the state was updated). DHT errors and refusals are
/// logged and retried at the next iteration; a refused `nil` is retried until it lands.
///
/// Must be called within a tokio runtime.
pub(crate) fn spawn_donor_loop(
    dht: Arc<dyn Dht>,
    sharing: Arc<StateSharing>,
    prefix: &str,
    endpoint: String,
    period: Duration,
) -> DonorLoop {
    let key = donors_key(prefix);
    DonorLoop { task: tokio::spawn(run(dht, sharing, key, endpoint, period)) }
}

async fn run(dht: Arc<dyn Dht>, sharing: Arc<StateSharing>, key: String, endpoint: String, period: Duration) {
    let mut wake = sharing.subscribe();
    let refresh = (period / 2).max(MIN_REFRESH);
    let mut was_allowed = false;
    let mut last_expiration: DhtTime = f64::NEG_INFINITY;
    loop {
        // Mark the wake-ups seen BEFORE reading the switches: a change after this read wakes the
        // wait below instead of being lost.
        wake.borrow_and_update();
        let declaration = sharing.declaration();
        if declaration.is_some() || was_allowed {
            // Two declarations within the clock's resolution would tie, and a tie keeps the old
            // value (protocol 2.3); each expiration is strictly later than the last.
            let expiration = (dht_now() + period.as_secs_f64()).max(next_after(last_expiration));
            last_expiration = expiration;
            let stored = dht.store(&key, endpoint.as_bytes(), encode_priority(declaration), expiration).await;
            let landed = match stored {
                Ok(true) => true,
                Ok(false) => {
                    tracing::warn!(%key, %endpoint, "the DHT refused the donor record; retrying next period");
                    false
                }
                Err(error) => {
                    tracing::warn!(%key, %endpoint, %error, "cannot store the donor record; retrying next period");
                    false
                }
            };
            // A `nil` that did not land leaves the old priority in the DHT: keep trying to write it.
            was_allowed = declaration.is_some() || (was_allowed && !landed);
        }
        if tokio::time::timeout(refresh, wake.changed()).await.is_ok_and(|r| r.is_err()) {
            // Unreachable while this task holds `sharing` (it owns the sender); sleep rather than
            // spin should that ever change.
            tokio::time::sleep(refresh).await;
        }
    }
}
