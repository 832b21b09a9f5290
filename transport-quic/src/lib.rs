#![doc = include_str!("../README.md")]

mod client;
mod frame;
mod server;
mod tls;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use averager_core::transport::frame::MAX_FRAME_BYTES;
use averager_core::transport::{
    AveragingClient, AveragingService, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES, ServerHandle,
    Transport, TransportCapabilities,
};
use averager_core::{Error, Result};
use quinn::{Endpoint, VarInt};
use tokio::sync::watch;

use crate::client::{Dialer, QuicClient};
use crate::server::Serving;

/// Settings of a [`QuicTransport`] (the registry's `quic` transport config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicSettings {
    /// The UDP address to serve on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The host name or address written into the served endpoint; `None`: the bound address
    /// (an unspecified address such as `0.0.0.0` is advertised as loopback).
    pub advertise_host: Option<String>,
    /// The largest encoded message this peer sends or accepts, in bytes (at most `u32::MAX - 2`).
    pub max_message_bytes: usize,
    /// How long a dial (resolution and QUIC handshake) may take, in seconds.
    #[serde(with = "averager_core::time::secs")]
    pub connect_timeout: Duration,
    /// A SHA-256 certificate fingerprint (64 hex digits) every dialed server must present when its
    /// endpoint carries no `#<sha256>` pin of its own; `None`: such servers are not checked.
    pub pin: Option<String>,
    /// How long a served call waits, from the moment its stream arrives, for the caller's method
    /// byte and its request (`rpc_join_group`, `rpc_download_state`) or first request
    /// (`rpc_aggregate_part`), in seconds. A caller that opens a stream and sends nothing (or part
    /// of a message) gets an error frame and the stream is freed; later requests of an aggregate
    /// stream may come at any pace.
    #[serde(with = "averager_core::time::secs")]
    pub first_request_timeout: Duration,
}

/// The default [`QuicSettings::first_request_timeout`]: generous, as it only frees what a silent
/// caller holds.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for QuicSettings {
    fn default() -> Self {
        QuicSettings {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            advertise_host: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pin: None,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
        }
    }
}

/// The averager's transport over QUIC: serves at `quic://host:port#<sha256>` with a fresh
/// self-signed certificate, and dials `quic://host:port[#<sha256>]`, one cached connection per
/// endpoint and one bidirectional stream per call.
pub struct QuicTransport {
    settings: QuicSettings,
    dialer: Arc<Dialer>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// The endpoint scheme, and the transport's registry name.
    pub const SCHEME: &'static str = client::SCHEME;

    /// A transport with `settings`.
    ///
    /// # Errors
    /// [`Error::Config`] when `max_message_bytes` is 0 or over `u32::MAX - 2`, `pin` is not 64
    /// hex digits, or `first_request_timeout` is zero.
    pub fn with_settings(mut settings: QuicSettings) -> Result<Self> {
        if settings.max_message_bytes == 0 || settings.max_message_bytes > MAX_FRAME_BYTES {
            return Err(Error::Config(format!(
                "quic max_message_bytes must be in 1..={}, not {}",
                MAX_FRAME_BYTES, settings.max_message_bytes
            )));
        }
        if settings.first_request_timeout.is_zero() {
            return Err(Error::Config("quic first_request_timeout must be more than zero".into()));
        }
        settings.pin = settings.pin.as_deref().map(client::parse_pin).transpose()?;
        let dialer = Arc::new(Dialer::new(settings.connect_timeout, settings.pin.clone()));
        Ok(QuicTransport { settings, dialer })
    }

    /// The transport's settings.
    pub fn settings(&self) -> &QuicSettings {
        &self.settings
    }
}

impl Default for QuicTransport {
    /// A transport with [`QuicSettings::default`]: serves on `127.0.0.1:0`.
    fn default() -> Self {
        let settings = QuicSettings::default();
        let dialer = Arc::new(Dialer::new(settings.connect_timeout, None));
        QuicTransport { settings, dialer }
    }
}

#[async_trait]
impl Transport for QuicTransport {
    fn scheme(&self) -> &str {
        Self::SCHEME
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities { max_message_bytes: self.settings.max_message_bytes, authenticated: false }
    }

    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle> {
        let (config, fingerprint) = tls::server_config()?;
        let listen = self.settings.listen;
        let endpoint = Endpoint::server(config, listen)
            .map_err(|e| Error::Config(format!("cannot serve QUIC on {listen}: {e}")))?;
        let local = endpoint
            .local_addr()
            .map_err(|e| Error::Transport(format!("the QUIC socket has no local address: {e}")))?;
        let host = match &self.settings.advertise_host {
            Some(host) if host.contains(':') && !host.starts_with('[') => format!("[{host}]"),
            Some(host) => host.clone(),
            None => {
                let ip = match local.ip() {
                    IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                    ip => ip,
                };
                SocketAddr::new(ip, 0).to_string().trim_end_matches(":0").to_string()
            }
        };
        let served = format!("{}://{host}:{}#{fingerprint}", Self::SCHEME, local.port());
        let (stop, stopped) = watch::channel(false);
        let serving = Serving {
            service,
            limit: self.settings.max_message_bytes,
            first_request_timeout: self.settings.first_request_timeout,
            stopped,
        };
        let accept = tokio::spawn(server::accept_loop(endpoint.clone(), serving)).abort_handle();
        Ok(ServerHandle::new(served, move || {
            stop.send_replace(true);
            endpoint.close(VarInt::from_u32(0), b"stopped");
            accept.abort();
        }))
    }

    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>> {
        let target = client::parse_endpoint(endpoint)?;
        let client = QuicClient {
            dialer: self.dialer.clone(),
            endpoint: endpoint.to_string(),
            target,
            limit: self.settings.max_message_bytes,
        };
        // Dial now, so an unreachable endpoint or a wrong pin fails here; calls reuse the connection.
        self.dialer.connection(&client.endpoint, &client.target).await?;
        Ok(Arc::new(client))
    }
}

averager_core::register_transport!(
    QuicTransport::SCHEME,
    "QUIC transport (quinn, TLS 1.3, self-signed certificates, optional SHA-256 pinning): quic://host:port[#sha256]",
    |config| Box::pin(async move {
        let settings: QuicSettings = config.parse()?;
        Ok(Arc::new(QuicTransport::with_settings(settings)?) as Arc<dyn Transport>)
    })
);
