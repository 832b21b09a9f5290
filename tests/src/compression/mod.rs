//! protocol 7.1, 7.2 and 10.5: the conformance suite for [`Compression`] codecs.
//!
//! Each case is a `pub async fn` over a [`CodecFactory`] that checks one `# Behavior` promise of
//! the trait and returns an [`Outcome`]; [`compression_suite!`](crate::compression_suite) turns
//! them into one `#[test]` each:
//!
//! ```
//! use std::sync::Arc;
//! use averager_core::Compression;
//! # use averager_core::compression::NoCompression as MyCodec;
//!
//! averager_conformance::compression_suite!(my_codec, || Arc::new(MyCodec) as Arc<dyn Compression>);
//! # fn main() {}
//! ```
//!
//! The cases test only what a codec declares: dtypes it [`accepts`](Compression::accepts), values
//! against its [`error_bound`](Compression::error_bound) (Exact: bit-equal; Elementwise: every
//! value; MeanSquared: over standard-normal input), exactness when its capabilities say lossless.
//! Inputs come from a generator seeded per case ([`fixtures::SEED`]), so a failure reproduces.
//! Codecs are synchronous; the cases are `async` only to share the shape of the other suites.
//!
//! The helpers ([`checks`], [`fixtures`]) are public so that codec crates can build their own
//! cases from the same random tensors and bound checks.

mod cases;
pub mod checks;
pub mod fixtures;
mod hostile;
mod into;

use std::sync::Arc;

use averager_core::compression::Compression;

pub use cases::{
    compression_ratio_is_positive_and_finite, constant_tensors_decode_to_finite_values,
    empty_tensors_round_trip, every_role_round_trips, lossless_codecs_declare_exact_bounds,
    message_names_codec_shape_and_dtype, parts_round_trip_like_whole_tensors,
    registry_decodes_like_the_codec, round_trip_every_accepted_dtype, scalars_round_trip,
    unaccepted_dtypes_are_refused,
};
pub use hostile::{
    garbage_buffers_never_panic, huge_declared_shapes_are_refused_quickly, mutated_buffers_never_panic,
    truncated_buffers_are_errors, unknown_dtype_names_are_errors,
};
pub use into::{
    decode_add_into_accumulates_or_leaves_untouched, decode_into_matches_extract,
    encode_difference_into_matches_the_steps, encode_into_appends_what_compress_writes,
};

use crate::Outcome;

/// Builds the codec under test; every case asks for a fresh one.
///
/// Implemented for every `Fn() -> Arc<dyn Compression>`, so a closure is a factory.
pub trait CodecFactory {
    /// A codec to test.
    fn codec(&self) -> Arc<dyn Compression>;
}

impl<F: Fn() -> Arc<dyn Compression>> CodecFactory for F {
    fn codec(&self) -> Arc<dyn Compression> {
        self()
    }
}

/// Runs every case in order and returns each one's name and outcome (for reports and for
/// checking that the suite catches a broken codec).
pub async fn run_all(factory: &impl CodecFactory) -> Vec<(&'static str, Outcome)> {
    crate::__compression_cases! { __suite_run_all! { compression, factory, } }
}

/// Lists every case once, for [`compression_suite!`](crate::compression_suite) and [`run_all`].
#[doc(hidden)]
#[macro_export]
macro_rules! __compression_cases {
    ($callback:ident ! { $($args:tt)* }) => {
        $crate::$callback! { $($args)* [
            round_trip_every_accepted_dtype,
            message_names_codec_shape_and_dtype,
            every_role_round_trips,
            empty_tensors_round_trip,
            scalars_round_trip,
            parts_round_trip_like_whole_tensors,
            constant_tensors_decode_to_finite_values,
            compression_ratio_is_positive_and_finite,
            unaccepted_dtypes_are_refused,
            lossless_codecs_declare_exact_bounds if lossless,
            registry_decodes_like_the_codec if registered,
            encode_into_appends_what_compress_writes,
            decode_into_matches_extract,
            decode_add_into_accumulates_or_leaves_untouched,
            encode_difference_into_matches_the_steps,
            truncated_buffers_are_errors,
            garbage_buffers_never_panic,
            huge_declared_shapes_are_refused_quickly,
            unknown_dtype_names_are_errors,
            mutated_buffers_never_panic,
        ] }
    };
}

/// Expands to a module `$name` with one `#[test]` per compression case, each running the case on
/// the codec that `$factory` (a `Fn() -> Arc<dyn Compression>`) builds.
///
/// ```
/// use std::sync::Arc;
/// use averager_core::compression::{Compression, NoCompression};
///
/// averager_conformance::compression_suite!(none, || Arc::new(NoCompression) as Arc<dyn Compression>);
/// # fn main() {}
/// ```
///
/// The module does `use super::*`, so the factory may name anything the calling file imports.
///
/// Two cases check promises only some codecs make: `lossless` (the codec's capabilities say
/// lossless) and `registered` (its name is in `Registry::global()`). A codec without one says so
/// with `lacks`, and `cargo test` reports those cases as ignored:
///
/// ```rust,ignore
/// averager_conformance::compression_suite!(my_lossy, || Arc::new(MyLossy) as Arc<dyn Compression>, lacks: [lossless]);
/// ```
#[macro_export]
macro_rules! compression_suite {
    ($name:ident, $factory:expr $(, lacks: [$($lack:ident),* $(,)?])? $(,)?) => {
        $crate::__compression_cases! { __suite_tests! { compression, $name, $factory, [$($($lack),*)?], } }
    };
}

/// Whether the codec declares `requirement`: `lossless` or `registered` (see
/// [`compression_suite!`](crate::compression_suite)).
///
/// # Errors
/// A [`Failure`](crate::Failure) for another name, or a registry lookup that fails otherwise than
/// by not knowing the name.
pub async fn declares(factory: &impl CodecFactory, requirement: &str) -> Result<bool, crate::Failure> {
    let codec = factory.codec();
    match requirement {
        "lossless" => Ok(codec.capabilities().lossless),
        "registered" => match averager_core::Registry::global().codec(codec.name()) {
            Ok(_) => Ok(true),
            Err(averager_core::Error::UnknownPlugin { .. }) => Ok(false),
            Err(e) => Err(crate::Failure::new(format!("registry lookup of {:?} failed: {e}", codec.name()))),
        },
        other => Err(crate::unknown_requirement("compression", other, &["lossless", "registered"])),
    }
}
