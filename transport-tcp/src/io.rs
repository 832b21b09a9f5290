//! The two halves of a call's TCP connection as the core's frame streams
//! (`averager_core::transport::frame`), the method byte that opens a call, and socket errors as
//! the core's.
//!
//! Reads go straight into the spare capacity of the frame's buffer (no zeroing, no scratch
//! buffer), which is allocated at the frame's announced size while the transport's
//! [`ReadBudget`] lasts (so it never grows by reallocation and copying), and writes hand the encoder's chunks (a head and the tensor's own buffer) to one
//! vectored write, so a part's bytes are copied only by the kernel.
//!
//! A connection whose two ends are on this host gets a smaller send buffer than autotuning would
//! give it ([`tune_same_host`]), which saves CPU on loopback.

use std::io::{ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use averager_core::transport::frame::{
    Claim, FrameRead, FrameWrite, ReadBudget, ReplySink, end_frame, error_frame,
};
use averager_core::{Error, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The method byte of `rpc_join_group`.
pub(crate) const METHOD_JOIN: u8 = 1;
/// The method byte of `rpc_aggregate_part`.
pub(crate) const METHOD_AGGREGATE: u8 = 2;
/// The method byte of `rpc_download_state`.
pub(crate) const METHOD_DOWNLOAD: u8 = 3;

/// How many chunks one vectored write takes: a frame is at most a head and a payload, so this
/// covers a method byte and a frame with room to spare.
const MAX_SLICES: usize = 8;

/// The core's error for a socket failure talking to `peer`: a connection the peer (or its host)
/// broke is `Unreachable`, like a lost QUIC connection; anything else is a transport failure.
pub(crate) fn io_error(peer: &str, e: &std::io::Error) -> Error {
    match e.kind() {
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof
        | ErrorKind::NotConnected => {
            Error::Unreachable { endpoint: peer.to_string(), reason: format!("connection lost: {e}") }
        }
        _ => Error::Transport(format!("the connection with {peer} failed: {e}")),
    }
}

/// The most one transport's readers claim at once for frames they read at their announced size:
/// far more than the frames in flight of an averaging round (parts are 512 KiB), and small enough
/// that peers announcing frames they never send cannot tie up more than this.
pub(crate) const READ_BUDGET: usize = 32 << 20;

/// The reading half of a call's connection.
pub(crate) struct Recv(pub(crate) OwnedReadHalf, pub(crate) ReadBudget);

impl FrameRead for Recv {
    async fn read_into(&mut self, buf: &mut BytesMut, max: usize, peer: &str) -> Result<usize> {
        // `limit` keeps the read inside what the frame reader made room for; `read_buf` fills
        // the uninitialised spare capacity, so nothing is zeroed first.
        let mut room = (&mut *buf).limit(max);
        self.0.read_buf(&mut room).await.map_err(|e| io_error(peer, &e))
    }

    fn claim(&self, len: usize) -> Option<Claim> {
        self.1.claim(len)
    }
}

/// The writing half of a call's connection.
pub(crate) struct Send(pub(crate) OwnedWriteHalf);

impl Send {
    /// Writes every chunk with as few vectored writes as the socket allows.
    async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> std::io::Result<()> {
        let mut first = 0;
        while first < chunks.len() {
            if chunks[first].is_empty() {
                first += 1;
                continue;
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let pending = &chunks[first..chunks.len().min(first + MAX_SLICES)];
            for (slice, chunk) in slices.iter_mut().zip(pending) {
                *slice = IoSlice::new(chunk);
            }
            let mut written = self.0.write_vectored(&slices[..pending.len()]).await?;
            if written == 0 {
                return Err(ErrorKind::WriteZero.into());
            }
            while written > 0 {
                let chunk = &mut chunks[first];
                let step = written.min(chunk.len());
                chunk.advance(step);
                written -= step;
                if chunk.is_empty() {
                    first += 1;
                }
            }
        }
        Ok(())
    }
}

impl FrameWrite for Send {
    /// A TCP socket has no buffer of ours to flush: a write is with the kernel when it returns.
    async fn write_chunks(&mut self, mut chunks: Vec<Bytes>, peer: &str) -> Result<()> {
        self.write_all_chunks(&mut chunks).await.map_err(|e| io_error(peer, &e))
    }
}

impl ReplySink for Send {
    /// A closing TCP peer looks the same whether it finished or went away (a crashed process's
    /// kernel closes its sockets cleanly), so the replies end with an end frame, as on libp2p.
    async fn end(mut self, error: Option<&Error>, peer: &str) {
        let last = match error {
            Some(error) => error_frame(error),
            None => end_frame(),
        };
        let _ = self.write_chunks(vec![last], peer).await;
        let _ = self.0.shutdown().await;
    }

    fn abandon(self) {}
}

/// Reads one method byte; `None` when the connection ended or failed before it.
pub(crate) async fn read_method(recv: &mut Recv) -> Option<u8> {
    recv.0.read_u8().await.ok()
}

/// The send buffer of a connection whose two ends are on this host (see [`tune_same_host`]).
pub(crate) const SAME_HOST_SEND_BUFFER: usize = 256 << 10;

/// Whether a connection from `local` to `peer` stays on this host: the peer is a loopback
/// address, or the address this side uses itself (the kernel routes that through loopback too).
pub(crate) fn same_host(local: SocketAddr, peer: SocketAddr) -> bool {
    peer.ip().is_loopback() || peer.ip() == local.ip()
}

/// The peer of `stream` and whether it is on this host ([`same_host`]); `None` when the socket
/// no longer knows its addresses.
fn peer_of(stream: &TcpStream) -> Option<(SocketAddr, bool)> {
    let (local, peer) = (stream.local_addr().ok()?, stream.peer_addr().ok()?);
    Some((peer, same_host(local, peer)))
}

/// Caps the send buffer of a connection that stays on this host at [`SAME_HOST_SEND_BUFFER`]
/// (the kernel doubles it for its bookkeeping); other connections keep the kernel's autotuning.
///
/// On loopback a round is CPU-bound, and the bytes a sender writes are copied once into the
/// kernel and once out by the receiver. Autotuning grows the send buffer to megabytes, so a
/// part's bytes wait there long enough to leave the caches before the receiver copies them out; a
/// buffer of a few hundred KiB keeps them cached in between. Two peers averaging 64 MB each used
/// about 15% less CPU per round with it, four peers about 17% less (and rounds were faster). A
/// link to another host needs its bandwidth-delay product in flight, which autotuning sizes, so
/// such connections are left alone. Failing to set it only loses the saving.
pub(crate) fn tune_same_host(stream: &TcpStream) {
    let Some((peer, true)) = peer_of(stream) else { return };
    if let Err(e) = socket2::SockRef::from(stream).set_send_buffer_size(SAME_HOST_SEND_BUFFER) {
        tracing::debug!("cannot set the send buffer of a connection to {peer}: {e}");
    }
}

/// The transport's cap on each `rpc_aggregate_part` connection's sending rate
/// ([`Transport::set_stream_rate_limit`](averager_core::transport::Transport::set_stream_rate_limit)),
/// shared by its client and server sides; 0 when there is none.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamRateLimit(Arc<AtomicU64>);

impl StreamRateLimit {
    pub(crate) fn set(&self, bytes_per_second: Option<u64>) {
        self.0.store(bytes_per_second.unwrap_or(0), Ordering::Relaxed);
    }

    /// Caps the kernel's pacing of `stream` at the current limit, when there is one and the
    /// connection leaves this host (on loopback nothing is shared that pacing would protect).
    /// Failing to set it only loses the cap.
    pub(crate) fn apply(&self, stream: &TcpStream) {
        let rate = self.0.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let Some((peer, false)) = peer_of(stream) else { return };
        if let Err(e) = set_max_pacing_rate(stream, rate) {
            tracing::debug!("cannot cap the pacing rate of a connection to {peer}: {e}");
        }
    }
}

/// `SO_MAX_PACING_RATE`: the kernel sends this socket's data at most this many bytes per second
/// (TCP paces itself; no qdisc needed). Linux only; elsewhere an `Unsupported` error.
#[cfg(target_os = "linux")]
fn set_max_pacing_rate(stream: &TcpStream, bytes_per_second: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: u64 = bytes_per_second;
    // SAFETY: `value` outlives the call, and the length passed is its size; the descriptor is
    // the open socket `stream` borrows.
    #[allow(unsafe_code)]
    let done = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&raw const value).cast::<libc::c_void>(),
            std::mem::size_of::<u64>() as libc::socklen_t,
        )
    };
    if done == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn set_max_pacing_rate(_: &TcpStream, _: u64) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "SO_MAX_PACING_RATE is Linux's"))
}

/// The pacing cap of `stream` (`u64::MAX`: none), for tests.
#[cfg(all(test, target_os = "linux"))]
fn max_pacing_rate(stream: &TcpStream) -> u64 {
    use std::os::fd::AsRawFd;
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `value` and `len` outlive the call and describe an 8-byte buffer.
    #[allow(unsafe_code)]
    let done = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&raw mut value).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_on_this_host_are_told_from_others() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(same_host(at("127.0.0.1:5000"), at("127.0.0.1:6000")));
        assert!(same_host(at("[::1]:5000"), at("[::1]:6000")));
        assert!(same_host(at("10.0.0.2:5000"), at("10.0.0.2:6000")));
        assert!(!same_host(at("10.0.0.2:5000"), at("10.0.0.3:6000")));
        assert!(!same_host(at("[fd00::1]:5000"), at("[fd00::2]:6000")));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_stream_rate_limit_caps_pacing_off_this_host_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialed = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let untouched = max_pacing_rate(&dialed);
        let limit = StreamRateLimit::default();
        limit.set(Some(3_000_000));
        // Both ends are on this host: left alone.
        limit.apply(&dialed);
        assert_eq!(max_pacing_rate(&dialed), untouched);
        // What `apply` sets on a connection to another host.
        set_max_pacing_rate(&accepted, 3_000_000).unwrap();
        assert_eq!(max_pacing_rate(&accepted), 3_000_000);
        limit.set(None);
        assert_eq!(limit.0.load(Ordering::Relaxed), 0);
    }

    /// The kernel reports the doubled value it keeps; autotuning starts far below it
    /// (`tcp_wmem`'s default is 16 KiB), so a buffer at least this large was set here.
    #[tokio::test]
    async fn a_loopback_connection_gets_the_smaller_send_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialed = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        for stream in [&dialed, &accepted] {
            tune_same_host(stream);
            let size = socket2::SockRef::from(stream).send_buffer_size().unwrap();
            assert!(size >= SAME_HOST_SEND_BUFFER, "send buffer {size}");
            assert!(size <= 2 * SAME_HOST_SEND_BUFFER, "send buffer {size}");
        }
    }
}
