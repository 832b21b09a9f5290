//! One call on one bidirectional QUIC stream (see the crate docs, "Framing"): the core's frame
//! format (`averager_core::transport::frame`) over quinn's streams, which hand out and take
//! `Bytes` chunks, so a tensor's buffer is neither copied into the encoding nor out of a scratch
//! buffer; plus the method byte that opens a call and quinn's errors as the core's.

use averager_core::transport::frame::{FrameRead, FrameWrite, ReplySink, error_frame};
use averager_core::{Error, Result};
use prost::bytes::{Bytes, BytesMut};
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, VarInt, WriteError};

/// The method byte of `rpc_join_group`.
pub(crate) const METHOD_JOIN: u8 = 1;
/// The method byte of `rpc_aggregate_part`.
pub(crate) const METHOD_AGGREGATE: u8 = 2;
/// The method byte of `rpc_download_state`.
pub(crate) const METHOD_DOWNLOAD: u8 = 3;

/// Stream error code: the call was cancelled (the response stream or the request stream dropped).
pub(crate) const CODE_CANCELLED: VarInt = VarInt::from_u32(1);
/// Stream error code: the request stream carried a message over the caller's cap.
pub(crate) const CODE_TOO_LARGE: VarInt = VarInt::from_u32(2);

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

/// Reads one method byte; `None` when the stream ended or failed before it.
pub(crate) async fn read_method(recv: &mut RecvStream) -> Option<u8> {
    let mut method = [0u8; 1];
    recv.read_exact(&mut method).await.ok().map(|()| method[0])
}

/// The receiving side of a call's stream, as the core's frames read it.
pub(crate) struct Recv(pub(crate) RecvStream);

impl FrameRead for Recv {
    /// QUIC hands out one chunk per packet: the chunk is copied once into the frame's buffer,
    /// which decoding then slices tensor buffers out of.
    async fn read_into(&mut self, buf: &mut BytesMut, max: usize, peer: &str) -> Result<usize> {
        match self.0.read_chunk(max, true).await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk.bytes);
                Ok(chunk.bytes.len())
            }
            Ok(None) => Ok(0),
            Err(e) => Err(read_error(peer, &e)),
        }
    }
}

/// The sending side of a call's stream.
pub(crate) struct Send(pub(crate) SendStream);

impl FrameWrite for Send {
    /// QUIC takes the chunks without copying them.
    async fn write_chunks(&mut self, mut chunks: Vec<Bytes>, peer: &str) -> Result<()> {
        self.0.write_all_chunks(&mut chunks).await.map_err(|e| write_error(peer, &e))
    }
}

impl ReplySink for Send {
    /// A write to a stream the caller stopped fails with `WriteError::Stopped`.
    const WRITES_FAIL_WHEN_GONE: bool = true;

    /// Finishing the stream is the clean end of the replies.
    async fn end(mut self, error: Option<&Error>, peer: &str) {
        if let Some(error) = error {
            let _ = self.write_chunks(vec![error_frame(error)], peer).await;
        }
        let _ = self.0.finish();
    }

    fn abandon(mut self) {
        let _ = self.0.reset(CODE_CANCELLED);
    }
}
