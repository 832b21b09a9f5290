#![doc = include_str!("../README.md")]

pub mod compression;
pub mod dht;
pub mod hostile;
pub mod reducer;
pub mod scenarios;
pub mod transport;

use std::fmt;
use std::future::Future;
use std::time::Duration;

#[doc(hidden)]
pub mod __private {
    pub use averager_core;
}

/// How long one conformance case may run before it fails as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a conformance case failed: the promise it checks and what was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, in words that name the broken promise.
    pub message: String,
}

impl Failure {
    /// A failure with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Failure { message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<averager_core::Error> for Failure {
    fn from(e: averager_core::Error) -> Self {
        Failure::new(format!("unexpected error: {e}"))
    }
}

/// The result of one conformance case.
pub type Outcome = Result<(), Failure>;

/// Fails the current case with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        // A match rather than `if !cond`, so float comparisons in callers do not trip clippy's
        // `neg_cmp_op_on_partial_ord`.
        match $cond {
            true => {}
            false => {
                return ::core::result::Result::Err($crate::Failure::new(::std::format!($($arg)+)));
            }
        }
    };
}

/// Expands a suite's case list into a test module: one `#[test]` per case, each running
/// `$crate::<suite>::<case>(&factory)` through [`run_case`]. The suites' public macros
/// (`dht_suite!`, ...) call this through their case-list macro, so each list is written once.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_tests {
    ($suite:ident, $name:ident, $factory:expr, [$($case:ident),* $(,)?]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    $crate::run_case(::core::stringify!($case), async {
                        let f = $factory;
                        $crate::$suite::$case(&f).await
                    })
                }
            )*
        }
    };
}

/// Expands a suite's case list into code that runs every case in turn and collects
/// `(name, outcome)` pairs (each suite's `run_all`).
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_run_all {
    ($suite:ident, $factory:expr, [$($case:ident),* $(,)?]) => {{
        let mut outcomes: ::std::vec::Vec<(&'static str, $crate::Outcome)> = ::std::vec::Vec::new();
        $( outcomes.push((::core::stringify!($case), $crate::$suite::$case($factory).await)); )*
        outcomes
    }};
}

/// Runs one case on a fresh two-worker tokio runtime, bounded by [`CASE_TIMEOUT`], and panics
/// with the failure's message (so a `#[test]` wrapping it fails and says why).
pub fn run_case<F: Future<Output = Outcome>>(name: &str, case: F) {
    if let Err(failure) = block_on_case(case) {
        panic!("conformance case `{name}` failed: {failure}");
    }
}

/// Runs one case on a fresh two-worker tokio runtime, bounded by [`CASE_TIMEOUT`], and returns
/// its outcome (used to show that a suite catches a broken backend).
pub fn block_on_case<F: Future<Output = Outcome>>(case: F) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start a tokio runtime: {e}")))?;
    runtime.block_on(async {
        match tokio::time::timeout(CASE_TIMEOUT, case).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::new(format!("did not finish within {CASE_TIMEOUT:?}"))),
        }
    })
}
