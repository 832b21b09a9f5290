//! The user's tensors as raw memory: Python hands over `(address, nbytes, dtype, shape)` of each
//! contiguous CPU buffer (numpy array or torch tensor); a step's inputs are copied from them into
//! the averager's tensors with one `memcpy` each, and its result written into them by
//! `target.rs`.

use ::averager::{DType, Tensor};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// One user buffer. The Python side keeps the object that owns the memory alive for as long as
/// this value is used (the averager holds the tensors; a step's control holds them until done).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserBuffer {
    address: usize,
    nbytes: usize,
    dtype: DType,
}

/// What Python passes for each tensor.
pub(crate) type BufferSpec = (usize, usize, String, Vec<usize>);

/// The element types averaging supports (floating point, as hivemind's averager).
fn parse_dtype(name: &str) -> PyResult<DType> {
    match name {
        "float32" => Ok(DType::F32),
        "float64" => Ok(DType::F64),
        "float16" => Ok(DType::F16),
        "bfloat16" => Ok(DType::BF16),
        other => Err(PyTypeError::new_err(format!(
            "unsupported tensor dtype {other}: use float32, float16, bfloat16 or float64"
        ))),
    }
}

impl UserBuffer {
    /// Checks one spec (dtype, and a size that matches the shape).
    pub(crate) fn new(spec: &BufferSpec) -> PyResult<UserBuffer> {
        let (address, nbytes, dtype, shape) = spec;
        let dtype = parse_dtype(dtype)?;
        let expected = shape
            .iter()
            .try_fold(dtype.size_bytes(), |n, d| n.checked_mul(*d))
            .ok_or_else(|| PyValueError::new_err(format!("shape {shape:?} is too large")))?;
        if expected != *nbytes {
            return Err(PyValueError::new_err(format!(
                "buffer of {nbytes} bytes does not hold a {dtype} tensor of shape {shape:?}"
            )));
        }
        if *address == 0 && *nbytes > 0 {
            return Err(PyValueError::new_err("tensor has no data pointer"));
        }
        Ok(UserBuffer { address: *address, nbytes: *nbytes, dtype })
    }

    /// Whether `self` has the dtype and size of `other` (the buffer a tensor was built from).
    pub(crate) fn check_like(&self, other: &UserBuffer, index: usize) -> PyResult<()> {
        if self.dtype != other.dtype || self.nbytes != other.nbytes {
            return Err(PyValueError::new_err(format!(
                "tensor {index} changed from {} bytes of {} to {} bytes of {} since the averager was built",
                other.nbytes, other.dtype, self.nbytes, self.dtype
            )));
        }
        Ok(())
    }

    /// The buffer's address.
    pub(crate) fn address(&self) -> usize {
        self.address
    }

    /// The buffer's element type.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// The buffer's size in bytes.
    pub(crate) fn nbytes(&self) -> usize {
        self.nbytes
    }

    /// The user's memory, to write a step's result into.
    ///
    /// # Safety
    /// The buffer's owner must stay alive, and nothing else may read or write the memory, for
    /// as long as the returned slice is used.
    pub(crate) unsafe fn bytes_mut<'a>(&self) -> &'a mut [u8] {
        if self.nbytes == 0 {
            return &mut [];
        }
        // SAFETY: the Python side passed the address and size of a live, writable, contiguous
        // CPU buffer (checked in Python); the caller keeps it alive and unaliased.
        unsafe { std::slice::from_raw_parts_mut(self.address as *mut u8, self.nbytes) }
    }

    /// Checks one spec and makes a tensor holding a copy of its contents.
    pub(crate) fn parse(spec: &BufferSpec) -> PyResult<(UserBuffer, Tensor)> {
        let buffer = UserBuffer::new(spec)?;
        let mut tensor = Tensor::zeros(spec.3.clone(), buffer.dtype).map_err(crate::errors::to_py)?;
        buffer.copy_into(&mut tensor)?;
        Ok((buffer, tensor))
    }

    /// Copies the user's memory into `tensor` (same dtype and size, checked).
    pub(crate) fn copy_into(&self, tensor: &mut Tensor) -> PyResult<()> {
        let dst = self.check(tensor)?;
        if self.nbytes > 0 {
            // SAFETY: the Python side passed the address and size of a live, contiguous CPU
            // buffer and keeps its owner alive while this buffer is in use (module docs); the
            // destination is our own tensor's storage of exactly `nbytes` (checked above).
            let src = unsafe { std::slice::from_raw_parts(self.address as *const u8, self.nbytes) };
            copy_bytes(dst, src);
        }
        Ok(())
    }

    fn check<'t>(&self, tensor: &'t mut Tensor) -> PyResult<&'t mut [u8]> {
        if tensor.dtype() != self.dtype {
            return Err(PyValueError::new_err(format!(
                "tensor changed dtype from {} to {}",
                self.dtype,
                tensor.dtype()
            )));
        }
        let bytes = bytes_of(tensor)?;
        if bytes.len() != self.nbytes {
            return Err(PyValueError::new_err("tensor changed size since the averager was built"));
        }
        Ok(bytes)
    }
}

/// Buffers from this size on are copied by several threads.
const PARALLEL_COPY_BYTES: usize = 8 << 20;

/// At most this many threads copy one buffer: memory bandwidth, not cores, is the limit.
const COPY_THREADS: usize = 4;

/// `dst.copy_from_slice(src)`, split over a few threads for large buffers: one core's `memcpy`
/// reaches only part of a machine's memory bandwidth, and a step waits for this copy.
fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(COPY_THREADS);
    if dst.len() < PARALLEL_COPY_BYTES || threads < 2 {
        dst.copy_from_slice(src);
        return;
    }
    let chunk = dst.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (to, from) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
            scope.spawn(move || to.copy_from_slice(from));
        }
    });
}

/// A floating-point tensor's storage as bytes.
pub(crate) fn bytes_of(tensor: &mut Tensor) -> PyResult<&mut [u8]> {
    let err = |e: ::averager::Error| PyTypeError::new_err(e.to_string());
    Ok(match tensor.dtype() {
        DType::F32 => bytemuck::cast_slice_mut(tensor.as_f32_mut().map_err(err)?),
        DType::F64 => bytemuck::cast_slice_mut(tensor.as_f64_mut().map_err(err)?),
        DType::F16 => bytemuck::cast_slice_mut(tensor.as_f16_mut().map_err(err)?),
        DType::BF16 => bytemuck::cast_slice_mut(tensor.as_bf16_mut().map_err(err)?),
        other => return Err(PyTypeError::new_err(format!("unsupported tensor dtype {other}"))),
    })
}

/// Parses every spec: the buffers and the averager's initial tensors.
pub(crate) fn parse_all(specs: &[BufferSpec]) -> PyResult<(Vec<UserBuffer>, Vec<Tensor>)> {
    specs.iter().map(UserBuffer::parse).collect::<PyResult<Vec<_>>>().map(|v| v.into_iter().unzip())
}

/// A new set of tensors (of `shapes`) holding a copy of every buffer.
pub(crate) fn snapshot(buffers: &[UserBuffer], shapes: &[Vec<usize>]) -> PyResult<Vec<Tensor>> {
    if buffers.len() != shapes.len() {
        return Err(PyValueError::new_err(format!(
            "{} tensors given, the averager holds {}",
            buffers.len(),
            shapes.len()
        )));
    }
    buffers
        .iter()
        .zip(shapes)
        .map(|(b, shape)| {
            let mut tensor = Tensor::zeros(shape.clone(), b.dtype).map_err(crate::errors::to_py)?;
            b.copy_into(&mut tensor)?;
            Ok(tensor)
        })
        .collect()
}

/// Checks that `buffers` match the buffers the averager was built from, one for one.
pub(crate) fn check_all_like(buffers: &[UserBuffer], built: &[UserBuffer]) -> PyResult<()> {
    if buffers.len() != built.len() {
        return Err(PyValueError::new_err(format!(
            "{} tensors given, the averager holds {}",
            buffers.len(),
            built.len()
        )));
    }
    buffers.iter().zip(built).enumerate().try_for_each(|(i, (b, first))| b.check_like(first, i))
}

/// Re-reads every buffer into the averager's tensors.
pub(crate) fn copy_all_in(buffers: &[UserBuffer], tensors: &mut [Tensor]) -> PyResult<()> {
    check_count(buffers, tensors)?;
    buffers.iter().zip(tensors.iter_mut()).try_for_each(|(b, t)| b.copy_into(t))
}

fn check_count(buffers: &[UserBuffer], tensors: &[Tensor]) -> PyResult<()> {
    if buffers.len() != tensors.len() {
        return Err(PyValueError::new_err(format!(
            "{} tensors given, the averager holds {}",
            buffers.len(),
            tensors.len()
        )));
    }
    Ok(())
}
