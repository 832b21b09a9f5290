//! The two sides of a stream that frames travel on, and an adapter for `futures` byte streams.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Claim, ReplySink, end_frame, error_frame};
use crate::error::{Error, Result};

/// The reading side of a stream that frames arrive on.
pub trait FrameRead: Send {
    /// Appends at most `max` (at least 1) of the stream's next bytes to `buf`, which has room for
    /// them, and returns how many; 0 only at the end of the stream. A failure is the core's error
    /// for it, naming `peer`.
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
        max: usize,
        peer: &str,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Room for a whole frame of `len` bytes, claimed before its bytes arrive (from a
    /// [`ReadBudget`](super::ReadBudget) the stream shares with the transport's other readers),
    /// so the frame is read into one buffer of exactly its size. `None` (the default, and when
    /// the budget is spent): the buffer grows with the bytes that arrive.
    fn claim(&self, len: usize) -> Option<Claim> {
        let _ = len;
        None
    }
}

/// The writing side of a stream that frames go out on.
pub trait FrameWrite: Send {
    /// Writes `chunks` in order (taking them without a copy where the stream can) and flushes.
    /// A failure is the core's error for it, naming `peer`.
    fn write_chunks(&mut self, chunks: Vec<Bytes>, peer: &str) -> impl Future<Output = Result<()>> + Send;
}

/// A `futures` byte stream (or one half of it) as a frame stream.
#[derive(Debug)]
pub struct IoStream<S>(pub S);

/// The most an [`IoStream`] reads at a time: its bytes are zeroed before the read, so a larger
/// piece would cost more zeroing than the read returns.
const READ_PIECE: usize = 64 * 1024;

fn io_error(peer: &str, e: &std::io::Error) -> Error {
    Error::Transport(format!("the stream with {peer} failed: {e}"))
}

impl<R: AsyncRead + Unpin + Send> FrameRead for IoStream<R> {
    async fn read_into(&mut self, buf: &mut BytesMut, max: usize, peer: &str) -> Result<usize> {
        let start = buf.len();
        buf.resize(start + max.clamp(1, READ_PIECE), 0);
        let read = self.0.read(&mut buf[start..]).await;
        let n = *read.as_ref().unwrap_or(&0);
        buf.truncate(start + n);
        read.map_err(|e| io_error(peer, &e))
    }
}

impl<W: AsyncWrite + Unpin + Send> FrameWrite for IoStream<W> {
    async fn write_chunks(&mut self, chunks: Vec<Bytes>, peer: &str) -> Result<()> {
        let written = async {
            for chunk in &chunks {
                self.0.write_all(chunk).await?;
            }
            self.0.flush().await
        };
        written.await.map_err(|e| io_error(peer, &e))
    }
}

impl<W: AsyncWrite + Unpin + Send> ReplySink for IoStream<W> {
    /// A byte stream may not tell a clean close from a reset (yamux), so a clean end of the
    /// replies is said with an end frame before the close.
    async fn end(mut self, error: Option<&Error>, peer: &str) {
        let last = match error {
            Some(error) => error_frame(error),
            None => end_frame(),
        };
        let _ = self.write_chunks(vec![last], peer).await;
        let _ = self.0.close().await;
    }

    fn abandon(self) {}
}
