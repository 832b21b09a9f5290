//! protocol 2.3: the Dht trait, a key -> {subkey -> (value, expiration)} store with hivemind's rules.

mod memory;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;

pub use memory::{MemoryDht, MemoryDhtSettings};

use crate::error::Result;
use crate::time::DhtTime;

/// One live entry of a dictionary record.
#[derive(Debug, Clone, PartialEq)]
pub struct DhtEntry {
    /// The stored value (msgpack bytes for everything the averager writes).
    pub value: Bytes,
    /// When the entry stops existing, in [DHT time](crate::time).
    pub expiration: DhtTime,
}

/// The live entries under one key, by subkey.
pub type DhtDictionary = BTreeMap<Bytes, DhtEntry>;

/// What a DHT backend offers, so the conformance suite tests what it honestly promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhtCapabilities {
    /// The largest value the backend stores, in bytes; larger values are refused with an error.
    pub max_value_bytes: usize,
    /// The most subkeys one key holds; further new subkeys are refused (`Ok(false)`).
    pub max_subkeys_per_key: usize,
}

/// A distributed key-value store with dictionary values and expirations (hivemind's DHT).
///
/// The averager writes group declarations and state-donor records through it (protocol 2.3).
#[async_trait]
pub trait Dht: Send + Sync + 'static {
    /// A short name for logs (the registry name of the backend, e.g. `"memory"`, `"kad"`).
    fn name(&self) -> &str;

    /// What the backend offers.
    fn capabilities(&self) -> DhtCapabilities;

    /// Stores `(key, subkey) -> value` until `expiration`.
    ///
    /// # Behavior
    /// Returns `Ok(true)` when stored. Returns `Ok(false)`, changing nothing, when the entry
    /// already holds an expiration at or after `expiration` (the later expiration wins; a tie
    /// keeps the old one), when `expiration` is not after the current DHT time, or when the key
    /// already holds `max_subkeys_per_key` other live subkeys. A value over `max_value_bytes` or a
    /// non-finite expiration is an [`Error::Dht`](crate::Error::Dht).
    async fn store(&self, key: &str, subkey: &[u8], value: Bytes, expiration: DhtTime) -> Result<bool>;

    /// Reads every live subkey under `key`.
    ///
    /// # Behavior
    /// Expired entries are never returned; a key with none is an empty map. With `latest`, a
    /// distributed backend asks enough replicas to return, for each subkey, the entry with the
    /// latest expiration any of them holds (their union); without it, it may answer from a cache.
    async fn get(&self, key: &str, latest: bool) -> Result<DhtDictionary>;

    /// Whether this node is a client (cannot accept connections); the averager's `client_mode`
    /// defaults to it (protocol 9).
    fn client_mode(&self) -> bool {
        false
    }
}
