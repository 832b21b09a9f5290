//! A raw TCP caller that writes the wire format by hand (README, "Connections and calls"), so a
//! test can send what an honest `TcpTransport` never would: the conformance crate's hostile suite
//! runs over it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use averager_conformance::hostile::{CAP, Echo, HostileTarget, RawCaller, RawStream};
use averager_core::transport::frame::FrameRead;
use averager_core::transport::{Rpc, ServerHandle, Transport};
use averager_core::{Error, Result};
use averager_transport_tcp::{TcpSettings, TcpTransport};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The method byte of an RPC.
pub(crate) fn method(rpc: Rpc) -> u8 {
    match rpc {
        Rpc::JoinGroup => 1,
        Rpc::AggregatePart => 2,
        Rpc::DownloadState => 3,
    }
}

/// TCP servers for the hostile suite.
pub(crate) struct Tcp;

/// A served [`Echo`].
pub(crate) struct Served {
    pub(crate) handle: ServerHandle,
    _transport: TcpTransport,
}

impl HostileTarget for Tcp {
    type Served = Served;
    type Caller = Caller;

    async fn serve(&self, service: Arc<Echo>, first_request_timeout: Duration) -> Served {
        let settings =
            TcpSettings { first_request_timeout, max_message_bytes: CAP, ..TcpSettings::default() };
        let transport = TcpTransport::with_settings(settings).expect("valid settings");
        let handle = transport.serve(service).await.expect("serve");
        Served { handle, _transport: transport }
    }

    fn endpoint(&self, served: &Served) -> String {
        served.handle.endpoint().to_string()
    }

    async fn caller(&self, served: &Served) -> Caller {
        let address = served.handle.endpoint().trim_start_matches("tcp://").parse().expect("an address");
        Caller { address }
    }

    async fn client(&self) -> Arc<dyn Transport> {
        Arc::new(TcpTransport::default())
    }
}

/// A caller of one server: each call is a connection of its own.
pub(crate) struct Caller {
    address: SocketAddr,
}

impl RawCaller for Caller {
    type Stream = Call;

    async fn open(&self, rpc: Rpc) -> Call {
        let mut call = self.connection().await;
        call.stream.write_all(&[method(rpc)]).await.expect("the method byte");
        call
    }
}

impl Caller {
    /// A new connection, with nothing written on it.
    pub(crate) async fn connection(&self) -> Call {
        let stream = TcpStream::connect(self.address).await.expect("a connection");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Call { stream }
    }
}

/// One raw call's connection.
pub(crate) struct Call {
    stream: TcpStream,
}

impl FrameRead for Call {
    async fn read_into(&mut self, buf: &mut BytesMut, max: usize, peer: &str) -> Result<usize> {
        let mut piece = vec![0u8; max.min(64 * 1024)];
        let n = self
            .stream
            .read(&mut piece)
            .await
            .map_err(|e| Error::Transport(format!("reading from {peer}: {e}")))?;
        buf.extend_from_slice(&piece[..n]);
        Ok(n)
    }
}

impl RawStream for Call {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    async fn finish(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
