//! Between the core's [`Error`] and tonic's [`Status`], by status code and metadata, never by
//! message text: a status this backend builds carries the proto `MessageCode` of its error
//! ([`CODE_KEY`]) and, for an oversize message, the sizes ([`SIZE_KEY`], [`LIMIT_KEY`]).

use std::time::Duration;

use averager_core::Error;
use averager_proto::MessageCode;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// Metadata key of the error's proto `MessageCode`, as a decimal number.
const CODE_KEY: &str = "averager-code";
/// Metadata key of an oversize message's size in bytes.
const SIZE_KEY: &str = "averager-size";
/// Metadata key of the limit an oversize message broke, in bytes.
const LIMIT_KEY: &str = "averager-limit";

/// The status for a message of `size` bytes over `limit`: `OUT_OF_RANGE` as tonic's own limit
/// statuses, worded as tonic words them, with the sizes in metadata.
pub(crate) fn too_large(size: usize, limit: usize) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(SIZE_KEY, size.into());
    metadata.insert(LIMIT_KEY, limit.into());
    Status::with_metadata(
        Code::OutOfRange,
        format!("Error, encoded message length too large: found {size} bytes, the limit is: {limit} bytes"),
        metadata,
    )
}

/// The status a handler's error travels as: its kind picks the status code, and its proto code
/// (if it has one) rides along in metadata so the caller gets the same code back.
pub(crate) fn to_status(error: Error) -> Status {
    let code = error.message_code();
    let status = match error.root() {
        Error::MessageTooLarge { size, limit } => return too_large(*size, *limit),
        Error::Cancelled(reason) => Status::cancelled(reason.clone()),
        Error::Timeout { .. } => Status::deadline_exceeded(error.to_string()),
        Error::Config(_) => Status::invalid_argument(error.to_string()),
        Error::Unreachable { .. } => Status::unavailable(error.to_string()),
        Error::Protocol { .. } => Status::failed_precondition(error.to_string()),
        _ => Status::unknown(error.to_string()),
    };
    match code {
        Some(code) => {
            let mut metadata = MetadataMap::new();
            metadata.insert(CODE_KEY, (code as i32).into());
            Status::with_metadata(status.code(), status.message(), metadata)
        }
        None => status,
    }
}

/// The error a caller of `endpoint` sees for `status`; `limit` is the caller's own cap.
pub(crate) fn to_error(status: &Status, endpoint: &str, limit: usize) -> Error {
    let message = status.message();
    if let Some(code) = metadata_number::<i32>(status, CODE_KEY).and_then(|c| MessageCode::try_from(c).ok()) {
        return Error::from_message_code(code, format!("{endpoint}: {message}"));
    }
    match status.code() {
        // tonic reports its own message-length limits as OUT_OF_RANGE, and so does this backend.
        Code::OutOfRange => {
            let size = metadata_number(status, SIZE_KEY).or_else(|| tonic_size(message, "found "));
            let stated = metadata_number(status, LIMIT_KEY).or_else(|| tonic_size(message, "the limit is: "));
            // A peer's status that states no size still means "too large"; 0 stands for unknown.
            Error::MessageTooLarge { size: size.unwrap_or(0), limit: stated.unwrap_or(limit) }
        }
        Code::Unavailable => {
            Error::Unreachable { endpoint: endpoint.to_string(), reason: message.to_string() }
        }
        Code::Cancelled => Error::Cancelled(format!("{endpoint}: {message}")),
        Code::DeadlineExceeded => {
            Error::Transport(format!("{endpoint}: the peer ran out of time: {message}"))
        }
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
        Code::OutOfRange => to_error(status, "the caller", limit),
        Code::Cancelled | Code::Unavailable => {
            Error::Cancelled(format!("the caller went away: {}", status.message()))
        }
        code => {
            Error::Transport(format!("the caller's request stream failed: {code:?}: {}", status.message()))
        }
    }
}

/// A decimal number in `status`'s metadata under `key`.
fn metadata_number<T: std::str::FromStr>(status: &Status, key: &str) -> Option<T> {
    status.metadata().get(key)?.to_str().ok()?.parse().ok()
}

/// A size in the wording of tonic's own limit statuses (which carry no metadata): the decimal
/// number right after `prefix`. Only the numbers are read from the text; the kind of error is
/// already decided by the status code.
fn tonic_size(text: &str, prefix: &str) -> Option<usize> {
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
        // OUT_OF_RANGE is how gRPC reports a message over a limit, whatever its text says.
        assert!(matches!(
            to_error(&Status::out_of_range("x"), "e", 1),
            Error::MessageTooLarge { size: 0, limit: 1 }
        ));
    }

    #[test]
    fn message_codes_and_sizes_travel_in_metadata() {
        // The sizes come from metadata even when the text is reworded.
        let ours = Status::with_metadata(Code::OutOfRange, "too big", too_large(7, 3).metadata().clone());
        assert!(matches!(to_error(&ours, "e", 99), Error::MessageTooLarge { size: 7, limit: 3 }));
        for error in [
            Error::protocol(MessageCode::BadGroupId, "no such group"),
            Error::Cancelled("gone".into()),
            Error::protocol(MessageCode::ProtocolViolation, "bad part")
                .during(averager_core::Operation::Call),
        ] {
            let code = error.message_code();
            let back = to_error(&to_status(error), "grpc://x:1", 1);
            assert_eq!(back.message_code(), code, "{back:?}");
        }
        // A peer's own bug is a protocol error here, not an internal one.
        let back = to_error(&to_status(Error::Internal("oops".into())), "grpc://x:1", 1);
        assert_eq!(back.kind(), averager_core::ErrorKind::Protocol);
    }
}
