//! Between the core's [`Error`] and tonic's [`Status`].

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
        code => Error::Transport(format!("{endpoint}: {code:?}: {message}")),
    }
}

/// The error a handler sees when its request stream fails with `status`.
pub(crate) fn request_error(status: &Status, limit: usize) -> Error {
    match status.code() {
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

/// An error and its sources, as one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
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
    fn other_statuses_map_by_code() {
        assert!(matches!(to_error(&Status::unavailable("gone"), "e", 1), Error::Unreachable { .. }));
        assert!(matches!(to_error(&Status::cancelled("x"), "e", 1), Error::Cancelled(_)));
        assert!(matches!(to_error(&Status::internal("x"), "e", 1), Error::Transport(_)));
        assert!(matches!(to_error(&Status::out_of_range("x"), "e", 1), Error::Transport(_)));
    }
}
