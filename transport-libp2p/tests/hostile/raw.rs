//! A hostile caller's tools: a node of its own that opens raw substreams to the server on the
//! RPCs' protocols and writes whatever it likes; the conformance crate's hostile suite runs over
//! it.

use std::sync::Arc;
use std::time::Duration;

use averager_conformance::hostile::{CAP, Echo, HostileTarget, RawCaller, RawStream};
use averager_core::Result;
use averager_core::transport::frame::{FrameRead, IoStream};
use averager_core::transport::{Rpc, ServerHandle, Transport};
use averager_dht::{KadSettings, Keypair, Libp2pNode, Stream};
use averager_transport_libp2p::{
    AGGREGATE_PROTOCOL, DOWNLOAD_PROTOCOL, JOIN_PROTOCOL, Libp2pConfig, Libp2pTransport, StreamSettings,
};
use bytes::BytesMut;
use futures::AsyncWriteExt;

/// libp2p servers for the hostile suite.
pub(crate) struct Libp2p;

/// A served [`Echo`].
pub(crate) struct Served {
    handle: ServerHandle,
    transport: Libp2pTransport,
}

impl HostileTarget for Libp2p {
    type Served = Served;
    type Caller = Caller;

    async fn serve(&self, service: Arc<Echo>, first_request_timeout: Duration) -> Served {
        let streams =
            StreamSettings { first_request_timeout, max_message_bytes: CAP, ..StreamSettings::default() };
        let transport = Libp2pTransport::start(Libp2pConfig { streams, ..Libp2pConfig::default() })
            .await
            .expect("a node");
        let handle = transport.serve(service).await.expect("serve");
        Served { handle, transport }
    }

    /// The server's endpoint with its address, for callers that share no DHT with it.
    fn endpoint(&self, served: &Served) -> String {
        let node = served.transport.node();
        assert!(served.handle.endpoint().ends_with(&node.peer_id().to_string()));
        let addr = node.listen_addrs().into_iter().next().expect("an address");
        format!("libp2p://{addr}")
    }

    async fn caller(&self, served: &Served) -> Caller {
        let node =
            Libp2pNode::start(KadSettings::default(), Keypair::generate_ed25519()).await.expect("a node");
        Caller { node, server: served.transport.node().clone() }
    }

    async fn client(&self) -> Arc<dyn Transport> {
        Arc::new(Libp2pTransport::start(Libp2pConfig::default()).await.expect("a node"))
    }
}

/// A node for the hostile caller, joined to nothing: it dials the server's address directly.
pub(crate) struct Caller {
    node: Libp2pNode,
    server: Arc<Libp2pNode>,
}

impl RawCaller for Caller {
    type Stream = Call;

    async fn open(&self, rpc: Rpc) -> Call {
        let protocol = match rpc {
            Rpc::JoinGroup => JOIN_PROTOCOL,
            Rpc::AggregatePart => AGGREGATE_PROTOCOL,
            Rpc::DownloadState => DOWNLOAD_PROTOCOL,
        };
        let stream = self.node.open_stream(self.server.peer_id(), protocol, self.server.listen_addrs());
        Call(IoStream(stream.await.expect("a substream")))
    }
}

/// One raw substream.
pub(crate) struct Call(IoStream<Stream>);

impl FrameRead for Call {
    async fn read_into(&mut self, buf: &mut BytesMut, max: usize, peer: &str) -> Result<usize> {
        self.0.read_into(buf, max, peer).await
    }
}

impl RawStream for Call {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.0.write_all(bytes).await?;
        self.0.0.flush().await
    }

    async fn finish(&mut self) {
        let _ = self.0.0.close().await;
    }
}
