#![doc = include_str!("../README.md")]

mod client;
mod connections;
mod guard;
mod identity;
mod server;
mod settings;
mod status;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use averager_core::transport::{
    AveragingClient, AveragingService, ServerHandle, Transport, TransportCapabilities, split_endpoint,
};
use averager_core::{Error, Result};
use tonic::transport::{Channel, Endpoint};

pub use settings::{DEFAULT_FIRST_REQUEST_TIMEOUT, GrpcSettings};
pub use tls::GrpcTlsSettings;

/// The averager's [`Transport`] over gRPC (tonic, HTTP/2, optionally TLS or mutual TLS), at
/// endpoints `grpc://host:port`. Under mutual TLS, served calls carry the caller's proven
/// identity (see [`GrpcTlsSettings`]) and [`capabilities`](Transport::capabilities) say so.
///
/// Each [`serve`](Transport::serve) binds its own TCP listener at [`GrpcSettings::listen`];
/// [`connect`](Transport::connect) dials eagerly (within [`GrpcSettings::connect_timeout`]) and
/// keeps one HTTP/2 channel per endpoint, shared by every client of that endpoint.
#[derive(Debug, Clone)]
pub struct GrpcTransport {
    settings: GrpcSettings,
    /// The configurations built from `settings.tls`, or why they could not be built.
    tls: Result<Option<Arc<tls::Tls>>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Default for GrpcTransport {
    /// A transport with [`GrpcSettings::default`]: plain HTTP/2, serving on `127.0.0.1:0`.
    fn default() -> Self {
        GrpcTransport::new(GrpcSettings::default())
    }
}

impl GrpcTransport {
    /// The endpoint scheme, and the transport's registry name.
    pub const SCHEME: &'static str = "grpc";

    /// A transport with `settings`, checked: the TLS files are read now.
    ///
    /// # Errors
    /// [`Error::Config`] when `max_message_bytes` or `first_request_timeout` is zero, or the TLS
    /// settings are incomplete or name a file that cannot be read, holds no PEM item of the kind
    /// expected, or a key that does not match its certificate.
    pub fn with_settings(settings: GrpcSettings) -> Result<Self> {
        if settings.max_message_bytes == 0 {
            return Err(Error::Config("grpc max_message_bytes must be more than zero".into()));
        }
        if settings.first_request_timeout.is_zero() {
            return Err(Error::Config("grpc first_request_timeout must be more than zero".into()));
        }
        let transport = GrpcTransport::new(settings);
        transport.tls()?;
        Ok(transport)
    }

    /// A transport with `settings`, unchecked: prefer [`with_settings`](Self::with_settings) when
    /// `settings` have TLS. Here a TLS failure is kept, and every `serve` and `connect` fails
    /// with it.
    pub fn new(settings: GrpcSettings) -> Self {
        let tls = settings.tls.as_ref().map(tls::Tls::load).transpose().map(|tls| tls.map(Arc::new));
        GrpcTransport { settings, tls, channels: Arc::default() }
    }

    fn tls(&self) -> Result<Option<&tls::Tls>> {
        self.tls.as_ref().map(Option::as_deref).map_err(Clone::clone)
    }

    /// A transport with default settings that serves at `listen`.
    pub fn bind(listen: SocketAddr) -> Self {
        GrpcTransport::new(GrpcSettings { listen, ..GrpcSettings::default() })
    }

    /// The transport's settings.
    pub fn settings(&self) -> &GrpcSettings {
        &self.settings
    }

    /// The cached channel to `endpoint`, or a new one (dialled now, within the connect timeout).
    async fn channel(&self, endpoint: &str, target: Endpoint) -> Result<Channel> {
        if let Some(channel) = self.cached(endpoint) {
            return Ok(channel);
        }
        let timeout = self.settings.connect_timeout;
        let dial = async {
            match self.tls()? {
                None => Ok(target.connect().await),
                Some(tls) => {
                    let connector = tls.client.clone().ok_or_else(|| {
                        Error::Config("grpc tls has no ca_certificates: this peer cannot dial".into())
                    })?;
                    Ok(target.connect_with_connector(connector).await)
                }
            }
        };
        let channel = match tokio::time::timeout(timeout, dial).await {
            Ok(Ok(Ok(channel))) => channel,
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Err(e))) => {
                return Err(Error::Unreachable { endpoint: endpoint.to_string(), reason: status::chain(&e) });
            }
            Err(_) => {
                return Err(Error::Unreachable {
                    endpoint: endpoint.to_string(),
                    reason: format!("no connection within {timeout:?}"),
                });
            }
        };
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(channels.entry(endpoint.to_string()).or_insert(channel).clone())
    }

    fn cached(&self, endpoint: &str) -> Option<Channel> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).get(endpoint).cloned()
    }

    /// Validates a `grpc://host:port` endpoint and builds the tonic endpoint that dials it.
    fn target(&self, endpoint: &str) -> Result<Endpoint> {
        let (scheme, authority) = split_endpoint(endpoint)?;
        if scheme != Self::SCHEME {
            return Err(Error::Config(format!(
                "endpoint {endpoint:?} is not a {}:// endpoint",
                Self::SCHEME
            )));
        }
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            return Err(Error::Config(format!("endpoint {endpoint:?} is not grpc://host:port")));
        }
        // `http` even over TLS: the TLS connector does the handshake, and tonic refuses an
        // `https` URI it did not configure TLS for itself.
        let target = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| Error::Config(format!("endpoint {endpoint:?} is not grpc://host:port: {e}")))?;
        let mut target = target
            .connect_timeout(self.settings.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES));
        if let Some(interval) = self.settings.keep_alive {
            target = target
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(interval)
                .keep_alive_while_idle(true);
        }
        Ok(target)
    }
}

/// HTTP/2 flow-control windows, both directions. h2's default (64 KiB) makes a sender of
/// half-megabyte parts stop for a window update every few frames, even on loopback; a window of a
/// few parts keeps the pipe full, and is still a bound on what a peer can make us buffer per stream.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
/// Four streams' windows per connection (a peer sends to one reducer over one stream at a time
/// per group, so a connection rarely carries more).
const CONNECTION_WINDOW_BYTES: u32 = 4 * STREAM_WINDOW_BYTES;
/// The largest HTTP/2 DATA frame this side accepts: fewer, larger frames for megabyte messages.
const MAX_FRAME_BYTES: u32 = 1 << 20;

#[async_trait]
impl Transport for GrpcTransport {
    fn scheme(&self) -> &str {
        Self::SCHEME
    }

    fn capabilities(&self) -> TransportCapabilities {
        // Authenticated only when every served call has passed a client-certificate check.
        let authenticated = matches!(self.tls(), Ok(Some(tls)) if tls.mutual && tls.server.is_some());
        TransportCapabilities { max_message_bytes: self.settings.max_message_bytes, authenticated }
    }

    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle> {
        let tls = match self.tls()? {
            None => None,
            Some(tls) => Some(tls.server.clone().ok_or_else(|| {
                Error::Config("grpc tls has no cert_chain and private_key: this peer cannot serve".into())
            })?),
        };
        server::serve(&self.settings, tls, service).await
    }

    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>> {
        let target = self.target(endpoint)?;
        let channel = self.channel(endpoint, target).await?;
        Ok(Arc::new(client::GrpcClient::new(endpoint, channel, self.settings.max_message_bytes)))
    }
}

averager_core::register_transport!(
    GrpcTransport::SCHEME,
    "gRPC transport (tonic, HTTP/2, optional TLS): peers serve and dial grpc://host:port",
    |config| Box::pin(async move {
        let settings: GrpcSettings = config.parse()?;
        Ok(Arc::new(GrpcTransport::with_settings(settings)?) as Arc<dyn Transport>)
    })
);
