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
///
/// A case written `case if requirement` checks a promise that only plugins declaring
/// `requirement` make. Its test is `#[ignore]`d, with the reason, when the suite macro lists the
/// requirement under `lacks: [...]`, so `cargo test` reports it as ignored rather than passed;
/// otherwise the test first checks that the plugin declares the requirement and fails, naming
/// the `lacks` entry to add, when it does not. With a non-empty `lacks` list the module also gets
/// `declared_lacks_hold`, which fails when the plugin declares what the list says it lacks.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_tests {
    ($suite:ident, $name:ident, $factory:expr, $lacks:tt, [$($case:ident $(if $req:ident)?),* $(,)?]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                $crate::__gate! { $lacks, $($req)?,
                    #[test]
                    fn $case() {
                        $crate::run_case(::core::stringify!($case), async {
                            let f = $factory;
                            $( $crate::declaration($crate::$suite::declares(&f, ::core::stringify!($req)).await, ::core::stringify!($req), false)?; )?
                            $crate::$suite::$case(&f).await
                        })
                    }
                }
            )*
            $crate::__lacks_test! { $suite, $factory, $lacks }
        }
    };
}

/// The `declared_lacks_hold` test of [`__suite_tests!`], for a non-empty `lacks` list.
#[doc(hidden)]
#[macro_export]
macro_rules! __lacks_test {
    ($suite:ident, $factory:expr, []) => {};
    ($suite:ident, $factory:expr, [$($lack:ident),+ $(,)?]) => {
        #[test]
        fn declared_lacks_hold() {
            $crate::run_case("declared_lacks_hold", async {
                let f = $factory;
                $( $crate::declaration($crate::$suite::declares(&f, ::core::stringify!($lack)).await, ::core::stringify!($lack), true)?; )+
                ::core::result::Result::Ok(())
            })
        }
    };
}

/// Emits `$item` as it is, or with `#[ignore = "..."]` when its requirement is in the `lacks`
/// list (see [`__suite_tests!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __gate {
    ([$($lack:ident),* $(,)?], , $($item:tt)*) => { $($item)* };
    ([$($lack:ident),* $(,)?], $req:ident, $($item:tt)*) => { $crate::__gate_find! { $req, [$($lack)*], $($item)* } };
}

/// Walks the `lacks` list for `$req`; macro_rules compares identifiers only against literal
/// tokens, so every requirement a suite names has its own arm (and its own reason).
#[doc(hidden)]
#[macro_export]
macro_rules! __gate_find {
    (lossless, [lossless $($r:ident)*], $($i:tt)*) => { #[ignore = "excluded: no capabilities().lossless"] $($i)* };
    (registered, [registered $($r:ident)*], $($i:tt)*) => { #[ignore = "excluded: name not registered"] $($i)* };
    (weighted_mean, [weighted_mean $($r:ident)*], $($i:tt)*) => { #[ignore = "excluded: no weighted_mean"] $($i)* };
    (authenticated, [authenticated $($r:ident)*], $($i:tt)*) => { #[ignore = "excluded: not authenticated"] $($i)* };
    (small_message_cap, [small_message_cap $($r:ident)*], $($i:tt)*) => { #[ignore = "excluded: cap too large"] $($i)* };
    (small_subkey_limit, [small_subkey_limit $($r:ident)*], $($i:tt)*) => { #[ignore = "excluded: limit too large"] $($i)* };
    ($req:ident, [$head:ident $($rest:ident)*], $($item:tt)*) => { $crate::__gate_find! { $req, [$($rest)*], $($item)* } };
    ($req:ident, [], $($item:tt)*) => { $($item)* };
}

/// Checks a plugin's answer (`declared`, from the suite's `declares`) for `requirement` against
/// the suite macro: `in_lacks` when the macro lists it under `lacks`, otherwise a case that needs
/// it is about to run.
///
/// # Errors
/// A [`Failure`] when the two disagree: a case about to run on a plugin that does not declare
/// what it needs (it would pass with nothing checked; the message names the `lacks` entry to add,
/// which makes cargo test report the case as ignored), or a `lacks` entry for something the
/// plugin does declare (its cases would be skipped for nothing).
pub fn declaration(declared: Result<bool, Failure>, requirement: &str, in_lacks: bool) -> Outcome {
    match (declared?, in_lacks) {
        (true, false) | (false, true) => Ok(()),
        (false, false) => Err(Failure::new(format!(
            "the plugin does not declare `{requirement}`, which this case needs: add `lacks: [{requirement}]` \
             to the suite macro, and cargo test reports the case as ignored"
        ))),
        (true, true) => Err(Failure::new(format!(
            "the suite macro lists `{requirement}` under `lacks`, but the plugin declares it: remove it so \
             that its cases run"
        ))),
    }
}

/// The answer of a suite's `declares` for a requirement it does not know.
pub(crate) fn unknown_requirement(suite: &str, requirement: &str, known: &[&str]) -> Failure {
    Failure::new(format!(
        "the {suite} suite has no requirement `{requirement}` (it knows: {})",
        known.join(", ")
    ))
}

/// Expands a suite's case list into code that runs every case in turn and collects
/// `(name, outcome)` pairs (each suite's `run_all`). A case whose requirement the plugin does
/// not declare passes there with nothing checked; the test macros report it as ignored instead.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_run_all {
    ($suite:ident, $factory:expr, [$($case:ident $(if $req:ident)?),* $(,)?]) => {{
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
