//! A hostile caller's tools: a node of its own that opens raw substreams to the server on the
//! RPCs' protocols and writes whatever it likes, and a reader for how the server ended the call.

use std::sync::Arc;

use averager_dht::{KadSettings, Keypair, Libp2pNode, PeerId, Stream, StreamProtocol};
use futures::{AsyncReadExt, AsyncWriteExt};

/// A node for the hostile caller, joined to nothing: it dials the server's address directly.
pub(crate) async fn caller() -> Arc<Libp2pNode> {
    Arc::new(Libp2pNode::start(KadSettings::default(), Keypair::generate_ed25519()).await.expect("a node"))
}

/// Opens a substream to `server` on `protocol` and writes `bytes`; the caller's side stays open.
pub(crate) async fn call(
    caller: &Libp2pNode,
    server: &Libp2pNode,
    protocol: StreamProtocol,
    bytes: &[u8],
) -> Stream {
    let mut stream = open(caller, server, protocol).await;
    if !bytes.is_empty() {
        stream.write_all(bytes).await.expect("the hostile bytes are written");
        stream.flush().await.expect("flushed");
    }
    stream
}

/// Opens a substream to `server` on `protocol`.
pub(crate) async fn open(caller: &Libp2pNode, server: &Libp2pNode, protocol: StreamProtocol) -> Stream {
    let peer: PeerId = server.peer_id();
    caller.open_stream(peer, protocol, server.listen_addrs()).await.expect("a substream")
}

/// A frame header announcing `len` bytes, then `body`.
pub(crate) fn framed(len: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// How the server ended a call.
#[derive(Debug)]
pub(crate) enum End {
    /// An error frame of this kind and payload.
    Error(u8, Vec<u8>),
    /// The end frame.
    Clean,
    /// The substream ended (or failed) without either.
    Broken,
}

impl End {
    /// The `size` and `limit` of a "too large" error frame.
    pub(crate) fn too_large(&self) -> (u64, u64) {
        match self {
            End::Error(2, payload) if payload.len() == 16 => {
                let size = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                let limit = u64::from_le_bytes(payload[8..].try_into().expect("8 bytes"));
                (size, limit)
            }
            other => panic!("expected a too-large error frame, got {other:?}"),
        }
    }

    /// The text of a remote-failure error frame.
    pub(crate) fn remote_text(&self) -> String {
        match self {
            End::Error(1, payload) => String::from_utf8_lossy(payload).into_owned(),
            other => panic!("expected a remote-failure error frame, got {other:?}"),
        }
    }
}

async fn read_exact(stream: &mut Stream, buf: &mut [u8]) -> std::io::Result<()> {
    stream.read_exact(buf).await
}

/// Reads reply frames until the server ends the call.
pub(crate) async fn read_end(stream: &mut Stream) -> End {
    loop {
        let mut header = [0u8; 4];
        if read_exact(stream, &mut header).await.is_err() {
            return End::Broken;
        }
        match u32::from_le_bytes(header) {
            u32::MAX => {
                let mut head = [0u8; 5];
                if read_exact(stream, &mut head).await.is_err() {
                    return End::Broken;
                }
                let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
                assert!(len <= 4096, "an error frame of {len} bytes");
                let mut payload = vec![0u8; len];
                if read_exact(stream, &mut payload).await.is_err() {
                    return End::Broken;
                }
                return End::Error(head[0], payload);
            }
            0xFFFF_FFFE => return End::Clean,
            len => {
                let mut body = vec![0u8; len as usize];
                if read_exact(stream, &mut body).await.is_err() {
                    return End::Broken;
                }
            }
        }
    }
}
