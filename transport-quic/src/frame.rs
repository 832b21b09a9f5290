//! The wire format of one call on one bidirectional QUIC stream (see the crate docs, "Framing").

use averager_core::{Error, Result};
use averager_proto::{AveragingData, DownloadData, DownloadRequest, JoinRequest, MessageFromLeader, Tensor};
use prost::Message;
use prost::bytes::{Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use quinn::{ConnectionError, ReadError, ReadExactError, RecvStream, SendStream, VarInt, WriteError};

/// The method byte of `rpc_join_group`.
pub(crate) const METHOD_JOIN: u8 = 1;
/// The method byte of `rpc_aggregate_part`.
pub(crate) const METHOD_AGGREGATE: u8 = 2;
/// The method byte of `rpc_download_state`.
pub(crate) const METHOD_DOWNLOAD: u8 = 3;

/// A length prefix with this value starts an error frame instead of a message (responses only).
const ERROR_MARKER: u32 = u32::MAX;
/// Error frame kind: the remote handler (or the remote transport) failed; the payload is UTF-8 text.
const ERROR_REMOTE: u8 = 1;
/// Error frame kind: a message over the cap; the payload is `size` and `limit` as u64 LE.
const ERROR_TOO_LARGE: u8 = 2;
/// Error frame kind: the remote handler failed with an error that has a proto `MessageCode`; the
/// payload is the code as i32 LE, then UTF-8 text. The caller gets an error with the same code.
const ERROR_CODED: u8 = 3;
/// The largest error payload read or written.
const MAX_ERROR_PAYLOAD: usize = 4096;

/// What a message buffer starts with: a length prefix is only a claim, so the buffer grows with
/// the bytes that actually arrive (a 5-byte header must not cost the cap in memory).
const INITIAL_MESSAGE_CAPACITY: usize = 64 * 1024;

/// The largest `max_message_bytes` the framing can carry (the marker value is reserved).
pub(crate) const MAX_FRAME_BYTES: usize = (u32::MAX - 1) as usize;

/// Stream error code: the call was cancelled (the response stream or the request stream dropped).
pub(crate) const CODE_CANCELLED: VarInt = VarInt::from_u32(1);
/// Stream error code: the request stream carried a message over the caller's cap.
pub(crate) const CODE_TOO_LARGE: VarInt = VarInt::from_u32(2);

/// One frame read from a stream.
#[derive(Debug)]
pub(crate) enum Frame {
    /// An encoded prost message, in one buffer that its decoded `bytes` fields share.
    Message(Bytes),
    /// An error frame sent by the peer.
    Failure(Error),
    /// The peer finished its send stream at a frame boundary.
    End,
}

/// The error a caller sees when the connection to `peer` is lost.
pub(crate) fn connection_lost(peer: &str, e: &ConnectionError) -> Error {
    Error::Unreachable { endpoint: peer.to_string(), reason: format!("connection lost: {e}") }
}

fn read_error(peer: &str, e: &ReadError) -> Error {
    match e {
        ReadError::Reset(code) => Error::Transport(format!("{peer} reset the stream (code {code})")),
        ReadError::ConnectionLost(e) => connection_lost(peer, e),
        other => Error::Transport(format!("reading from {peer}: {other}")),
    }
}

/// Maps a write failure to the core's error.
pub(crate) fn write_error(peer: &str, e: &WriteError) -> Error {
    match e {
        WriteError::Stopped(code) => Error::Cancelled(format!("{peer} stopped reading (code {code})")),
        WriteError::ConnectionLost(e) => connection_lost(peer, e),
        other => Error::Transport(format!("writing to {peer}: {other}")),
    }
}

async fn read_exact(recv: &mut RecvStream, buf: &mut [u8], peer: &str) -> Result<()> {
    recv.read_exact(buf).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(n) => {
            Error::Transport(format!("{peer} ended its stream inside a frame ({n} of {} bytes)", buf.len()))
        }
        ReadExactError::ReadError(e) => read_error(peer, &e),
    })
}

/// Reads one method byte; `None` when the stream ended or failed before it.
pub(crate) async fn read_method(recv: &mut RecvStream) -> Option<u8> {
    let mut method = [0u8; 1];
    recv.read_exact(&mut method).await.ok().map(|()| method[0])
}

/// Reads the next frame. A length over `limit` is refused before anything is allocated, and a
/// length within it is not trusted either: the buffer grows with the bytes that arrive. Error
/// frames are recognised only when `allow_error` (the response direction).
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    limit: usize,
    allow_error: bool,
    peer: &str,
) -> Result<Frame> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(Frame::End),
        Err(ReadExactError::FinishedEarly(n)) => {
            return Err(Error::Transport(format!(
                "{peer} ended its stream inside a frame header ({n} of 4 bytes)"
            )));
        }
        Err(ReadExactError::ReadError(e)) => return Err(read_error(peer, &e)),
    }
    let len = u32::from_le_bytes(header);
    if len == ERROR_MARKER && allow_error {
        return read_error_frame(recv, peer).await.map(Frame::Failure);
    }
    let size = usize::try_from(len).unwrap_or(usize::MAX);
    if size > limit {
        return Err(Error::MessageTooLarge { size, limit });
    }
    read_message(recv, size, peer).await.map(Frame::Message)
}

/// Reads a message body of `size` bytes, never holding more capacity than twice what arrived (or
/// [`INITIAL_MESSAGE_CAPACITY`]). QUIC hands out one chunk per packet, so the body is copied once
/// into a buffer of its own; decoding then slices tensor buffers out of it instead of copying.
async fn read_message(recv: &mut RecvStream, size: usize, peer: &str) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(size.min(INITIAL_MESSAGE_CAPACITY));
    while buf.len() < size {
        let chunk = match recv.read_chunk(size - buf.len(), true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => {
                return Err(Error::Transport(format!(
                    "{peer} ended its stream inside a frame ({} of {size} bytes)",
                    buf.len()
                )));
            }
            Err(e) => return Err(read_error(peer, &e)),
        };
        if buf.capacity() - buf.len() < chunk.len() {
            let target = (buf.capacity() * 2).max(buf.len() + chunk.len()).min(size);
            buf.reserve(target - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn read_error_frame(recv: &mut RecvStream, peer: &str) -> Result<Error> {
    let mut head = [0u8; 5];
    read_exact(recv, &mut head, peer).await?;
    let kind = head[0];
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_ERROR_PAYLOAD {
        return Err(Error::Transport(format!("{peer} sent an error frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    read_exact(recv, &mut payload, peer).await?;
    match kind {
        ERROR_TOO_LARGE if payload.len() == 16 => {
            let mut size = [0u8; 8];
            let mut limit = [0u8; 8];
            size.copy_from_slice(&payload[..8]);
            limit.copy_from_slice(&payload[8..]);
            Ok(Error::MessageTooLarge {
                size: usize::try_from(u64::from_le_bytes(size)).unwrap_or(usize::MAX),
                limit: usize::try_from(u64::from_le_bytes(limit)).unwrap_or(usize::MAX),
            })
        }
        ERROR_REMOTE => {
            Ok(Error::Transport(format!("{peer} failed the call: {}", String::from_utf8_lossy(&payload))))
        }
        ERROR_CODED if payload.len() >= 4 => {
            let (code, text) = payload.split_at(4);
            let code = i32::from_le_bytes([code[0], code[1], code[2], code[3]]);
            let detail = format!("{peer} failed the call: {}", String::from_utf8_lossy(text));
            Ok(match averager_proto::MessageCode::try_from(code) {
                Ok(code) => Error::from_message_code(code, detail),
                Err(_) => Error::Transport(format!("{detail} (unknown message code {code})")),
            })
        }
        other => Err(Error::Transport(format!("{peer} sent an error frame of unknown kind {other}"))),
    }
}

/// Decodes a message frame; its `bytes` fields share the frame's buffer.
pub(crate) fn decode<T: prost::Message + Default>(bytes: Bytes, peer: &str) -> Result<T> {
    T::decode(bytes).map_err(|e| Error::Transport(format!("{peer} sent an undecodable message: {e}")))
}

/// A message this transport sends. Those that carry a tensor say where, so that the tensor's
/// buffer (a part, megabytes) goes to QUIC as it is instead of being copied into the encoding.
pub(crate) trait Outgoing: prost::Message + Sized {
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
pub(crate) fn encode_frame<T: Outgoing>(mut message: T, limit: usize) -> Result<Vec<Bytes>> {
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
        .filter(|len| *len != ERROR_MARKER)
        .ok_or(Error::MessageTooLarge { size, limit: MAX_FRAME_BYTES })?;
    head[..4].copy_from_slice(&len.to_le_bytes());
    let mut chunks = vec![head.freeze()];
    if !payload.is_empty() {
        chunks.push(payload);
    }
    Ok(chunks)
}

/// Writes a frame from [`encode_frame`]; QUIC takes the chunks without copying them.
pub(crate) async fn write_frame(send: &mut SendStream, mut chunks: Vec<Bytes>, peer: &str) -> Result<()> {
    send.write_all_chunks(&mut chunks).await.map_err(|e| write_error(peer, &e))
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

/// Writes an error frame carrying `error`.
pub(crate) async fn write_error_frame(send: &mut SendStream, error: &Error, peer: &str) -> Result<()> {
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
    send.write_all(&frame).await.map_err(|e| write_error(peer, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(chunks: &[Bytes]) -> (u32, Vec<u8>) {
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        (u32::from_le_bytes([all[0], all[1], all[2], all[3]]), all[4..].to_vec())
    }

    fn part(buffer: Vec<u8>) -> AveragingData {
        AveragingData {
            code: 3,
            group_id: b"group".to_vec().into(),
            endpoint: "quic://127.0.0.1:1".into(),
            tensor_part: Some(Tensor {
                buffer: buffer.into(),
                size: vec![2, 3],
                requires_grad: true,
                dtype: "float32".into(),
                compression: 0,
                chunks: 0,
                codec: "none".into(),
            }),
            metadata: b"meta".to_vec().into(),
            weight: 0.5,
        }
    }

    #[test]
    fn a_tensor_buffer_travels_as_its_own_chunk_and_decodes_to_the_same_message() {
        for buffer in [vec![7u8; 24], Vec::new(), (0..=255).cycle().take(70_000).collect()] {
            let message = part(buffer.clone());
            let chunks = encode_frame(message.clone(), usize::MAX).unwrap();
            assert_eq!(chunks.len(), if buffer.is_empty() { 1 } else { 2 });
            if let Some(payload) = chunks.get(1) {
                assert_eq!(payload.as_ptr(), message.tensor_part.as_ref().unwrap().buffer.as_ptr(), "copied");
            }
            let (len, body) = frame_bytes(&chunks);
            assert_eq!(len as usize, body.len());
            assert_eq!(body.len(), prost::Message::encoded_len(&message));
            let decoded: AveragingData = decode(Bytes::from(body), "peer").unwrap();
            assert_eq!(decoded, message);
        }
        let no_tensor = AveragingData { tensor_part: None, ..part(Vec::new()) };
        let (_, body) = frame_bytes(&encode_frame(no_tensor.clone(), usize::MAX).unwrap());
        assert_eq!(decode::<AveragingData>(Bytes::from(body), "peer").unwrap(), no_tensor);
    }

    #[test]
    fn frames_over_the_limit_are_refused() {
        let message = part(vec![0u8; 1000]);
        let size = prost::Message::encoded_len(&message);
        assert!(encode_frame(message.clone(), size).is_ok());
        assert!(matches!(
            encode_frame(message, size - 1),
            Err(Error::MessageTooLarge { size: s, limit }) if s == size && limit == size - 1
        ));
    }
}
