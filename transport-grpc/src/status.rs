//! Between the core's [`Error`] and tonic's [`Status`].

use std::time::Duration;

use averager_core::Error;
use tonic::{Code, Status};

/// The status for a message of `size` bytes over `limit`, worded as tonic words its own.
pub(crate) fn too_large(size: usize, limit: usize) -> Status {
    Status::out_of_range(format!(
        "Error, encoded message length too large: found {size} bytes, the limit is: {limit} bytes"
    ))
}

/// The status a handler's error travels as.
pub(crate) fn to_status(error: Error) -> Status {
    match error {
        Error::MessageTooLarge { size, limit } => too_large(size, limit),
        Error::Cancelled(reason) => Status::cancelled(reason),
        Error::Timeout { .. } => Status::deadline_exceeded(error.to_string()),
        Error::Config(_) => Status::invalid_argument(error.to_string()),
        other => Status::unknown(other.to_string()),
    }
}

/// The error a caller of `endpoint` sees for `status`; `limit` is the caller's own cap.
pub(crate) fn to_error(status: &Status, endpoint: &str, limit: usize) -> Error {
    let message = status.message();
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted if message.contains("message length too large") => {
            let size = number_after(message, "found ").unwrap_or(0);
            let limit = number_after(message, "the limit is: ").unwrap_or(limit);
            Error::MessageTooLarge { size, limit }
        }
        Code::Unavailable => {
            Error::Unreachable { endpoint: endpoint.to_string(), reason: message.to_string() }
        }
        Code::Cancelled => Error::Cancelled(format!("{endpoint}: {message}")),
        // tonic's "transport error" says nothing by itself: what failed is in its sources.
        code => Error::Transport(format!("{endpoint}: {code:?}: {}", with_sources(message, status))),
    }
}

/// `text`, then the display of each source of `error` that does not repeat what is written.
fn with_sources(text: &str, error: &dyn std::error::Error) -> String {
    let mut text = text.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let link = e.to_string();
        if !text.ends_with(&link) {
            text.push_str(": ");
            text.push_str(&link);
        }
        source = e.source();
    }
    text
}

/// The error a handler sees when its request stream fails with `status`; `wait` is the server's
/// first-request timeout, the only deadline the server puts on a request stream.
pub(crate) fn request_error(status: &Status, limit: usize, wait: Duration) -> Error {
    match status.code() {
        Code::DeadlineExceeded => Error::timeout("the caller's first request", wait),
        Code::OutOfRange | Code::ResourceExhausted
            if status.message().contains("message length too large") =>
        {
            to_error(status, "the caller", limit)
        }
        Code::Cancelled | Code::Unavailable => {
            Error::Cancelled(format!("the caller went away: {}", status.message()))
        }
        code => {
            Error::Transport(format!("the caller's request stream failed: {code:?}: {}", status.message()))
        }
    }
}

/// The decimal number right after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> Option<usize> {
    let start = text.find(prefix)? + prefix.len();
    let digits: String = text[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// An error and its sources, as one line; a source that only repeats the text before it (as
/// wrappers that display their inner error do) is left out.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    with_sources(&error.to_string(), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_statuses_become_message_too_large() {
        let status = Status::out_of_range(
            "Error, decoded message length too large: found 17 bytes, the limit is: 16 bytes",
        );
        assert!(matches!(
            to_error(&status, "grpc://x:1", 99),
            Error::MessageTooLarge { size: 17, limit: 16 }
        ));
        let ours = too_large(5, 4);
        assert!(matches!(to_error(&ours, "grpc://x:1", 99), Error::MessageTooLarge { size: 5, limit: 4 }));
    }

    #[test]
    fn chains_leave_out_repeated_sources() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "transport error: {}", self.0)
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Wrapper(std::io::Error::other("the TLS handshake failed"));
        assert_eq!(chain(&error), "transport error: the TLS handshake failed");
    }

    #[test]
    fn other_statuses_map_by_code() {
        assert!(matches!(to_error(&Status::unavailable("gone"), "e", 1), Error::Unreachable { .. }));
        assert!(matches!(to_error(&Status::cancelled("x"), "e", 1), Error::Cancelled(_)));
        assert!(matches!(to_error(&Status::internal("x"), "e", 1), Error::Transport(_)));
        assert!(matches!(to_error(&Status::out_of_range("x"), "e", 1), Error::Transport(_)));
    }
}
