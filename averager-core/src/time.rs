//! DHT time: wall-clock seconds since the Unix epoch as an `f64` (protocol conventions).
//!
//! Peers compare expirations across machines, so this is wall-clock time, not a monotonic clock;
//! peers are assumed to agree within [`MAX_DHT_TIME_DISCREPANCY`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as used for every expiration in the DHT and in join requests.
pub type DhtTime = f64;

/// How far apart two peers' clocks may be, in seconds (protocol conventions: `MAX_DHT_TIME_DISCREPANCY = 3`).
pub const MAX_DHT_TIME_DISCREPANCY: f64 = 3.0;

/// The current DHT time.
pub fn dht_now() -> DhtTime {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The smallest `f64` strictly greater than `t` (C's `nextafter(t, +inf)`).
///
/// A withdrawal record (`false`) uses it so that it overrides the `true` record expiring at `t`.
pub fn next_after(t: DhtTime) -> DhtTime {
    if t.is_nan() || t == f64::INFINITY {
        return t;
    }
    if t == 0.0 {
        return f64::from_bits(1);
    }
    let bits = t.to_bits();
    if t > 0.0 { f64::from_bits(bits + 1) } else { f64::from_bits(bits - 1) }
}

/// How long from now until DHT time `t`; zero if `t` has passed, `None` if `t` is not finite.
pub fn until(t: DhtTime) -> Option<Duration> {
    if !t.is_finite() {
        return None;
    }
    Some(Duration::from_secs_f64((t - dht_now()).max(0.0)))
}

/// A `Duration` as seconds (`f64`) in serde formats, as hivemind's settings are written:
/// `#[serde(with = "averager_core::time::secs")]`. Negative or non-finite values are refused.
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the duration as seconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// Reads seconds; refuses negative or non-finite values.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(|_| {
            serde::de::Error::custom(format!("{secs} is not a non-negative, finite number of seconds"))
        })
    }
}

/// An optional `Duration` as seconds (`f64`, or null), like [`secs`].
pub mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the duration as seconds, or null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::secs::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads seconds or null; refuses negative or non-finite values.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|secs| {
                Duration::try_from_secs_f64(secs).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{secs} is not a non-negative, finite number of seconds"
                    ))
                })
            })
            .transpose()
    }
}

/// Awaits `future`, failing with [`Error::Timeout`] naming `what` after `limit` when one is set.
pub(crate) async fn with_timeout<T>(
    limit: Option<Duration>,
    future: impl std::future::Future<Output = T>,
    what: &str,
) -> crate::Result<T> {
    match limit {
        Some(limit) => {
            tokio::time::timeout(limit, future).await.map_err(|_| crate::Error::timeout(what, limit))
        }
        None => Ok(future.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_after_is_the_next_representable_value() {
        for t in [1.0, 1.7e9, -3.5, 0.0, 1e-300] {
            let n = next_after(t);
            assert!(n > t);
            assert_eq!(n - t, n - t); // finite
            // Nothing lies strictly between t and n.
            assert!((t + n) / 2.0 == t || (t + n) / 2.0 == n);
        }
        assert_eq!(next_after(f64::INFINITY), f64::INFINITY);
    }

    #[test]
    fn until_is_clamped_at_zero() {
        assert_eq!(until(0.0), Some(Duration::ZERO));
        assert_eq!(until(f64::INFINITY), None);
        assert!(until(dht_now() + 100.0).unwrap() > Duration::from_secs(90));
    }
}
