//! PLACEHOLDER (helper fills this in).
use serde::Deserialize;
use std::sync::{Arc, OnceLock};

/// Placeholder.
#[derive(Debug, Default)]
pub struct MemoryNetwork;
impl MemoryNetwork {
    /// Placeholder.
    pub fn global() -> Arc<MemoryNetwork> {
        static G: OnceLock<Arc<MemoryNetwork>> = OnceLock::new();
        G.get_or_init(|| Arc::new(MemoryNetwork)).clone()
    }
}
/// Placeholder.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct MemorySettings {}
/// Placeholder.
#[derive(Debug)]
pub struct MemoryTransport;
impl MemoryTransport {
    /// Placeholder.
    pub const SCHEME: &'static str = "mem";
    /// Placeholder.
    pub fn with_settings(_n: Arc<MemoryNetwork>, _s: MemorySettings) -> Self {
        MemoryTransport
    }
}
#[async_trait::async_trait]
impl super::Transport for MemoryTransport {
    fn scheme(&self) -> &str {
        Self::SCHEME
    }
    fn capabilities(&self) -> super::TransportCapabilities {
        super::TransportCapabilities { max_message_bytes: 0, authenticated: false }
    }
    async fn serve(&self, _s: Arc<dyn super::AveragingService>) -> crate::Result<super::ServerHandle> {
        Err(crate::Error::Internal("placeholder".into()))
    }
    async fn connect(&self, _e: &str) -> crate::Result<Arc<dyn super::AveragingClient>> {
        Err(crate::Error::Internal("placeholder".into()))
    }
}
