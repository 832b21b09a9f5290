//! protocol 6.3 and 7.4: reassembling the tensors of a state download from their chunks, within a
//! byte budget, so that a hostile donor cannot make the downloader buffer unbounded data.

use averager_proto::MessageCode;

use crate::compression::{WireTensor, combine_from_streaming};
use crate::error::{Error, Result};

/// What every chunk costs the budget beyond its buffer, so that an endless run of empty chunks (or
/// of empty tensors) is bounded too.
pub(super) const CHUNK_OVERHEAD_BYTES: usize = 64;

/// The chunks of the tensor being received.
struct Current {
    chunks: Vec<WireTensor>,
    /// How many chunks its first chunk announced (at least 1: an empty buffer still sends one).
    expected: usize,
    /// What was left of the budget when it started: the bound given to the combiner.
    budget_at_start: usize,
}

/// Collects chunks into whole wire tensors.
///
/// A chunk with a non-empty `dtype` starts a new tensor (protocol 6.3); any other chunk continues the
/// current one. The chunk count announced by a tensor's first chunk (protocol 7.4) is enforced: more
/// chunks, or fewer before the next tensor or the end, are a protocol violation.
pub(super) struct Assembler {
    budget: usize,
    current: Option<Current>,
}

impl Assembler {
    /// An assembler that accepts at most `max_bytes` of chunks (buffers plus
    /// [`CHUNK_OVERHEAD_BYTES`] each).
    pub(super) fn new(max_bytes: usize) -> Self {
        Assembler { budget: max_bytes, current: None }
    }

    /// Charges `bytes` to the budget.
    ///
    /// # Errors
    /// [`Error::Protocol`] (`PROTOCOL_VIOLATION`) when the budget is exceeded.
    pub(super) fn charge(&mut self, bytes: usize) -> Result<()> {
        self.budget = self.budget.checked_sub(bytes).ok_or_else(|| {
            violation("the donor's state exceeds the max_state_bytes limit of this download".into())
        })?;
        Ok(())
    }

    /// Adds one chunk; returns the previous tensor, complete, when `chunk` starts a new one.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a continuation with no tensor started, too many chunks, a negative
    /// chunk count, a tensor left short of its announced chunks, or an exceeded budget.
    pub(super) fn push(&mut self, chunk: WireTensor) -> Result<Option<WireTensor>> {
        self.charge(chunk.buffer.len().saturating_add(CHUNK_OVERHEAD_BYTES))?;
        if chunk.dtype.is_empty() {
            let Some(current) = self.current.as_mut() else {
                return Err(violation("a continuation chunk came before any tensor started".into()));
            };
            if current.chunks.len() >= current.expected {
                return Err(violation(format!(
                    "a tensor announced {} chunks but sent more",
                    current.expected
                )));
            }
            current.chunks.push(chunk);
            return Ok(None);
        }
        let expected = usize::try_from(chunk.chunks)
            .map_err(|_| violation(format!("a tensor announced {} chunks", chunk.chunks)))?
            .max(1);
        let done = self.finish()?;
        // The chunk was charged already: the tensor may use what was left before it.
        let budget_at_start = self.budget.saturating_add(chunk.buffer.len());
        self.current = Some(Current { chunks: vec![chunk], expected, budget_at_start });
        Ok(done)
    }

    /// Completes the tensor under way, if any (at the end of the stream).
    ///
    /// # Errors
    /// [`Error::Protocol`] when it is short of its announced chunks or over its budget.
    pub(super) fn finish(&mut self) -> Result<Option<WireTensor>> {
        let Some(current) = self.current.take() else {
            return Ok(None);
        };
        if current.chunks.len() != current.expected {
            return Err(violation(format!(
                "a tensor announced {} chunks but sent {}",
                current.expected,
                current.chunks.len()
            )));
        }
        combine_from_streaming(current.chunks, current.budget_at_start)
            .map(Some)
            .map_err(|e| violation(e.to_string()))
    }
}

fn violation(detail: String) -> Error {
    Error::protocol(MessageCode::ProtocolViolation, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::split_for_streaming;

    fn wire(len: usize) -> WireTensor {
        WireTensor {
            buffer: vec![7u8; len].into(),
            size: vec![len as u32],
            dtype: "uint8".into(),
            codec: "none".into(),
            ..Default::default()
        }
    }

    #[test]
    fn tensors_are_split_at_each_first_chunk() {
        let mut assembler = Assembler::new(1 << 20);
        let mut done = Vec::new();
        for len in [0, 10, 25] {
            for chunk in split_for_streaming(wire(len), 8) {
                done.extend(assembler.push(chunk).unwrap());
            }
        }
        done.extend(assembler.finish().unwrap());
        assert_eq!(done, vec![wire(0), wire(10), wire(25)]);
    }

    #[test]
    fn chunk_counts_are_enforced() {
        let mut chunks = split_for_streaming(wire(20), 8);
        let mut assembler = Assembler::new(1 << 20);
        assembler.push(chunks.remove(0)).unwrap();
        assembler.push(chunks.remove(0)).unwrap();
        // One chunk missing at the end of the stream.
        assert!(assembler.finish().is_err());

        let chunks = split_for_streaming(wire(16), 8);
        let mut assembler = Assembler::new(1 << 20);
        for chunk in chunks.iter().cloned() {
            assembler.push(chunk).unwrap();
        }
        // One chunk too many.
        assert!(assembler.push(chunks[1].clone()).is_err());

        let mut assembler = Assembler::new(1 << 20);
        assert!(assembler.push(WireTensor { buffer: vec![1].into(), ..Default::default() }).is_err());
        assert!(assembler.push(WireTensor { chunks: -1, ..wire(4) }).is_err());
    }

    #[test]
    fn the_budget_bounds_buffers_and_empty_chunks() {
        let mut assembler = Assembler::new(100 + CHUNK_OVERHEAD_BYTES);
        assert!(assembler.push(wire(100)).is_ok());
        assert!(assembler.push(wire(0)).is_err());

        let mut assembler = Assembler::new(10 * CHUNK_OVERHEAD_BYTES);
        let pushed = (0..100).take_while(|_| assembler.push(wire(0)).is_ok()).count();
        assert_eq!(pushed, 10);
    }
}
