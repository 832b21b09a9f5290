#![doc = include_str!("../README.md")]

mod client;
mod server;
mod settings;
mod status;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use averager_core::transport::{
    AveragingClient, AveragingService, ServerHandle, Transport, TransportCapabilities, split_endpoint,
};
use averager_core::{Error, Result};
use tonic::transport::{Channel, Endpoint};

pub use settings::GrpcSettings;

/// The averager's [`Transport`] over gRPC (tonic, HTTP/2), at endpoints `grpc://host:port`.
///
/// Each [`serve`](Transport::serve) binds its own TCP listener at [`GrpcSettings::listen`];
/// [`connect`](Transport::connect) dials eagerly (within [`GrpcSettings::connect_timeout`]) and
/// keeps one HTTP/2 channel per endpoint, shared by every client of that endpoint.
#[derive(Debug, Clone, Default)]
pub struct GrpcTransport {
    settings: GrpcSettings,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl GrpcTransport {
    /// The endpoint scheme, and the transport's registry name.
    pub const SCHEME: &'static str = "grpc";

    /// A transport with `settings`.
    pub fn new(settings: GrpcSettings) -> Self {
        GrpcTransport { settings, channels: Arc::default() }
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
        let dial = tokio::time::timeout(timeout, target.connect());
        let channel = match dial.await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => {
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
        let target = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| Error::Config(format!("endpoint {endpoint:?} is not grpc://host:port: {e}")))?;
        let mut target = target.connect_timeout(self.settings.connect_timeout);
        if let Some(interval) = self.settings.keep_alive {
            target = target
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(interval)
                .keep_alive_while_idle(true);
        }
        Ok(target)
    }
}

#[async_trait]
impl Transport for GrpcTransport {
    fn scheme(&self) -> &str {
        Self::SCHEME
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities { max_message_bytes: self.settings.max_message_bytes, authenticated: false }
    }

    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle> {
        server::serve(&self.settings, service).await
    }

    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>> {
        let target = self.target(endpoint)?;
        let channel = self.channel(endpoint, target).await?;
        Ok(Arc::new(client::GrpcClient::new(endpoint, channel, self.settings.max_message_bytes)))
    }
}

averager_core::register_transport!(
    GrpcTransport::SCHEME,
    "gRPC transport (tonic, HTTP/2): peers serve and dial grpc://host:port",
    |config| Box::pin(async move {
        let settings: GrpcSettings = config.parse()?;
        Ok(Arc::new(GrpcTransport::new(settings)) as Arc<dyn Transport>)
    })
);
