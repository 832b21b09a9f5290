//! protocol 7.4: splitting a wire tensor into chunks for streaming (state download) and combining
//! them again, with a cap on what a remote peer can make us buffer.

use super::WireTensor;
use crate::error::{Error, Result};

/// Default chunk size of state downloads (protocol 9: 65536 buffer bytes).
pub const STREAM_CHUNK_BYTES: usize = 65536;

/// Splits `tensor` into messages of at most `chunk_bytes` buffer bytes.
///
/// The first message carries every field plus `chunks = ceil(len / chunk_bytes)` (0 for an
/// empty buffer); the others carry only their slice of the buffer. At least one message is always
/// produced. Slices share the original buffer (no copy).
pub fn split_for_streaming(tensor: WireTensor, chunk_bytes: usize) -> Vec<WireTensor> {
    let chunk_bytes = chunk_bytes.max(1);
    let len = tensor.buffer.len();
    let chunks = len.div_ceil(chunk_bytes);
    let buffer = tensor.buffer.clone();
    let first = WireTensor {
        buffer: buffer.slice(..len.min(chunk_bytes)),
        chunks: i32::try_from(chunks).unwrap_or(i32::MAX),
        ..tensor
    };
    let mut out = vec![first];
    out.extend((1..chunks).map(|k| WireTensor {
        buffer: buffer.slice(k * chunk_bytes..((k + 1) * chunk_bytes).min(len)),
        ..Default::default()
    }));
    out
}

/// Reassembles a streamed tensor: the first chunk's fields, all buffers concatenated.
///
/// # Errors
/// [`Error::Codec`] when there are no chunks, or the buffers add up to more than `max_bytes`
/// (checked before copying anything).
pub fn combine_from_streaming(chunks: Vec<WireTensor>, max_bytes: usize) -> Result<WireTensor> {
    let mut iter = chunks.into_iter();
    let Some(first) = iter.next() else {
        return Err(Error::codec("stream", "no chunks to combine"));
    };
    let rest: Vec<WireTensor> = iter.collect();
    let total = rest.iter().try_fold(first.buffer.len(), |acc, c| acc.checked_add(c.buffer.len()));
    match total {
        Some(total) if total <= max_bytes => {
            if rest.is_empty() {
                return Ok(WireTensor { chunks: 0, ..first });
            }
            let mut buffer = Vec::with_capacity(total);
            buffer.extend_from_slice(&first.buffer);
            for c in &rest {
                buffer.extend_from_slice(&c.buffer);
            }
            Ok(WireTensor { buffer: buffer.into(), chunks: 0, ..first })
        }
        _ => Err(Error::codec("stream", format!("streamed tensor exceeds the {max_bytes}-byte limit"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(len: usize) -> WireTensor {
        WireTensor {
            buffer: (0..len).map(|i| i as u8).collect::<Vec<u8>>().into(),
            size: vec![len as u32],
            dtype: "uint8".into(),
            requires_grad: true,
            codec: "none".into(),
            ..Default::default()
        }
    }

    #[test]
    fn chunk_counts_follow_scenario_24() {
        let len: usize = 512 * 12288 * 4;
        for chunk in [1024, 65536, 65537, 1_000_000_000] {
            let expected = len.div_ceil(chunk);
            let parts = split_for_streaming(tensor(len), chunk);
            assert_eq!(parts.len(), expected.max(1), "chunk {chunk}");
            assert_eq!(parts[0].chunks as usize, len.div_ceil(chunk));
            assert!(parts[1..].iter().all(|p| p.dtype.is_empty() && p.size.is_empty()));
            assert_eq!(combine_from_streaming(parts, usize::MAX).unwrap(), tensor(len));
        }
    }

    #[test]
    fn empty_buffers_still_send_one_message() {
        let parts = split_for_streaming(tensor(0), 10);
        assert_eq!((parts.len(), parts[0].chunks), (1, 0));
        assert_eq!(combine_from_streaming(parts, 0).unwrap(), tensor(0));
    }

    #[test]
    fn combining_refuses_too_much_data_and_nothing() {
        let parts = split_for_streaming(tensor(100), 10);
        assert!(combine_from_streaming(parts, 99).is_err());
        assert!(combine_from_streaming(Vec::new(), 10).is_err());
    }
}
