//! PLACEHOLDER (helper fills this in).
use serde::Deserialize;
/// Placeholder.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct MemoryDhtSettings {}
/// Placeholder.
#[derive(Debug, Default)]
pub struct MemoryDht;
impl MemoryDht {
    /// Placeholder.
    pub const NAME: &'static str = "memory";
    /// Placeholder.
    pub fn with_settings(_s: MemoryDhtSettings) -> Self {
        MemoryDht
    }
}
#[async_trait::async_trait]
impl super::Dht for MemoryDht {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn capabilities(&self) -> super::DhtCapabilities {
        super::DhtCapabilities { max_value_bytes: 0, max_subkeys_per_key: 0 }
    }
    async fn store(&self, _k: &str, _s: &[u8], _v: bytes::Bytes, _e: f64) -> crate::Result<bool> {
        Err(crate::Error::Internal("placeholder".into()))
    }
    async fn get(&self, _k: &str, _l: bool) -> crate::Result<super::DhtDictionary> {
        Err(crate::Error::Internal("placeholder".into()))
    }
}
