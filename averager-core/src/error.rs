//! The core's one error type, used by every crate of the workspace.
//!
//! One policy, as in Apache OpenDAL: every error has a [kind](Error::kind) that callers branch
//! on, says whether it is [temporary](Error::is_temporary) (retrying, later or with another
//! peer, may succeed), and may carry the [operation](Operation) that failed and its context
//! (endpoint, group, part) through [`Error::during`] and [`Error::with_context`].
//!
//! - Retries decide by [`Error::is_temporary`], never by matching text. A caller that knows
//!   better than the error's kind overrides it with [`Error::set_temporary`] (a peer's bad message
//!   is permanent for that peer but not for a step that can find another group) or
//!   [`Error::set_persistent`] (a wait that already used the whole budget it had).
//! - A reply or a status that carries a proto code takes it from [`Error::message_code`], and a
//!   backend rebuilds the error from the code with [`Error::from_message_code`].

use std::fmt;
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
    /// Matchmaking reached the step's deadline without forming a group (protocol 8.1 step 2).
    #[error("could not find a group: {0}")]
    NoGroup(String),
    /// The operation was cancelled, locally or by the peer.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A bug or an unexpected state on this side.
    #[error("internal: {0}")]
    Internal(String),
    /// Another error, with the operation that failed, where, and a caller's judgement of whether
    /// it is temporary. Built by [`Error::during`], [`Error::with_context`],
    /// [`Error::set_temporary`] and [`Error::set_persistent`]; [`Error::root`] is the error
    /// inside, and [`Error::kind`], [`Error::message_code`] look through it.
    #[error("{}{}: {source}", Self::operation_text(*.operation), ContextList(.context))]
    Context {
        /// What was being done.
        operation: Option<Operation>,
        /// Where: `("endpoint", ...)`, `("group", ...)`, `("part", ...)`, in the order added.
        context: Vec<(&'static str, String)>,
        /// A caller's override of the error's own temporariness.
        temporary: Option<bool>,
        /// The error itself (never another `Context`: the builders extend the one layer).
        source: Box<Error>,
    },
}

/// What kind of failure an [`Error`] is: what callers branch on, whatever context it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::Timeout`].
    Timeout,
    /// [`Error::Protocol`].
    Protocol,
    /// [`Error::Unreachable`].
    Unreachable,
    /// [`Error::Transport`].
    Transport,
    /// [`Error::MessageTooLarge`].
    MessageTooLarge,
    /// [`Error::Codec`].
    Codec,
    /// [`Error::Tensor`].
    Tensor,
    /// [`Error::Config`].
    Config,
    /// [`Error::Dht`].
    Dht,
    /// [`Error::Reducer`].
    Reducer,
    /// [`Error::UnknownPlugin`].
    UnknownPlugin,
    /// [`Error::DuplicatePlugin`].
    DuplicatePlugin,
    /// [`Error::NoGroup`].
    NoGroup,
    /// [`Error::Cancelled`].
    Cancelled,
    /// [`Error::Internal`].
    Internal,
}

/// The operation an [`Error`] happened in, for logs and for callers that act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// One averaging step (matchmaking, the all-reduce, applying the result).
    Step,
    /// Looking for a group (protocol 3).
    Matchmaking,
    /// Asking a leader to take this peer (protocol 3.4).
    JoinGroup,
    /// Reading the payloads of a formed group (protocol 2.4).
    FormGroup,
    /// The all-reduce of one group (protocol 4).
    AllReduce,
    /// Downloading a donor's state (protocol 6.3).
    DownloadState,
    /// Connecting to a peer.
    Connect,
    /// A call on a transport.
    Call,
    /// A DHT read or write.
    Dht,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Step => "step",
            Operation::Matchmaking => "matchmaking",
            Operation::JoinGroup => "join_group",
            Operation::FormGroup => "form_group",
            Operation::AllReduce => "all_reduce",
            Operation::DownloadState => "download_state",
            Operation::Connect => "connect",
            Operation::Call => "call",
            Operation::Dht => "dht",
        })
    }
}

/// Displays context pairs as ` (key value, key value)`, or nothing when there are none.
struct ContextList<'a>(&'a [(&'static str, String)]);

impl fmt::Display for ContextList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            f.write_str(if i == 0 { " (" } else { ", " })?;
            write!(f, "{key} {value}")?;
        }
        if !self.0.is_empty() {
            f.write_str(")")?;
        }
        Ok(())
    }
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
        match self.root() {
            Error::Protocol { code, .. } => Some(*code),
            Error::Cancelled(_) => Some(MessageCode::Cancelled),
            Error::Internal(_) => Some(MessageCode::InternalError),
            _ => None,
        }
    }

    /// The error a peer's reply with `code` stands for, `detail` saying who and why: the inverse
    /// of [`Error::message_code`] across the wire. `CANCELLED` is [`Error::Cancelled`]; every
    /// other code (the peer's own `INTERNAL_ERROR` included: a bug over there is no bug here) is
    /// [`Error::Protocol`] with that code.
    pub fn from_message_code(code: MessageCode, detail: impl Into<String>) -> Self {
        match code {
            MessageCode::Cancelled => Error::Cancelled(detail.into()),
            code => Error::protocol(code, detail),
        }
    }

    /// What kind of error this is, through any context.
    pub fn kind(&self) -> ErrorKind {
        match self.root() {
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Protocol { .. } => ErrorKind::Protocol,
            Error::Unreachable { .. } => ErrorKind::Unreachable,
            Error::Transport(_) => ErrorKind::Transport,
            Error::MessageTooLarge { .. } => ErrorKind::MessageTooLarge,
            Error::Codec { .. } => ErrorKind::Codec,
            Error::Tensor(_) => ErrorKind::Tensor,
            Error::Config(_) => ErrorKind::Config,
            Error::Dht(_) => ErrorKind::Dht,
            Error::Reducer(_) => ErrorKind::Reducer,
            Error::UnknownPlugin { .. } => ErrorKind::UnknownPlugin,
            Error::DuplicatePlugin { .. } => ErrorKind::DuplicatePlugin,
            Error::NoGroup(_) => ErrorKind::NoGroup,
            Error::Cancelled(_) => ErrorKind::Cancelled,
            // `root` never returns a `Context`; counted as a bug should that ever change.
            Error::Internal(_) | Error::Context { .. } => ErrorKind::Internal,
        }
    }

    /// The error without its context.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            other => other,
        }
    }

    /// The error without its context, by value.
    pub fn into_root(self) -> Error {
        match self {
            Error::Context { source, .. } => source.into_root(),
            other => other,
        }
    }

    /// The operation this error happened in, if one was recorded.
    pub fn operation(&self) -> Option<Operation> {
        match self {
            Error::Context { operation, .. } => *operation,
            _ => None,
        }
    }

    /// The context recorded with this error, in the order it was added.
    pub fn context(&self) -> &[(&'static str, String)] {
        match self {
            Error::Context { context, .. } => context,
            _ => &[],
        }
    }

    /// Records that this error happened in `operation`. An operation recorded earlier (an inner
    /// one) stays in the context, as `("in", operation)`.
    pub fn during(self, operation: Operation) -> Self {
        self.edit(|op, context, _| {
            if let Some(inner) = op.replace(operation)
                && inner != operation
            {
                context.push(("in", inner.to_string()));
            }
        })
    }

    /// Adds `key value` to this error's context (`endpoint`, `group`, `part`, ...).
    pub fn with_context(self, key: &'static str, value: impl fmt::Display) -> Self {
        self.edit(|_, context, _| context.push((key, value.to_string())))
    }

    /// Marks this error as temporary whatever its kind says: the caller knows that retrying, with
    /// other peers, may succeed (a group member's malformed payload, for a step).
    pub fn set_temporary(self) -> Self {
        self.edit(|_, _, temporary| *temporary = Some(true))
    }

    /// Marks this error as not worth retrying whatever its kind says: the caller has already
    /// spent what a retry would need (a wait that used its whole budget).
    pub fn set_persistent(self) -> Self {
        self.edit(|_, _, temporary| *temporary = Some(false))
    }

    /// Applies `change` to this error's one context layer, adding the layer if there is none.
    fn edit(
        self,
        change: impl FnOnce(&mut Option<Operation>, &mut Vec<(&'static str, String)>, &mut Option<bool>),
    ) -> Self {
        let (mut operation, mut context, mut temporary, source) = match self {
            Error::Context { operation, context, temporary, source } => {
                (operation, context, temporary, source)
            }
            root => (None, Vec::new(), None, Box::new(root)),
        };
        change(&mut operation, &mut context, &mut temporary);
        Error::Context { operation, context, temporary, source }
    }

    /// The operation's part of the display: `"<operation>"`, or `"error"` without one.
    fn operation_text(operation: Option<Operation>) -> String {
        operation.map_or_else(|| "error".to_string(), |o| o.to_string())
    }

    /// Whether retrying (the same peer later, or another peer) may succeed.
    ///
    /// Timeouts, unreachable peers, transport failures and the "not now" protocol codes are
    /// temporary; bad configuration, codec errors, oversize messages and protocol violations are
    /// not. A caller's [`set_temporary`](Error::set_temporary) or
    /// [`set_persistent`](Error::set_persistent) overrides the kind.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Context { temporary: Some(temporary), .. } => *temporary,
            Error::Context { source, .. } => source.is_temporary(),
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

    #[test]
    fn context_keeps_kind_code_and_temporariness() {
        let e = Error::protocol(MessageCode::GroupIsFull, "full")
            .during(Operation::JoinGroup)
            .with_context("endpoint", "mem://a");
        assert_eq!((e.kind(), e.message_code()), (ErrorKind::Protocol, Some(MessageCode::GroupIsFull)));
        assert!(e.is_temporary());
        assert_eq!(e.operation(), Some(Operation::JoinGroup));
        assert_eq!(e.to_string(), "join_group (endpoint mem://a): protocol: GroupIsFull: full");
        // One layer: an outer operation keeps the inner one in the context.
        let e = e.during(Operation::Matchmaking);
        assert!(matches!(&e, Error::Context { source, .. } if matches!(**source, Error::Protocol { .. })));
        assert_eq!(e.context(), &[("endpoint", "mem://a".to_string()), ("in", "join_group".to_string())]);
        assert!(matches!(e.root(), Error::Protocol { .. }));
    }

    #[test]
    fn callers_override_temporariness() {
        let timeout = Error::timeout("the all-reduce", Duration::from_secs(1));
        assert!(!timeout.clone().during(Operation::AllReduce).set_persistent().is_temporary());
        let violation = Error::protocol(MessageCode::ProtocolViolation, "bad gather");
        assert!(violation.clone().set_temporary().is_temporary());
        assert_eq!(violation.set_temporary().kind(), ErrorKind::Protocol);
    }

    #[test]
    fn codes_cross_the_wire_both_ways() {
        for error in [Error::Cancelled("x".into()), Error::protocol(MessageCode::BadGroupId, "y")] {
            let code = error.message_code().unwrap();
            assert_eq!(Error::from_message_code(code, "z").message_code(), Some(code));
        }
        let remote_bug = Error::from_message_code(MessageCode::InternalError, "their bug");
        assert_eq!(remote_bug.kind(), ErrorKind::Protocol);
    }
}
