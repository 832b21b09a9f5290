//! Writing frames: a message as a head and its tensor's buffer (shared, not copied), error
//! frames, the end frame.

use averager_proto::{AveragingData, DownloadData, DownloadRequest, JoinRequest, MessageFromLeader, Tensor};
use bytes::{Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::{
    END_MARKER, ERROR_CODED, ERROR_MARKER, ERROR_REMOTE, ERROR_TOO_LARGE, MAX_ERROR_PAYLOAD, MAX_FRAME_BYTES,
};
use crate::error::{Error, Result};

/// A message the stream transports send. Those that carry a tensor say where, so that the
/// tensor's buffer (a part, megabytes) goes to the stream as it is instead of being copied into
/// the encoding.
pub trait Outgoing: Message + Sized {
    /// The field number of the message's tensor and the tensor; `None` for messages without one.
    fn tensor(&mut self) -> Option<(u32, &mut Option<Tensor>)> {
        None
    }
}

impl Outgoing for JoinRequest {}
impl Outgoing for MessageFromLeader {}
impl Outgoing for DownloadRequest {}

impl Outgoing for AveragingData {
    fn tensor(&mut self) -> Option<(u32, &mut Option<Tensor>)> {
        Some((4, &mut self.tensor_part))
    }
}

impl Outgoing for DownloadData {
    fn tensor(&mut self) -> Option<(u32, &mut Option<Tensor>)> {
        Some((2, &mut self.tensor_part))
    }
}

/// The field number of `Tensor.buffer`.
const TENSOR_BUFFER_FIELD: u32 = 1;

/// Encodes `message` as one frame (`u32` LE length, then the protobuf bytes), refusing it when
/// the encoding is over `limit`: a head with every field but the tensor's buffer, and that buffer
/// as the second chunk, shared rather than copied.
///
/// The tensor is written last and its buffer last within it. Protobuf decoders accept fields in
/// any order, so this is the same message as prost's own encoding (which keeps field order).
///
/// # Errors
/// [`Error::MessageTooLarge`] when the encoding is over `limit` or over [`MAX_FRAME_BYTES`].
pub fn encode_frame<T: Outgoing>(mut message: T, limit: usize) -> Result<Vec<Bytes>> {
    let (field, tensor) = match message.tensor() {
        Some((field, slot)) => (field, slot.take()),
        None => (0, None),
    };
    let mut head = BytesMut::with_capacity(4 + message.encoded_len() + 64);
    head.extend_from_slice(&[0u8; 4]);
    message.encode_raw(&mut head);
    let mut payload = Bytes::new();
    if let Some(mut tensor) = tensor {
        payload = std::mem::take(&mut tensor.buffer);
        let buffer_len = if payload.is_empty() {
            0
        } else {
            key_len(TENSOR_BUFFER_FIELD) + encoded_len_varint(payload.len() as u64) + payload.len()
        };
        encode_key(field, WireType::LengthDelimited, &mut head);
        encode_varint((tensor.encoded_len() + buffer_len) as u64, &mut head);
        tensor.encode_raw(&mut head);
        if !payload.is_empty() {
            encode_key(TENSOR_BUFFER_FIELD, WireType::LengthDelimited, &mut head);
            encode_varint(payload.len() as u64, &mut head);
        }
    }
    let size = head.len() - 4 + payload.len();
    if size > limit {
        return Err(Error::MessageTooLarge { size, limit });
    }
    let len = u32::try_from(size)
        .ok()
        .filter(|_| size <= MAX_FRAME_BYTES)
        .ok_or(Error::MessageTooLarge { size, limit: MAX_FRAME_BYTES })?;
    head[..4].copy_from_slice(&len.to_le_bytes());
    let mut chunks = vec![head.freeze()];
    if !payload.is_empty() {
        chunks.push(payload);
    }
    Ok(chunks)
}

/// The end frame.
pub fn end_frame() -> Bytes {
    const END: [u8; 4] = END_MARKER.to_le_bytes();
    Bytes::from_static(&END)
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The error frame carrying `error`: its size and limit when it is a message over a cap, its
/// `MessageCode` when it has one (so the caller gets the same kind of error), its text otherwise.
pub fn error_frame(error: &Error) -> Bytes {
    let (kind, payload) = match (error.root(), error.message_code()) {
        (Error::MessageTooLarge { size, limit }, _) => {
            let mut payload = Vec::with_capacity(16);
            payload.extend_from_slice(&(*size as u64).to_le_bytes());
            payload.extend_from_slice(&(*limit as u64).to_le_bytes());
            (ERROR_TOO_LARGE, payload)
        }
        (_, Some(code)) => {
            let mut payload = (code as i32).to_le_bytes().to_vec();
            payload.extend_from_slice(truncated(error.to_string(), MAX_ERROR_PAYLOAD - 4).as_bytes());
            (ERROR_CODED, payload)
        }
        (_, None) => (ERROR_REMOTE, truncated(error.to_string(), MAX_ERROR_PAYLOAD).into_bytes()),
    };
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&ERROR_MARKER.to_le_bytes());
    frame.push(kind);
    // The payload is at most MAX_ERROR_PAYLOAD bytes, so its length fits a u32.
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame.into()
}
