//! One error type for the whole tool: a message for the user, printed by `main` as
//! `error: <message>` with a non-zero exit status.

use std::fmt;

/// Why a command failed, in words meant for the person who ran it.
#[derive(Debug)]
pub(crate) struct Failure(String);

/// The tool's result type.
pub(crate) type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    /// A failure with `message`.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Failure(message.into())
    }

    /// Puts what was being done in front of the cause: `context: cause`.
    pub(crate) fn context(self, what: impl fmt::Display) -> Self {
        Failure(format!("{what}: {}", self.0))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<averager::Error> for Failure {
    fn from(e: averager::Error) -> Self {
        Failure(e.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure(e.to_string())
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure(message.to_string())
    }
}

/// `.context(...)` on any result whose error converts into a [`Failure`].
pub(crate) trait Context<T> {
    /// Prefixes the error with what was being done.
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Failure>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }
}
