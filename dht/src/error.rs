//! Between this crate's failures and the core's [`Error`]: every DHT failure is an
//! [`Error::Dht`] (temporary: retrying may succeed), except bad settings ([`Error::Config`]),
//! waits that ran out ([`Error::Timeout`]) and bootstrap peers nobody could reach
//! ([`Error::Unreachable`]).

use std::time::Duration;

use averager_core::Error;

use crate::store::Offer;

/// The error for calls on a node that has shut down (or whose task ended).
pub(crate) fn stopped() -> Error {
    Error::Dht("the kad node has shut down".into())
}

/// The error for a call whose reply did not come within `after`.
pub(crate) fn timed_out(what: &str, key: &str, after: Duration) -> Error {
    Error::timeout(format!("kad {what} of {key:?}"), after)
}

/// The error for a refused local store that is not a plain `false` (protocol 2.3 keeps `false` for
/// the expiration and subkey rules).
pub(crate) fn refused(offer: Offer, limits: &crate::store::StoreLimits) -> Error {
    match offer {
        Offer::RecordFull => Error::Dht(format!(
            "the record would grow past max_record_bytes = {} bytes",
            limits.record.max_record_bytes
        )),
        Offer::StoreFull => {
            Error::Dht(format!("this node's store is full (max_records = {})", limits.max_records))
        }
        other => Error::Internal(format!("kad: {other:?} is not an error")),
    }
}
