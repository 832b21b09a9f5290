#![doc = include_str!("../README.md")]

mod client;
mod io;
mod server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use averager_core::transport::frame::{MAX_FRAME_BYTES, ReadBudget};
use averager_core::transport::{
    AveragingClient, AveragingService, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES, ServerHandle,
    Transport, TransportCapabilities,
};
use averager_core::{Error, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::client::TcpClient;
use crate::server::Serving;

/// Settings of a [`TcpTransport`] (the registry's `tcp` transport config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpSettings {
    /// The TCP address to serve on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The host name or address written into the served endpoint; `None`: the bound address
    /// (an unspecified address such as `0.0.0.0` is advertised as loopback).
    pub advertise_host: Option<String>,
    /// The largest encoded message this peer sends or accepts, in bytes (at most `u32::MAX - 2`).
    pub max_message_bytes: usize,
    /// How long a dial (resolution and TCP handshake) may take, in seconds.
    #[serde(with = "averager_core::time::secs")]
    pub connect_timeout: Duration,
    /// How long a served call waits, from the moment its connection arrives, for the caller's
    /// method byte and its request (`rpc_join_group`, `rpc_download_state`) or first request
    /// (`rpc_aggregate_part`), in seconds. A caller that connects and sends nothing (or part of a
    /// message) gets an error frame and the connection is closed; later requests of an aggregate
    /// call may come at any pace.
    #[serde(with = "averager_core::time::secs")]
    pub first_request_timeout: Duration,
}

/// The default [`TcpSettings::first_request_timeout`]: generous, as it only frees what a silent
/// caller holds.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            advertise_host: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
        }
    }
}

/// The averager's transport over plain TCP: serves at `tcp://host:port` and dials such
/// endpoints, one connection per call. No encryption, no authentication: for trusted networks.
#[derive(Debug)]
pub struct TcpTransport {
    settings: TcpSettings,
    /// Shared by every connection this transport serves or dials (see `io::READ_BUDGET`).
    budget: ReadBudget,
    /// The averager's cap on each part or reply stream's rate, applied as calls begin.
    rate: io::StreamRateLimit,
}

impl Default for TcpTransport {
    /// A transport with [`TcpSettings::default`]: serves on `127.0.0.1:0`.
    fn default() -> Self {
        TcpTransport::checked(TcpSettings::default())
    }
}

impl TcpTransport {
    /// The endpoint scheme, and the transport's registry name.
    pub const SCHEME: &'static str = client::SCHEME;

    /// A transport with `settings`.
    ///
    /// # Errors
    /// [`Error::Config`] when `max_message_bytes` is 0 or over `u32::MAX - 2`, or
    /// `first_request_timeout` is zero.
    pub fn with_settings(settings: TcpSettings) -> Result<Self> {
        if settings.max_message_bytes == 0 || settings.max_message_bytes > MAX_FRAME_BYTES {
            return Err(Error::Config(format!(
                "tcp max_message_bytes must be in 1..={}, not {}",
                MAX_FRAME_BYTES, settings.max_message_bytes
            )));
        }
        if settings.first_request_timeout.is_zero() {
            return Err(Error::Config("tcp first_request_timeout must be more than zero".into()));
        }
        Ok(TcpTransport::checked(settings))
    }

    /// A transport with `settings` already checked (or the defaults, which pass).
    fn checked(settings: TcpSettings) -> Self {
        TcpTransport {
            settings,
            budget: ReadBudget::new(io::READ_BUDGET),
            rate: io::StreamRateLimit::default(),
        }
    }

    /// The transport's settings.
    pub fn settings(&self) -> &TcpSettings {
        &self.settings
    }

    /// The host part of the served endpoint.
    fn advertised_host(&self, local: SocketAddr) -> String {
        match &self.settings.advertise_host {
            Some(host) if host.contains(':') && !host.starts_with('[') => format!("[{host}]"),
            Some(host) => host.clone(),
            None => match local.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            },
        }
    }
}

#[async_trait]
impl Transport for TcpTransport {
    fn scheme(&self) -> &str {
        Self::SCHEME
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities { max_message_bytes: self.settings.max_message_bytes, authenticated: false }
    }

    /// Caps each `rpc_aggregate_part` connection to another host with the kernel's
    /// `SO_MAX_PACING_RATE` (Linux), from the next call on, in both roles.
    fn set_stream_rate_limit(&self, bytes_per_second: Option<u64>) {
        self.rate.set(bytes_per_second);
    }

    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle> {
        let listen = self.settings.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Config(format!("cannot serve TCP on {listen}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Transport(format!("the TCP listener has no local address: {e}")))?;
        let served = format!("{}://{}:{}", Self::SCHEME, self.advertised_host(local), local.port());
        let (stop, stopped) = watch::channel(false);
        let serving = Serving {
            service,
            limit: self.settings.max_message_bytes,
            first_request_timeout: self.settings.first_request_timeout,
            stopped,
            budget: self.budget.clone(),
            rate: self.rate.clone(),
        };
        // Aborting the accept loop drops the listener, so later dials are refused at once.
        let accept = tokio::spawn(server::accept_loop(listener, serving)).abort_handle();
        Ok(ServerHandle::new(served, move || {
            stop.send_replace(true);
            accept.abort();
        }))
    }

    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>> {
        let authority = client::parse_endpoint(endpoint)?;
        let timeout = self.settings.connect_timeout;
        // Dial now, so an unreachable endpoint fails here; the first call uses this connection.
        let stream = client::dial(endpoint, &authority, timeout).await?;
        Ok(Arc::new(TcpClient {
            endpoint: endpoint.to_string(),
            authority,
            limit: self.settings.max_message_bytes,
            connect_timeout: timeout,
            budget: self.budget.clone(),
            rate: self.rate.clone(),
            spare: Mutex::new(Some((stream, Instant::now()))),
        }))
    }
}

averager_core::register_transport!(
    TcpTransport::SCHEME,
    "plain TCP transport (no encryption or authentication: trusted networks only), one connection per call: tcp://host:port",
    |config| Box::pin(async move {
        let settings: TcpSettings = config.parse()?;
        Ok(Arc::new(TcpTransport::with_settings(settings)?) as Arc<dyn Transport>)
    })
);
