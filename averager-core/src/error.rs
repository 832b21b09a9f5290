//! The core's one error type.
//!
//! Fault tolerance has to decide between "retry or try the next peer" and "give up on this peer or
//! step"; [`Error::is_temporary`] answers that, and [`Error::message_code`] gives the proto code
//! that a handler sends back when the error belongs to the protocol.

use std::time::Duration;

use averager_proto::MessageCode;

/// Result with the core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core, in its backends, and in a remote peer's replies.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A wait on the network (or on a peer) ran out of time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The limit that ran out.
        after: Duration,
    },
    /// A peer answered with a protocol code other than the one expected, or broke the protocol.
    #[error("protocol: {code:?}: {detail}")]
    Protocol {
        /// The code the peer sent (or the one this side would send back).
        code: MessageCode,
        /// Human-readable context.
        detail: String,
    },
    /// The endpoint could not be reached: no such endpoint, connection refused, peer gone.
    #[error("endpoint {endpoint} is unreachable: {reason}")]
    Unreachable {
        /// The endpoint that was dialled.
        endpoint: String,
        /// Why it could not be reached.
        reason: String,
    },
    /// The transport failed while a call was under way (stream reset, I/O error, bad frame).
    #[error("transport: {0}")]
    Transport(String),
    /// A message is larger than the transport's configured cap.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// The encoded size of the offending message.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A codec could not encode or decode a tensor (bad input, garbage or truncated buffer).
    #[error("codec {codec}: {reason}")]
    Codec {
        /// The codec's registry name.
        codec: String,
        /// What was wrong.
        reason: String,
    },
    /// A tensor's shape, dtype or data are inconsistent.
    #[error("tensor: {0}")]
    Tensor(String),
    /// A configuration value is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The DHT refused or failed an operation.
    #[error("dht: {0}")]
    Dht(String),
    /// A reducer refused a part (wrong shape, banned sender, already finished).
    #[error("reducer: {0}")]
    Reducer(String),
    /// No plugin of this kind is registered under this name.
    #[error("no {kind} plugin is registered as {name:?} (registered: {known})")]
    UnknownPlugin {
        /// The plugin kind: `codec`, `reducer`, `transport` or `dht`.
        kind: &'static str,
        /// The name that was looked up.
        name: String,
        /// The names that are registered, comma-separated.
        known: String,
    },
    /// Two plugins of one kind claim the same name.
    #[error("two {kind} plugins are registered as {name:?}: {first} and {second}")]
    DuplicatePlugin {
        /// The plugin kind.
        kind: &'static str,
        /// The contested name.
        name: String,
        /// Where the first record was submitted (module path) and what it says of itself.
        first: String,
        /// Where the second record was submitted and what it says of itself.
        second: String,
    },
    /// Matchmaking reached the step's deadline without forming a group (SPEC 8.1 step 2).
    #[error("could not find a group: {0}")]
    NoGroup(String),
    /// The operation was cancelled, locally or by the peer.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A bug or an unexpected state on this side.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// A protocol error with `code`.
    pub fn protocol(code: MessageCode, detail: impl Into<String>) -> Self {
        Error::Protocol { code, detail: detail.into() }
    }

    /// A codec error for `codec`.
    pub fn codec(codec: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Codec { codec: codec.into(), reason: reason.into() }
    }

    /// A timeout while waiting for `what`.
    pub fn timeout(what: impl Into<String>, after: Duration) -> Self {
        Error::Timeout { what: what.into(), after }
    }

    /// The proto code that describes this error on the wire, if there is one.
    ///
    /// Protocol errors carry their own code; cancellation maps to `CANCELLED`; a bug on this side
    /// maps to `INTERNAL_ERROR`. Other errors are local matters with no code.
    pub fn message_code(&self) -> Option<MessageCode> {
        match self {
            Error::Protocol { code, .. } => Some(*code),
            Error::Cancelled(_) => Some(MessageCode::Cancelled),
            Error::Internal(_) => Some(MessageCode::InternalError),
            _ => None,
        }
    }

    /// Whether retrying (the same peer later, or another peer) may succeed.
    ///
    /// Timeouts, unreachable peers, transport failures and the "not now" protocol codes are
    /// temporary; bad configuration, codec errors, oversize messages and protocol violations are not.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Unreachable { .. } | Error::Transport(_) => true,
            Error::Dht(_) | Error::NoGroup(_) => true,
            Error::Protocol { code, .. } => matches!(
                code,
                MessageCode::NotLookingForGroup
                    | MessageCode::GroupIsFull
                    | MessageCode::NotALeader
                    | MessageCode::NotDeclared
                    | MessageCode::BadExpirationTime
                    | MessageCode::GroupDisbanded
                    | MessageCode::BadGroupKey
                    | MessageCode::BadGroupId
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_temporariness() {
        let e = Error::protocol(MessageCode::GroupIsFull, "full");
        assert_eq!(e.message_code(), Some(MessageCode::GroupIsFull));
        assert!(e.is_temporary());
        let e = Error::protocol(MessageCode::ProtocolViolation, "bad");
        assert!(!e.is_temporary());
        assert_eq!(Error::Cancelled("x".into()).message_code(), Some(MessageCode::Cancelled));
        assert!(Error::timeout("reply", Duration::from_secs(1)).is_temporary());
        assert!(!Error::Config("x".into()).is_temporary());
        assert_eq!(Error::Config("x".into()).message_code(), None);
    }
}
