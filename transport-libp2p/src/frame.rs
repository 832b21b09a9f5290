//! The wire format of one call on one libp2p substream (see the crate docs, "Framing"): the
//! QUIC transport's length-prefixed prost frames and error frames, plus an end frame, since a
//! yamux reset reads as a clean end of stream and cannot tell a finished call from a lost one.

use averager_core::{Error, Result};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A length prefix with this value starts an error frame instead of a message (responses only).
const ERROR_MARKER: u32 = u32::MAX;
/// A length prefix with this value is the end of the sender's messages.
const END_MARKER: u32 = u32::MAX - 1;
/// Error frame kind: the remote handler (or the remote transport) failed; the payload is UTF-8 text.
const ERROR_REMOTE: u8 = 1;
/// Error frame kind: a message over the cap; the payload is `size` and `limit` as u64 LE.
const ERROR_TOO_LARGE: u8 = 2;
/// The largest error payload read or written.
const MAX_ERROR_PAYLOAD: usize = 4096;

/// What a message buffer starts with: a length prefix is only a claim, so the buffer grows with
/// the bytes that actually arrive (a 4-byte header must not cost the cap in memory).
const INITIAL_MESSAGE_CAPACITY: usize = 64 * 1024;

/// The largest `max_message_bytes` the framing can carry (two length values are reserved).
pub(crate) const MAX_FRAME_BYTES: usize = (u32::MAX - 2) as usize;

/// One frame read from a substream.
#[derive(Debug)]
pub(crate) enum Frame {
    /// An encoded prost message.
    Message(Vec<u8>),
    /// An error frame sent by the peer.
    Failure(Error),
    /// The peer's end frame: it sends nothing more.
    End,
    /// The substream ended at a frame boundary without an end frame: the peer closed or reset
    /// it, or the connection is gone.
    Closed,
}

fn io_error(peer: &str, e: &std::io::Error) -> Error {
    Error::Transport(format!("the substream with {peer} failed: {e}"))
}

/// Reads exactly `buf.len()` bytes; the end of the substream inside them is an error.
async fn read_exact<R: AsyncRead + Unpin>(recv: &mut R, buf: &mut [u8], peer: &str) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match recv.read(&mut buf[filled..]).await {
            Ok(0) => {
                return Err(Error::Transport(format!(
                    "{peer} ended its substream inside a frame ({filled} of {} bytes)",
                    buf.len()
                )));
            }
            Ok(n) => filled += n,
            Err(e) => return Err(io_error(peer, &e)),
        }
    }
    Ok(())
}

/// Reads the next frame. A length over `limit` is refused before anything is allocated, and a
/// length within it is not trusted either: the buffer grows with the bytes that arrive. Error
/// frames are recognised only when `allow_error` (the response direction).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    recv: &mut R,
    limit: usize,
    allow_error: bool,
    peer: &str,
) -> Result<Frame> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match recv.read(&mut header[filled..]).await {
            Ok(0) if filled == 0 => return Ok(Frame::Closed),
            Ok(0) => {
                return Err(Error::Transport(format!(
                    "{peer} ended its substream inside a frame header ({filled} of 4 bytes)"
                )));
            }
            Ok(n) => filled += n,
            Err(e) => return Err(io_error(peer, &e)),
        }
    }
    let len = u32::from_le_bytes(header);
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
    read_message(recv, size, peer).await.map(Frame::Message)
}

/// Reads a message body of `size` bytes, never holding more capacity than twice what arrived (or
/// [`INITIAL_MESSAGE_CAPACITY`]).
async fn read_message<R: AsyncRead + Unpin>(recv: &mut R, size: usize, peer: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size.min(INITIAL_MESSAGE_CAPACITY));
    let mut chunk = vec![0u8; size.min(INITIAL_MESSAGE_CAPACITY)];
    while buf.len() < size {
        let want = (size - buf.len()).min(chunk.len());
        let n = match recv.read(&mut chunk[..want]).await {
            Ok(0) => {
                return Err(Error::Transport(format!(
                    "{peer} ended its substream inside a frame ({} of {size} bytes)",
                    buf.len()
                )));
            }
            Ok(n) => n,
            Err(e) => return Err(io_error(peer, &e)),
        };
        if buf.capacity() - buf.len() < n {
            let target = (buf.capacity() * 2).max(buf.len() + n).min(size);
            buf.reserve_exact(target - buf.len());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

async fn read_error_frame<R: AsyncRead + Unpin>(recv: &mut R, peer: &str) -> Result<Error> {
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
        other => Err(Error::Transport(format!("{peer} sent an error frame of unknown kind {other}"))),
    }
}

/// Encodes `message`, refusing it when its encoded size is over `limit`.
pub(crate) fn encode<T: prost::Message>(message: &T, limit: usize) -> Result<Vec<u8>> {
    let size = message.encoded_len();
    if size > limit {
        return Err(Error::MessageTooLarge { size, limit });
    }
    Ok(message.encode_to_vec())
}

/// Decodes a message frame.
pub(crate) fn decode<T: prost::Message + Default>(bytes: &[u8], peer: &str) -> Result<T> {
    T::decode(bytes).map_err(|e| Error::Transport(format!("{peer} sent an undecodable message: {e}")))
}

/// Writes one message frame (`u32` LE length, then the bytes) and flushes it.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(send: &mut W, bytes: &[u8], peer: &str) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|len| *len < END_MARKER)
        .ok_or(Error::MessageTooLarge { size: bytes.len(), limit: MAX_FRAME_BYTES })?;
    let written = async {
        send.write_all(&len.to_le_bytes()).await?;
        send.write_all(bytes).await?;
        send.flush().await
    };
    written.await.map_err(|e| io_error(peer, &e))
}

/// Writes the end frame and flushes it.
pub(crate) async fn write_end<W: AsyncWrite + Unpin>(send: &mut W, peer: &str) -> Result<()> {
    let written = async {
        send.write_all(&END_MARKER.to_le_bytes()).await?;
        send.flush().await
    };
    written.await.map_err(|e| io_error(peer, &e))
}

/// Writes an error frame carrying `error` and flushes it.
pub(crate) async fn write_error_frame<W: AsyncWrite + Unpin>(
    send: &mut W,
    error: &Error,
    peer: &str,
) -> Result<()> {
    let (kind, payload) = match error {
        Error::MessageTooLarge { size, limit } => {
            let mut payload = Vec::with_capacity(16);
            payload.extend_from_slice(&(*size as u64).to_le_bytes());
            payload.extend_from_slice(&(*limit as u64).to_le_bytes());
            (ERROR_TOO_LARGE, payload)
        }
        other => {
            let mut text = other.to_string();
            if text.len() > MAX_ERROR_PAYLOAD {
                let mut end = MAX_ERROR_PAYLOAD;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            (ERROR_REMOTE, text.into_bytes())
        }
    };
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&ERROR_MARKER.to_le_bytes());
    frame.push(kind);
    // The payload is at most MAX_ERROR_PAYLOAD bytes, so its length fits a u32.
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&payload);
    let written = async {
        send.write_all(&frame).await?;
        send.flush().await
    };
    written.await.map_err(|e| io_error(peer, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn frames_round_trip_and_the_end_is_told_from_a_close() {
        let mut wire = Cursor::new(Vec::new());
        write_frame(&mut wire, b"hello", "p").await.expect("written");
        write_error_frame(&mut wire, &Error::MessageTooLarge { size: 9, limit: 3 }, "p")
            .await
            .expect("written");
        write_end(&mut wire, "p").await.expect("written");
        let mut read = Cursor::new(wire.into_inner());
        assert!(matches!(read_frame(&mut read, 10, true, "p").await, Ok(Frame::Message(m)) if m == b"hello"));
        assert!(matches!(
            read_frame(&mut read, 10, true, "p").await,
            Ok(Frame::Failure(Error::MessageTooLarge { size: 9, limit: 3 }))
        ));
        assert!(matches!(read_frame(&mut read, 10, true, "p").await, Ok(Frame::End)));
        assert!(matches!(read_frame(&mut read, 10, true, "p").await, Ok(Frame::Closed)));
    }

    #[tokio::test]
    async fn an_announced_length_over_the_cap_is_refused_without_reading_on() {
        let mut read = Cursor::new(1_000_000u32.to_le_bytes().to_vec());
        let got = read_frame(&mut read, 1000, false, "p").await;
        assert!(matches!(got, Err(Error::MessageTooLarge { size: 1_000_000, limit: 1000 })), "{got:?}");
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error_and_requests_carry_no_error_frames() {
        let mut bytes = 10u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(read_frame(&mut Cursor::new(bytes), 100, false, "p").await.is_err());
        let marker = u32::MAX.to_le_bytes().to_vec();
        let got = read_frame(&mut Cursor::new(marker), 100, false, "p").await;
        assert!(matches!(got, Err(Error::MessageTooLarge { .. })), "{got:?}");
    }
}
