//! Comparisons of a codec's output against its promises, and wrappers that turn a codec's panic
//! into a [`Failure`] so one broken codec fails a case instead of aborting the run.

use std::any::Any;
use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};

use averager_core::compression::{Compression, CompressionInfo, ErrorBound, WireTensor};
use averager_core::tensor::{Tensor, TensorView};

use crate::{Failure, Outcome, ensure};

/// A codec call that did not panic: the codec's own result.
pub type Caught<T> = Result<averager_core::Result<T>, Failure>;

/// Prefixes a failure's message with `context` (the codec, the input), for `map_err`.
pub fn in_context(context: impl Display) -> impl FnOnce(Failure) -> Failure {
    move |f| Failure::new(format!("{context}: {}", f.message))
}

/// `"float32 [123, 45] (requires_grad)"`: how failures name a tensor.
pub fn describe(tensor: &TensorView<'_>) -> String {
    let grad = if tensor.requires_grad() { " (requires_grad)" } else { "" };
    format!("{} {:?}{grad}", tensor.dtype(), tensor.shape())
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_string())
}

/// Calls `codec.compress`, turning a panic into a [`Failure`].
///
/// # Errors
/// A [`Failure`] when the codec panicked.
pub fn compress_caught(
    codec: &dyn Compression,
    tensor: &TensorView<'_>,
    info: &CompressionInfo,
) -> Caught<WireTensor> {
    catch_unwind(AssertUnwindSafe(|| codec.compress(tensor, info))).map_err(|payload| {
        Failure::new(format!(
            "codec {:?} panicked in compress of {}: {}",
            codec.name(),
            describe(tensor),
            panic_message(payload.as_ref())
        ))
    })
}

/// Calls `codec.extract`, turning a panic into a [`Failure`]; `input` says what was decoded.
///
/// # Errors
/// A [`Failure`] when the codec panicked.
pub fn extract_caught(codec: &dyn Compression, message: &WireTensor, input: &str) -> Caught<Tensor> {
    catch_unwind(AssertUnwindSafe(|| codec.extract(message))).map_err(|payload| {
        Failure::new(format!(
            "codec {:?} panicked in extract of {input}: {} (untrusted input must give an error)",
            codec.name(),
            panic_message(payload.as_ref())
        ))
    })
}

/// Checks the promise of `compress`: the message names the codec and its wire type, carries the
/// shape, the original dtype name and `requires_grad`, and leaves `chunks` at 0.
///
/// # Errors
/// A [`Failure`] naming the first wrong field.
pub fn check_wire_header(codec: &dyn Compression, original: &TensorView<'_>, wire: &WireTensor) -> Outcome {
    // A delegating codec (a selector, a wrapper built from settings) names the registered codec
    // it encoded with; the header must match that codec instead of the delegating one.
    let (name, wire_type) = if codec.delegates() {
        match averager_core::Registry::global().codec(&wire.codec) {
            Ok(named) => (named.name().to_string(), named.wire_type()),
            Err(e) => {
                return Err(Failure::new(format!(
                    "a delegating codec's message names {:?}, which the registry cannot build: {e}",
                    wire.codec
                )));
            }
        }
    } else {
        (codec.name().to_string(), codec.wire_type())
    };
    ensure!(wire.codec == name, "message names codec {:?}, expected {:?}", wire.codec, name);
    ensure!(
        wire.compression == wire_type as i32,
        "message has compression {}, expected {} ({:?})",
        wire.compression,
        wire_type as i32,
        wire_type
    );
    ensure!(
        wire.dtype == original.dtype().name(),
        "message has dtype {:?}, expected the original {:?}",
        wire.dtype,
        original.dtype().name()
    );
    let shape: Vec<u64> = original.shape().iter().map(|&d| d as u64).collect();
    let size: Vec<u64> = wire.size.iter().map(|&d| u64::from(d)).collect();
    ensure!(size == shape, "message has size {size:?}, expected the shape {shape:?}");
    ensure!(
        wire.requires_grad == original.requires_grad(),
        "message has requires_grad {}, expected {}",
        wire.requires_grad,
        original.requires_grad()
    );
    ensure!(wire.chunks == 0, "message has chunks {}, expected 0 (only streaming sets it)", wire.chunks);
    Ok(())
}

/// Checks that `decoded` has the dtype, shape and `requires_grad` of `original`.
///
/// # Errors
/// A [`Failure`] naming what differs.
pub fn check_same_layout(original: &TensorView<'_>, decoded: &Tensor) -> Outcome {
    ensure!(decoded.dtype() == original.dtype(), "decoded dtype {} differs", decoded.dtype());
    ensure!(decoded.shape() == original.shape(), "decoded shape {:?} differs", decoded.shape());
    ensure!(
        decoded.requires_grad() == original.requires_grad(),
        "decoded requires_grad {} differs",
        decoded.requires_grad()
    );
    Ok(())
}

/// Checks that a decoded untrusted message has exactly the shape and dtype its header declares.
///
/// # Errors
/// A [`Failure`] naming what differs.
pub fn check_declared_layout(message: &WireTensor, decoded: &Tensor) -> Outcome {
    let declared: Vec<u64> = message.size.iter().map(|&d| u64::from(d)).collect();
    let shape: Vec<u64> = decoded.shape().iter().map(|&d| d as u64).collect();
    ensure!(shape == declared, "decoded to shape {shape:?}, the message declares {declared:?}");
    ensure!(
        decoded.dtype().name() == message.dtype,
        "decoded to dtype {}, the message declares {:?}",
        decoded.dtype(),
        message.dtype
    );
    Ok(())
}

/// Whether two tensors hold bit-identical elements of one dtype.
pub fn bit_equal(a: &TensorView<'_>, b: &TensorView<'_>) -> bool {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    a.data().write_le_bytes(&mut x);
    b.data().write_le_bytes(&mut y);
    a.dtype() == b.dtype() && x == y
}

/// Checks `decoded` against `original` under `bound` (the codec's declaration for the dtype):
/// bit equality for [`ErrorBound::Exact`], every element for [`ErrorBound::Elementwise`], the mean
/// squared error for [`ErrorBound::MeanSquared`]. Complex values count as two real lanes. NaN in
/// the output never satisfies a bound.
///
/// # Errors
/// A [`Failure`] with the worst element or the observed error.
pub fn check_within_bound(bound: ErrorBound, original: &TensorView<'_>, decoded: &Tensor) -> Outcome {
    let x = original.data().to_f64_lanes();
    let d = decoded.view().data().to_f64_lanes();
    ensure!(x.len() == d.len(), "decoded {} values, expected {}", d.len(), x.len());
    match bound {
        ErrorBound::Exact => {
            if bit_equal(original, &decoded.view()) {
                return Ok(());
            }
            let lane = x.iter().zip(&d).position(|(a, b)| a.to_bits() != b.to_bits());
            Err(match lane {
                Some(i) => Failure::new(format!(
                    "declared Exact, but value {i} decoded to {} instead of {}",
                    d[i], x[i]
                )),
                None => Failure::new("declared Exact, but the decoded bytes differ from the input"),
            })
        }
        ErrorBound::Elementwise { atol, rtol } => {
            let excess = |i: usize| (d[i] - x[i]).abs() - (atol + rtol * x[i].abs());
            let outside: Vec<usize> =
                (0..x.len()).filter(|&i| excess(i).is_nan() || excess(i) > 0.0).collect();
            let Some(&worst) = outside.iter().max_by(|&&a, &&b| excess(a).total_cmp(&excess(b))) else {
                return Ok(());
            };
            Err(Failure::new(format!(
                "{} of {} values break |d - x| <= {atol} + {rtol}|x|; worst: value {worst} is {} for {}",
                outside.len(),
                x.len(),
                d[worst],
                x[worst]
            )))
        }
        ErrorBound::MeanSquared(limit) => {
            if x.is_empty() {
                return Ok(());
            }
            let mse = x.iter().zip(&d).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / x.len() as f64;
            ensure!(mse.is_finite() && mse <= limit, "mean squared error {mse} exceeds the declared {limit}");
            Ok(())
        }
    }
}

/// Checks that every floating (and complex) element of `decoded` is finite.
///
/// # Errors
/// A [`Failure`] naming the first non-finite value.
pub fn check_finite(decoded: &Tensor) -> Outcome {
    let lanes = decoded.view().data().to_f64_lanes();
    if let Some(i) = lanes.iter().position(|v| !v.is_finite()) {
        return Err(Failure::new(format!("value {i} decoded to {}", lanes[i])));
    }
    Ok(())
}

/// Compresses and extracts `tensor`, checks the promises of both (the message header, then the
/// decoded dtype, shape, `requires_grad` and values within `codec.error_bound(dtype)`), and
/// returns the decoded tensor.
///
/// # Errors
/// A [`Failure`] naming the codec, the tensor and the broken promise.
pub fn check_round_trip(
    codec: &dyn Compression,
    tensor: &TensorView<'_>,
    info: &CompressionInfo,
) -> Result<Tensor, Failure> {
    let context = format!("codec {:?}, {}", codec.name(), describe(tensor));
    let wire = compress_caught(codec, tensor, info)?
        .map_err(|e| Failure::new(format!("{context}: compress of an accepted dtype failed: {e}")))?;
    check_wire_header(codec, tensor, &wire).map_err(in_context(&context))?;
    let decoded = extract_caught(codec, &wire, &format!("its own encoding of {}", describe(tensor)))?
        .map_err(|e| Failure::new(format!("{context}: extract of its own message failed: {e}")))?;
    check_same_layout(tensor, &decoded).map_err(in_context(&context))?;
    check_within_bound(codec.error_bound(tensor.dtype()), tensor, &decoded).map_err(in_context(&context))?;
    Ok(decoded)
}
