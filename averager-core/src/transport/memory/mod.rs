//! protocol 2.2 in one process: [`MemoryTransport`], a real transport whose peers reach each other at
//! `mem://<name>` through a shared [`MemoryNetwork`].
//!
//! Every call runs its handler in its own task, and messages cross bounded channels in both
//! directions, so back-pressure, full-duplex streaming, size caps and cancellation behave as over
//! a network. [`MemoryNetwork::kill`] drops a peer abruptly, for fault-tolerance tests.
//!
//! # Choices
//! - **Unreachable endpoints** fail at [`connect`](Transport::connect) (nobody serves the name at
//!   that moment) and again at each call, because every call looks the name up afresh: a client
//!   that outlives its server gets [`Error::Unreachable`] from its next call, and a client whose
//!   server came back under the same name reaches the new one.
//! - **Size cap**: a message is refused when its encoded size exceeds the smaller of the caller's
//!   and the server's `max_message_bytes`.
//! - **Channel capacity** is the caller's `channel_capacity`, in both directions.

mod call;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};

use self::call::{AbortOnDrop, FrameStream, ResponseTask, pump_requests};
use crate::error::{Error, Result};
use crate::transport::{
    AveragingClient, AveragingData, AveragingService, CallContext, DEFAULT_MAX_MESSAGE_BYTES, DownloadData,
    DownloadRequest, JoinRequest, MessageFromLeader, MessageStream, RequestStream, ServerHandle, Transport,
    TransportCapabilities, split_endpoint,
};

/// Settings of a [`MemoryTransport`] (the registry's `mem` transport config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MemorySettings {
    /// The name to serve at (`mem://<name>`); a unique name is generated when `None`.
    pub name: Option<String>,
    /// The largest encoded message this peer sends or accepts, in bytes.
    pub max_message_bytes: usize,
    /// How many messages each direction of a call buffers before the writer waits.
    pub channel_capacity: usize,
}

impl Default for MemorySettings {
    fn default() -> Self {
        MemorySettings { name: None, max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES, channel_capacity: 4 }
    }
}

/// One served endpoint.
struct Served {
    service: Arc<dyn AveragingService>,
    max_message_bytes: usize,
    /// Set to `true` when the peer is killed or stopped; every call in flight watches it.
    killed: watch::Sender<bool>,
}

/// The in-process "network": which service is served under which name.
///
/// Peers on one network reach each other; [`MemoryNetwork::global`] is the one the registry's
/// `mem` transport uses.
pub struct MemoryNetwork {
    peers: Mutex<HashMap<String, Arc<Served>>>,
    next_name: AtomicU64,
}

impl MemoryNetwork {
    /// A new, empty network.
    pub fn new() -> Arc<MemoryNetwork> {
        Arc::new(MemoryNetwork { peers: Mutex::new(HashMap::new()), next_name: AtomicU64::new(0) })
    }

    /// The process-wide network.
    pub fn global() -> Arc<MemoryNetwork> {
        static GLOBAL: OnceLock<Arc<MemoryNetwork>> = OnceLock::new();
        GLOBAL.get_or_init(MemoryNetwork::new).clone()
    }

    /// Drops the peer served at `endpoint` (`mem://<name>` or just `<name>`), as if its process
    /// died: it is deregistered, every call in flight to it is cut (callers' response streams end
    /// with an error, the handler's streams are dropped), and later calls fail with
    /// [`Error::Unreachable`]. Returns whether a peer was served there.
    pub fn kill(&self, endpoint: &str) -> bool {
        let name = endpoint.strip_prefix("mem://").unwrap_or(endpoint);
        let removed = self.peers().remove(name);
        match removed {
            Some(served) => {
                served.killed.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// Whether a peer is served at `endpoint` (`mem://<name>` or just `<name>`).
    pub fn is_served(&self, endpoint: &str) -> bool {
        let name = endpoint.strip_prefix("mem://").unwrap_or(endpoint);
        self.peers().contains_key(name)
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<String, Arc<Served>>> {
        // The map is consistent after any panic (single inserts and removes), so poison is moot.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lookup(&self, name: &str) -> Option<Arc<Served>> {
        self.peers().get(name).cloned()
    }

    /// Registers `served` under `name`, or under a fresh generated name when `name` is `None`.
    fn register(&self, name: Option<&str>, served: Arc<Served>) -> Result<String> {
        let mut peers = self.peers();
        let name = match name {
            Some(name) => {
                if peers.contains_key(name) {
                    return Err(Error::Config(format!("mem://{name} is already served")));
                }
                name.to_string()
            }
            None => loop {
                let n = self.next_name.fetch_add(1, Ordering::Relaxed);
                let candidate = format!("peer-{n}");
                if !peers.contains_key(&candidate) {
                    break candidate;
                }
            },
        };
        peers.insert(name.clone(), served);
        Ok(name)
    }

    /// Stops `served` and deregisters it, unless `name` has since been taken by another server.
    fn stop(&self, name: &str, served: &Arc<Served>) {
        let mut peers = self.peers();
        if peers.get(name).is_some_and(|current| Arc::ptr_eq(current, served)) {
            peers.remove(name);
        }
        drop(peers);
        served.killed.send_replace(true);
    }
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = self.peers().keys().cloned().collect();
        names.sort();
        f.debug_struct("MemoryNetwork").field("served", &names).finish()
    }
}

/// The in-process transport: serves at `mem://<name>` on a [`MemoryNetwork`] and dials peers on
/// the same network.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    network: Arc<MemoryNetwork>,
    settings: MemorySettings,
}

impl MemoryTransport {
    /// The endpoint scheme, and the transport's registry name.
    pub const SCHEME: &'static str = "mem";

    /// A transport on `network` with default settings.
    pub fn new(network: Arc<MemoryNetwork>) -> Self {
        MemoryTransport::with_settings(network, MemorySettings::default())
    }

    /// A transport on `network` with `settings`.
    pub fn with_settings(network: Arc<MemoryNetwork>, settings: MemorySettings) -> Self {
        MemoryTransport { network, settings }
    }

    /// The network this transport serves on and dials into.
    pub fn network(&self) -> &Arc<MemoryNetwork> {
        &self.network
    }
}

impl Default for MemoryTransport {
    /// A transport on [`MemoryNetwork::global`] with default settings.
    fn default() -> Self {
        MemoryTransport::new(MemoryNetwork::global())
    }
}

/// Validates a `mem://<name>` endpoint and returns the name.
fn parse_endpoint(endpoint: &str) -> Result<&str> {
    let (scheme, name) = split_endpoint(endpoint)?;
    if scheme != MemoryTransport::SCHEME {
        return Err(Error::Config(format!(
            "endpoint {endpoint:?} is not a {}:// endpoint",
            MemoryTransport::SCHEME
        )));
    }
    if name.is_empty() || name.contains('/') {
        return Err(Error::Config(format!("endpoint {endpoint:?} has no valid name after mem://")));
    }
    Ok(name)
}

#[async_trait]
impl Transport for MemoryTransport {
    fn scheme(&self) -> &str {
        Self::SCHEME
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities { max_message_bytes: self.settings.max_message_bytes, authenticated: false }
    }

    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle> {
        let name = match self.settings.name.as_deref() {
            Some(name) => {
                let name = name.strip_prefix("mem://").unwrap_or(name);
                if name.is_empty() || name.contains('/') {
                    return Err(Error::Config(format!("{name:?} is not a valid mem:// name")));
                }
                Some(name)
            }
            None => None,
        };
        let (killed, _) = watch::channel(false);
        let served = Arc::new(Served { service, max_message_bytes: self.settings.max_message_bytes, killed });
        let name = self.network.register(name, served.clone())?;
        let network = self.network.clone();
        let endpoint = format!("mem://{name}");
        Ok(ServerHandle::new(endpoint, move || network.stop(&name, &served)))
    }

    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>> {
        let name = parse_endpoint(endpoint)?;
        if self.network.lookup(name).is_none() {
            return Err(unreachable(endpoint));
        }
        Ok(Arc::new(MemoryClient {
            network: self.network.clone(),
            name: name.to_string(),
            endpoint: endpoint.to_string(),
            max_message_bytes: self.settings.max_message_bytes,
            channel_capacity: self.settings.channel_capacity.max(1),
        }))
    }
}

fn unreachable(endpoint: &str) -> Error {
    Error::Unreachable { endpoint: endpoint.to_string(), reason: "nobody serves this name".into() }
}

/// A client of one `mem://` endpoint.
struct MemoryClient {
    network: Arc<MemoryNetwork>,
    name: String,
    endpoint: String,
    max_message_bytes: usize,
    channel_capacity: usize,
}

impl MemoryClient {
    /// The server behind the endpoint now, and the size cap of a call to it.
    fn resolve(&self) -> Result<(Arc<Served>, usize)> {
        let served = self.network.lookup(&self.name).ok_or_else(|| unreachable(&self.endpoint))?;
        let limit = self.max_message_bytes.min(served.max_message_bytes);
        Ok((served, limit))
    }

    /// Runs one call: `start` calls the handler in a new task whose responses cross a bounded
    /// channel to the returned stream. Returns once the handler has returned its stream (or error).
    async fn call<T, F>(
        &self,
        served: &Served,
        limit: usize,
        start: F,
        request_failed: Option<oneshot::Receiver<Error>>,
        request_pump: Option<AbortOnDrop>,
    ) -> Result<MessageStream<T>>
    where
        T: prost::Message + Send + 'static,
        F: Future<Output = Result<MessageStream<T>>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(self.channel_capacity);
        let (started, started_rx) = oneshot::channel();
        let task = ResponseTask {
            start,
            started,
            tx,
            limit,
            killed: served.killed.subscribe(),
            endpoint: self.endpoint.clone(),
            request_failed,
            request_pump,
        };
        // Dropping this guard (the caller dropping the call future or the stream) cancels the call.
        let task = AbortOnDrop::spawn(task.run());
        match started_rx.await {
            Ok(Ok(())) => {
                let cut = Error::Transport(format!("the call to {} ended abruptly", self.endpoint));
                Ok(Box::pin(FrameStream::new(rx, cut, Some(task))))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Transport(format!("the handler at {} failed to start", self.endpoint))),
        }
    }

    fn check_size(message: &impl prost::Message, limit: usize) -> Result<()> {
        let size = message.encoded_len();
        if size > limit {
            return Err(Error::MessageTooLarge { size, limit });
        }
        Ok(())
    }
}

#[async_trait]
impl AveragingClient for MemoryClient {
    async fn rpc_join_group(&self, request: JoinRequest) -> Result<MessageStream<MessageFromLeader>> {
        let (served, limit) = self.resolve()?;
        Self::check_size(&request, limit)?;
        let service = served.service.clone();
        let start = async move { service.rpc_join_group(CallContext::default(), request).await };
        self.call(&served, limit, start, None, None).await
    }

    async fn rpc_aggregate_part(
        &self,
        requests: RequestStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let (served, limit) = self.resolve()?;
        let (tx, rx) = mpsc::channel(self.channel_capacity);
        let (failed, failed_rx) = oneshot::channel();
        let pump = AbortOnDrop::spawn(pump_requests(requests, tx, limit, failed));
        let cut = Error::Cancelled("the caller cancelled the call".into());
        let handler_requests: MessageStream<AveragingData> = Box::pin(FrameStream::new(rx, cut, None));
        let service = served.service.clone();
        let start = async move { service.rpc_aggregate_part(CallContext::default(), handler_requests).await };
        self.call(&served, limit, start, Some(failed_rx), Some(pump)).await
    }

    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>> {
        let (served, limit) = self.resolve()?;
        Self::check_size(&request, limit)?;
        let service = served.service.clone();
        let start = async move { service.rpc_download_state(CallContext::default(), request).await };
        self.call(&served, limit, start, None, None).await
    }
}
