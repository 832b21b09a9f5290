#![doc = include_str!("../README.md")]

mod client;
mod endpoint;
mod protocol;
mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use averager_core::transport::{
    AveragingClient, AveragingService, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES, ServerHandle,
    Transport, TransportCapabilities,
};
use averager_core::{Error, Result};
use averager_dht::{KadSettings, Keypair, Libp2pNode};
use tokio::sync::watch;

pub use endpoint::{endpoint_of, peer_of};
pub use protocol::{AGGREGATE_PROTOCOL, DOWNLOAD_PROTOCOL, JOIN_PROTOCOL};

use crate::client::Libp2pClient;
use crate::server::{Inbound, Serving};

/// The default [`StreamSettings::first_request_timeout`]: generous, as it only frees what a
/// silent caller holds.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How calls are carried: caps and timeouts (the node's own settings are [`KadSettings`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// The largest encoded message this peer sends or accepts, in bytes (at most `u32::MAX - 2`).
    pub max_message_bytes: usize,
    /// How long opening a call's substream may take (a DHT lookup of the peer, the dial, the
    /// protocol negotiation), in seconds.
    #[serde(with = "averager_core::time::secs")]
    pub connect_timeout: Duration,
    /// How long a served call waits, from the moment its substream arrives, for its request
    /// (`rpc_join_group`, `rpc_download_state`) or first request (`rpc_aggregate_part`), in
    /// seconds.
    #[serde(with = "averager_core::time::secs")]
    pub first_request_timeout: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
        }
    }
}

impl StreamSettings {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.max_message_bytes == 0
            || self.max_message_bytes > averager_core::transport::frame::MAX_FRAME_BYTES
        {
            return Err(Error::Config(format!(
                "libp2p max_message_bytes must be in 1..={}, not {}",
                averager_core::transport::frame::MAX_FRAME_BYTES,
                self.max_message_bytes
            )));
        }
        if self.connect_timeout.is_zero() || self.first_request_timeout.is_zero() {
            return Err(Error::Config("libp2p timeouts must be more than zero".into()));
        }
        Ok(())
    }
}

/// The registry's `libp2p` config: a node of the transport's own, and how calls are carried.
///
/// ```
/// # use averager_transport_libp2p::Libp2pConfig;
/// let config: Libp2pConfig = serde_json::from_str(
///     r#"{"node": {"listen": ["/ip4/0.0.0.0/tcp/4001"]}, "identity": "node.key", "streams": {"connect_timeout": 10}}"#,
/// ).unwrap();
/// assert_eq!(config.streams.connect_timeout, std::time::Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Libp2pConfig {
    /// The node's listen and bootstrap addresses and DHT bounds.
    pub node: KadSettings,
    /// A file holding the node's ed25519 key (created, mode 0600, when absent); `None`: a new
    /// identity each start.
    pub identity: Option<PathBuf>,
    /// Caps and timeouts of calls.
    pub streams: StreamSettings,
}

/// The averager's transport over libp2p: the three RPCs as substreams (one protocol id each) on
/// a [`Libp2pNode`] that the Kademlia DHT can share. Serves at `libp2p://<peer id>`; dials
/// `libp2p://<peer id>` (addresses from the node's connections, identify and the DHT) or
/// `libp2p://<multiaddr>/p2p/<peer id>`.
#[derive(Debug, Clone)]
pub struct Libp2pTransport {
    node: Arc<Libp2pNode>,
    settings: StreamSettings,
}

impl Libp2pTransport {
    /// The endpoint scheme, and the transport's registry name.
    pub const SCHEME: &'static str = endpoint::SCHEME;

    /// A transport on `node` (which a [`KadDht`](averager_dht::KadDht) may share).
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings.
    pub fn on_node(node: Arc<Libp2pNode>, settings: StreamSettings) -> Result<Self> {
        settings.validate()?;
        Ok(Libp2pTransport { node, settings })
    }

    /// Starts a node of the transport's own from `config`.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings or an unusable identity file; otherwise as
    /// [`Libp2pNode::start`].
    pub async fn start(config: Libp2pConfig) -> Result<Self> {
        config.streams.validate()?;
        let keypair = match &config.identity {
            Some(path) => averager_dht::load_or_create_identity(path)?,
            None => Keypair::generate_ed25519(),
        };
        let node = Libp2pNode::start(config.node, keypair).await?;
        Self::on_node(Arc::new(node), config.streams)
    }

    /// The node the transport runs on.
    pub fn node(&self) -> &Arc<Libp2pNode> {
        &self.node
    }

    /// The endpoint this transport serves at: `libp2p://<peer id>`.
    pub fn endpoint(&self) -> String {
        endpoint_of(&self.node.peer_id())
    }

    /// The transport's settings.
    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }
}

#[async_trait]
impl Transport for Libp2pTransport {
    fn scheme(&self) -> &str {
        Self::SCHEME
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities { max_message_bytes: self.settings.max_message_bytes, authenticated: true }
    }

    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle> {
        let inbound = Inbound {
            join: self.node.accept(JOIN_PROTOCOL)?,
            aggregate: self.node.accept(AGGREGATE_PROTOCOL)?,
            download: self.node.accept(DOWNLOAD_PROTOCOL)?,
        };
        let (stop, stopped) = watch::channel(false);
        let serving = Serving {
            service,
            limit: self.settings.max_message_bytes,
            first_request_timeout: self.settings.first_request_timeout,
            stopped,
        };
        let accept = tokio::spawn(server::accept_loop(inbound, serving)).abort_handle();
        // A server behind a NAT is reached through its relays: it declares those addresses.
        let declare = self.node.spawn_relayed_addrs_publisher().abort_handle();
        Ok(ServerHandle::new(self.endpoint(), move || {
            stop.send_replace(true);
            // Dropping the loop drops the acceptors: peers opening a call now get "unsupported".
            accept.abort();
            declare.abort();
        }))
    }

    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>> {
        let target = endpoint::parse(endpoint)?;
        if target.peer == self.node.peer_id() {
            return Err(Error::Config(format!(
                "{endpoint} is this node itself; libp2p does not dial itself"
            )));
        }
        // Dial now, so an unreachable peer fails here; calls reuse the connection.
        let dialing = self.node.connect(target.peer, target.addresses.clone());
        match tokio::time::timeout(self.settings.connect_timeout, dialing).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(client::open_error(endpoint, e)),
            Err(_) => {
                return Err(Error::Unreachable {
                    endpoint: endpoint.to_string(),
                    reason: format!("no connection within {:?}", self.settings.connect_timeout),
                });
            }
        }
        Ok(Arc::new(Libp2pClient {
            node: Arc::clone(&self.node),
            endpoint: endpoint.to_string(),
            target,
            limit: self.settings.max_message_bytes,
            connect_timeout: self.settings.connect_timeout,
        }))
    }
}

averager_core::register_transport!(
    Libp2pTransport::SCHEME,
    "libp2p transport (TCP or QUIC, noise, yamux; one substream protocol per RPC) on a node of its own: libp2p://<peer id>",
    |config| Box::pin(async move {
        let config: Libp2pConfig = config.parse()?;
        Ok(Arc::new(Libp2pTransport::start(config).await?) as Arc<dyn Transport>)
    })
);
