//! The wire format of the stream transports (QUIC, libp2p): one call on one bidirectional byte
//! stream, its messages in length-prefixed prost frames under a size cap, and what their servers
//! do alike (refusing what a caller must not send, answering with an error frame).
//!
//! - A **message frame** is a `u32` little-endian length, then that many bytes of a prost-encoded
//!   message. A length over the reader's cap is refused before anything is allocated, and a
//!   length within it is not trusted either: the buffer grows with the bytes that arrive (from
//!   64 KiB, at most doubling), so a peer that announces 16 MiB and sends 1 KiB costs about 64 KiB.
//!   A reader with a [`ReadBudget`] (TCP) reads a frame whose length fits the budget's unclaimed
//!   bytes into one buffer of that size instead, claimed until the frame has arrived: no
//!   reallocation copies, and announced-but-unsent bytes tie up at most the budget.
//! - An **error frame** (replies only) is the length value [`ERROR_MARKER`], a kind byte, a `u32`
//!   LE payload length (at most [`MAX_ERROR_PAYLOAD`]) and the payload: [`ERROR_REMOTE`] UTF-8
//!   text, [`ERROR_TOO_LARGE`] `size` and `limit` as `u64` LE, or [`ERROR_CODED`] a proto
//!   `MessageCode` as `i32` LE and then UTF-8 text.
//! - An **end frame** is the length value [`END_MARKER`] alone: the sender sends nothing more.
//!   A transport whose streams cannot tell a clean finish from a reset (yamux) sends it; the others
//!   finish the stream, which reads as [`Frame::Closed`].
//!
//! A stream is anything that implements [`FrameRead`] and [`FrameWrite`]: [`IoStream`] adapts
//! `futures` byte streams, and a transport with a chunked API of its own (QUIC) implements them
//! directly, so a tensor's buffer goes out and comes in without an extra copy.

mod aggregate;
mod budget;
mod encode;
mod io;
mod pump;
mod serve;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

pub use aggregate::serve_aggregate;
pub use budget::{Claim, ReadBudget};
pub use encode::{Outgoing, encode_frame, end_frame, error_frame};
pub use io::{FrameRead, FrameWrite, IoStream};
pub use pump::{Hold, Pump, pump_requests, reply_stream};
pub use serve::{
    FirstRequest, ReplySink, Request, read_request, read_unary, refuse, request_failure, respond,
};

use crate::error::{Error, Result};

/// A length prefix with this value starts an error frame instead of a message (replies only).
pub const ERROR_MARKER: u32 = u32::MAX;
/// A length prefix with this value is the end of the sender's messages.
pub const END_MARKER: u32 = u32::MAX - 1;
/// The largest message a frame can carry (the two marker values are not lengths).
pub const MAX_FRAME_BYTES: usize = (u32::MAX - 2) as usize;

/// Error frame kind: the remote handler (or transport) failed; the payload is UTF-8 text.
pub const ERROR_REMOTE: u8 = 1;
/// Error frame kind: a message over the cap; the payload is `size` and `limit` as u64 LE.
pub const ERROR_TOO_LARGE: u8 = 2;
/// Error frame kind: the remote handler failed with an error that has a proto `MessageCode`; the
/// payload is the code as i32 LE, then UTF-8 text. The caller gets an error with the same code.
pub const ERROR_CODED: u8 = 3;
/// The largest error payload read or written.
pub const MAX_ERROR_PAYLOAD: usize = 4096;

/// What a message buffer starts with: a length prefix is only a claim, so the buffer grows with
/// the bytes that actually arrive.
const INITIAL_MESSAGE_CAPACITY: usize = 64 * 1024;

/// One frame read from a stream.
#[derive(Debug)]
pub enum Frame {
    /// An encoded prost message, in one buffer that its decoded `bytes` fields share.
    Message(Bytes),
    /// An error frame sent by the peer.
    Failure(Error),
    /// The peer's end frame: it sends nothing more.
    End,
    /// The stream ended at a frame boundary without an end frame: the peer finished, closed or
    /// reset it, or the connection is gone (which of these, only the transport can tell).
    Closed,
}

/// Reads the next frame from `recv`, refusing a message over `limit` before reading it. Error
/// frames are recognised only when `allow_error` (the reply direction); elsewhere their marker
/// reads as a length over any cap.
///
/// # Errors
/// [`Error::MessageTooLarge`] for a length over `limit`; the transport's error when the stream
/// fails; [`Error::Transport`] when it ends inside a frame or sends a malformed error frame.
pub async fn read_frame<R: FrameRead>(
    recv: &mut R,
    limit: usize,
    allow_error: bool,
    peer: &str,
) -> Result<Frame> {
    let Some(header) = read_exact(recv, 4, "frame header", peer).await? else {
        return Ok(Frame::Closed);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if len == END_MARKER {
        return Ok(Frame::End);
    }
    if len == ERROR_MARKER && allow_error {
        return read_error_frame(recv, peer).await.map(Frame::Failure);
    }
    let size = usize::try_from(len).unwrap_or(usize::MAX);
    if size > limit {
        return Err(Error::MessageTooLarge { size, limit });
    }
    match read_exact(recv, size, "frame", peer).await? {
        Some(body) => Ok(Frame::Message(body)),
        None => Ok(Frame::Message(Bytes::new())),
    }
}

/// Decodes a message frame; its `bytes` fields share the frame's buffer.
///
/// # Errors
/// [`Error::Transport`] naming `peer` when the bytes are no such message.
pub fn decode<T: prost::Message + Default>(bytes: Bytes, peer: &str) -> Result<T> {
    T::decode(bytes).map_err(|e| Error::Transport(format!("{peer} sent an undecodable message: {e}")))
}

/// Reads exactly `n` bytes, never holding more capacity than twice what arrived (or
/// [`INITIAL_MESSAGE_CAPACITY`]) unless the reader's budget lets it claim all `n` at once; `None`
/// when the stream ends before the first of them (or `n` is 0), an error when it ends after.
async fn read_exact<R: FrameRead>(recv: &mut R, n: usize, what: &str, peer: &str) -> Result<Option<Bytes>> {
    if n == 0 {
        return Ok(None);
    }
    // Held until the frame has arrived (or failed): only bytes not yet here count against the
    // budget, since what arrived is the same memory however the buffer was grown.
    let claim = if n > INITIAL_MESSAGE_CAPACITY { recv.claim(n) } else { None };
    let mut buf = match claim {
        Some(_) => crate::buffer_pool::take(n),
        None => BytesMut::with_capacity(n.min(INITIAL_MESSAGE_CAPACITY)),
    };
    while buf.len() < n {
        if buf.len() == buf.capacity() {
            let target = (buf.capacity() * 2).min(n);
            buf.reserve(target - buf.len());
        }
        let room = (buf.capacity() - buf.len()).min(n - buf.len());
        if recv.read_into(&mut buf, room, peer).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(Error::Transport(format!(
                "{peer} ended its stream inside a {what} ({} of {n} bytes)",
                buf.len()
            )));
        }
    }
    // Its memory is reused for a later frame once the message read from it is dropped.
    Ok(Some(crate::buffer_pool::share(buf)))
}

async fn read_error_frame<R: FrameRead>(recv: &mut R, peer: &str) -> Result<Error> {
    let ended = || Error::Transport(format!("{peer} ended its stream inside an error frame"));
    let head = read_exact(recv, 5, "error frame", peer).await?.ok_or_else(ended)?;
    let kind = head[0];
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_ERROR_PAYLOAD {
        return Err(Error::Transport(format!("{peer} sent an error frame of {len} bytes")));
    }
    let payload = match read_exact(recv, len, "error frame", peer).await? {
        Some(payload) => payload,
        None if len == 0 => Bytes::new(),
        None => return Err(ended()),
    };
    match kind {
        ERROR_TOO_LARGE if payload.len() == 16 => {
            let word = |at: usize| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&payload[at..at + 8]);
                usize::try_from(u64::from_le_bytes(bytes)).unwrap_or(usize::MAX)
            };
            Ok(Error::MessageTooLarge { size: word(0), limit: word(8) })
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
