//! The server's connections: an accept loop that hands tonic plain or TLS streams, each bound by
//! a deadline for the start of HTTP/2.
//!
//! hyper waits for a connection's HTTP/2 preface without a limit, so a peer that connects and
//! says nothing would hold a connection (and its task) for as long as it keeps the socket open.
//! Every connection therefore has `first_request_timeout` from its accept to finish the TLS
//! handshake (when TLS is on) and deliver the 24-byte HTTP/2 preface; after that it is an HTTP/2
//! connection like any other, whose calls the request guard bounds.
//!
//! Under mutual TLS the handshake has verified the client's certificate; the identity it proves
//! travels with the connection ([`PeerInfo`]) to every call served on it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, Sleep, sleep_until, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::identity;

/// The client's HTTP/2 connection preface (`PRI * HTTP/2.0...`) is this long.
const PREFACE_LEN: usize = 24;

/// TLS handshakes under way at once; connections beyond are closed at once, so a flood of silent
/// connections costs at most this many handshake states until their deadlines pass.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// Accepted connections waiting for tonic to take them.
const QUEUE: usize = 64;

/// How long the accept loop pauses after a failed accept (out of file descriptors, usually), so
/// that a lasting failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The connections `listener` accepts, until `stop`; TLS-wrapped with `tls` when given.
pub(crate) fn accept(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    wait: Duration,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(accept_loop(listener, tls.map(TlsAcceptor::from), wait, tx, stop));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    wait: Duration,
    tx: mpsc::Sender<io::Result<Conn>>,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("accepting a gRPC connection failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + wait;
        let info = PeerInfo { tcp: tcp.connect_info(), authenticated_peer: None };
        let Some(acceptor) = &tls else {
            if tx.send(Ok(Conn::new(Io::Plain(tcp), info, deadline, wait))).await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "{MAX_PENDING_HANDSHAKES} TLS handshakes under way: connection closed");
            continue;
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // Present only when the server asked for it, that is under mutual TLS, and
                    // then verified by the handshake that just succeeded.
                    let leaf = stream.get_ref().1.peer_certificates().and_then(<[_]>::first);
                    let info = PeerInfo { authenticated_peer: leaf.map(identity::of_certificate), ..info };
                    let _ = tx.send(Ok(Conn::new(Io::Tls(Box::new(stream)), info, deadline, wait))).await;
                }
                Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%remote, "no TLS handshake within {wait:?}"),
            }
        });
    }
}

/// The stream under a connection.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What the server knows of a connection's peer: tonic puts it into every request's
/// extensions.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    /// The TCP addresses.
    pub(crate) tcp: TcpConnectInfo,
    /// The identity its verified client certificate proves (see [`identity`]); `None` without
    /// mutual TLS.
    pub(crate) authenticated_peer: Option<String>,
}

/// A served connection: its stream, what is known of its peer, and the preface deadline.
pub(crate) struct Conn {
    io: Io,
    info: PeerInfo,
    preface: Option<Preface>,
}

/// Until the HTTP/2 preface has been read: when it must have been.
struct Preface {
    deadline: Pin<Box<Sleep>>,
    read: usize,
    wait: Duration,
}

impl Conn {
    fn new(io: Io, info: PeerInfo, deadline: Instant, wait: Duration) -> Conn {
        let preface = Preface { deadline: Box::pin(sleep_until(deadline)), read: 0, wait };
        Conn { io, info, preface: Some(preface) }
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        let Some(preface) = &mut this.preface else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                let got = buf.filled().len() - before;
                preface.read += got;
                if got == 0 || preface.read >= PREFACE_LEN {
                    this.preface = None;
                }
            }
            Poll::Pending if preface.deadline.as_mut().poll(cx).is_ready() => {
                let remote = this.info.tcp.remote_addr();
                let message = format!("no HTTP/2 preface from {remote:?} within {:?}", preface.wait);
                tracing::debug!("{message}");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)));
            }
            Poll::Pending | Poll::Ready(Err(_)) => {}
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
