//! `averager._native`: the Rust half of the Python package `averager`.
//!
//! The Python half (`pysrc/averager/`) holds the user-facing classes with hivemind's names and
//! defaults; this module gives it a Kademlia node (`dht::NativeDht`), an averager on the gRPC
//! transport (`averager::NativeAverager`) and the handle of a running step
//! (`control::NativeControl`). Tensors cross the boundary as raw pointers to the user's own
//! contiguous buffers (numpy's `__array_interface__`, torch's `data_ptr()`): a step's all-reduce
//! reads them in place and writes its result into them (`lender.rs`); when that cannot be (the
//! user wrote through `get_tensors()` before the all-reduce, or the step queued behind another),
//! its inputs are copied in with one `memcpy` per tensor and the core writes the result back
//! itself (`target.rs`). The GIL is released whenever Rust waits.

mod averager;
mod buffers;
mod control;
mod dht;
mod errors;
mod lender;
mod provider;
mod queue;
mod runtime;
mod target;
mod timings;

use pyo3::prelude::*;

/// The seconds since the Unix epoch: the clock of `scheduled_time` (hivemind's `get_dht_time`).
#[pyfunction]
fn get_dht_time() -> f64 {
    ::averager::time::dht_now()
}

/// The codec names the registry knows (built-in and plugins linked into this module).
#[pyfunction]
fn codec_names() -> Vec<String> {
    ::averager::Registry::global().codecs().into_iter().map(|p| p.name.to_string()).collect()
}

/// Sends the core's `tracing` events to stderr when `AVERAGER_LOG` holds a filter (`warn`,
/// `averager=debug`, ...): the Rust side's reasons for a failed or partial round are otherwise
/// invisible from Python.
fn init_logging() {
    let Ok(filter) = std::env::var("AVERAGER_LOG") else { return };
    let Ok(filter) = tracing_subscriber::EnvFilter::try_new(&filter) else {
        eprintln!("averager: AVERAGER_LOG={filter:?} is not a tracing filter; logging stays off");
        return;
    };
    // Fails only when another subscriber is already installed, which then keeps logging.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The module object.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logging();
    m.add_class::<dht::NativeDht>()?;
    m.add_class::<averager::NativeAverager>()?;
    m.add_class::<control::NativeControl>()?;
    m.add_function(wrap_pyfunction!(get_dht_time, m)?)?;
    m.add_function(wrap_pyfunction!(codec_names, m)?)?;
    m.add("AveragerError", m.py().get_type::<errors::AveragerError>())?;
    Ok(())
}
