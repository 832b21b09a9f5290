//! The plugin registry: every backend crate submits one record per plugin with `inventory`, and
//! the core finds plugins by name at run time.
//!
//! A record is a plain struct of `&'static str`s and a `fn` constructor, so `inventory` can place
//! it in a static. The `register_*!` macros fill in where the record came from and hide
//! `inventory`, so plugin crates never depend on it themselves. Where life-before-main does not
//! run (some embedded or WASM targets), [`Registry::register_codec`] and its siblings add records
//! explicitly.
//!
//! Two records of one kind with one name are a [`Error::DuplicatePlugin`] that names both, at the
//! first lookup of that name (and from [`Registry::check`]).
//!
//! Note for binaries: a crate's `submit!` is linked only if the final binary references that
//! crate. The facade crate mentions every backend its features enable; a binary that depends on a
//! plugin crate directly should `use that_crate as _;`.

mod builtin;
mod config;
mod records;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

#[doc(hidden)]
pub use inventory;

pub use config::PluginConfig;
pub use records::{CodecPlugin, DhtPlugin, PluginFuture, ReducerPlugin, TransportPlugin};

use crate::compression::{Compression, WireTensor, builtin_codec_name};
use crate::dht::Dht;
use crate::error::{Error, Result};
use crate::reduce::Reducer;
use crate::tensor::Tensor;
use crate::transport::{Transport, split_endpoint};

/// The name, description and origin of a registered plugin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PluginInfo {
    /// The name it is looked up by.
    pub name: &'static str,
    /// One line on what it is.
    pub description: &'static str,
    /// The module that registered it.
    pub origin: &'static str,
}

/// Common access to the four record types, so lookup and duplicate checks exist once.
trait Record: Clone + Send + Sync + 'static {
    const KIND: &'static str;
    fn info(&self) -> PluginInfo;
    fn submitted() -> Vec<Self>;
}

macro_rules! record_kind {
    ($ty:ty, $kind:literal) => {
        impl Record for $ty {
            const KIND: &'static str = $kind;
            fn info(&self) -> PluginInfo {
                PluginInfo { name: self.name, description: self.description, origin: self.origin }
            }
            fn submitted() -> Vec<Self> {
                inventory::iter::<$ty>.into_iter().cloned().collect()
            }
        }
    };
}
record_kind!(CodecPlugin, "codec");
record_kind!(ReducerPlugin, "reducer");
record_kind!(TransportPlugin, "transport");
record_kind!(DhtPlugin, "dht");

/// Records added with `Registry::register_*`.
#[derive(Default)]
struct Explicit {
    codecs: Vec<CodecPlugin>,
    reducers: Vec<ReducerPlugin>,
    transports: Vec<TransportPlugin>,
    dhts: Vec<DhtPlugin>,
}

/// The set of plugins a process can use: everything submitted with `inventory` (when enabled)
/// plus everything registered explicitly.
pub struct Registry {
    use_inventory: bool,
    explicit: RwLock<Explicit>,
    codec_cache: Mutex<HashMap<String, Arc<dyn Compression>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("codecs", &self.codecs())
            .field("reducers", &self.reducers())
            .field("transports", &self.transports())
            .field("dhts", &self.dhts())
            .finish()
    }
}

impl Registry {
    /// The process-wide registry: every plugin linked into the binary, plus explicit additions.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(|| Registry::with_inventory(true))
    }

    /// A registry that sees only what is registered explicitly (ignores `inventory`).
    pub fn empty() -> Registry {
        Registry::with_inventory(false)
    }

    fn with_inventory(use_inventory: bool) -> Registry {
        Registry {
            use_inventory,
            explicit: RwLock::new(Explicit::default()),
            codec_cache: Mutex::new(HashMap::new()),
        }
    }

    fn all<R: Record>(&self, explicit: impl FnOnce(&Explicit) -> &Vec<R>) -> Vec<R> {
        let mut records = if self.use_inventory { R::submitted() } else { Vec::new() };
        let guard = self.explicit.read().unwrap_or_else(PoisonError::into_inner);
        records.extend(explicit(&guard).iter().cloned());
        records
    }

    fn find<R: Record>(records: Vec<R>, name: &str) -> Result<R> {
        let mut matching = records.iter().filter(|r| r.info().name == name);
        let Some(first) = matching.next() else {
            let mut known: Vec<_> = records.iter().map(|r| r.info().name).collect();
            known.sort_unstable();
            known.dedup();
            return Err(Error::UnknownPlugin {
                kind: R::KIND,
                name: name.to_string(),
                known: known.join(", "),
            });
        };
        if let Some(second) = matching.next() {
            return Err(duplicate::<R>(first, second));
        }
        Ok(first.clone())
    }

    fn infos<R: Record>(records: Vec<R>) -> Vec<PluginInfo> {
        let mut infos: Vec<_> = records.iter().map(Record::info).collect();
        infos.sort();
        infos
    }

    fn check_kind<R: Record>(records: Vec<R>) -> Result<()> {
        let mut seen: HashMap<&'static str, &R> = HashMap::new();
        for r in &records {
            if let Some(first) = seen.insert(r.info().name, r) {
                return Err(duplicate::<R>(first, r));
            }
        }
        Ok(())
    }

    /// Adds a codec record (for targets where `inventory` does not run).
    pub fn register_codec(&self, record: CodecPlugin) {
        self.explicit.write().unwrap_or_else(PoisonError::into_inner).codecs.push(record);
    }

    /// Adds a reducer record.
    pub fn register_reducer(&self, record: ReducerPlugin) {
        self.explicit.write().unwrap_or_else(PoisonError::into_inner).reducers.push(record);
    }

    /// Adds a transport record.
    pub fn register_transport(&self, record: TransportPlugin) {
        self.explicit.write().unwrap_or_else(PoisonError::into_inner).transports.push(record);
    }

    /// Adds a DHT record.
    pub fn register_dht(&self, record: DhtPlugin) {
        self.explicit.write().unwrap_or_else(PoisonError::into_inner).dhts.push(record);
    }

    /// Every registered codec, sorted by name.
    pub fn codecs(&self) -> Vec<PluginInfo> {
        Self::infos(self.all(|e| &e.codecs))
    }

    /// Every registered reducer, sorted by name.
    pub fn reducers(&self) -> Vec<PluginInfo> {
        Self::infos(self.all(|e| &e.reducers))
    }

    /// Every registered transport, sorted by scheme.
    pub fn transports(&self) -> Vec<PluginInfo> {
        Self::infos(self.all(|e| &e.transports))
    }

    /// Every registered DHT, sorted by name.
    pub fn dhts(&self) -> Vec<PluginInfo> {
        Self::infos(self.all(|e| &e.dhts))
    }

    /// Checks that no two plugins of one kind share a name.
    ///
    /// # Errors
    /// The first [`Error::DuplicatePlugin`] found.
    pub fn check(&self) -> Result<()> {
        Self::check_kind(self.all(|e| &e.codecs))?;
        Self::check_kind(self.all(|e| &e.reducers))?;
        Self::check_kind(self.all(|e| &e.transports))?;
        Self::check_kind(self.all(|e| &e.dhts))
    }

    /// The codec registered as `name`, built with its default configuration (and then cached).
    ///
    /// # Errors
    /// [`Error::UnknownPlugin`], [`Error::DuplicatePlugin`], or the constructor's error.
    pub fn codec(&self, name: &str) -> Result<Arc<dyn Compression>> {
        if let Some(codec) = self.codec_cache.lock().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Ok(codec.clone());
        }
        let codec = self.build_codec(name, &PluginConfig::default())?;
        self.codec_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), codec.clone());
        Ok(codec)
    }

    /// The codec registered as `name`, built with `config`.
    ///
    /// # Errors
    /// As [`Registry::codec`].
    pub fn build_codec(&self, name: &str, config: &PluginConfig) -> Result<Arc<dyn Compression>> {
        (Self::find(self.all(|e| &e.codecs), name)?.build)(config)
    }

    /// The reducer registered as `name`, built with `config`.
    ///
    /// # Errors
    /// [`Error::UnknownPlugin`], [`Error::DuplicatePlugin`], or the constructor's error.
    pub fn reducer(&self, name: &str, config: &PluginConfig) -> Result<Arc<dyn Reducer>> {
        (Self::find(self.all(|e| &e.reducers), name)?.build)(config)
    }

    /// The transport registered for `scheme`, built with `config`.
    ///
    /// # Errors
    /// [`Error::UnknownPlugin`], [`Error::DuplicatePlugin`], or the constructor's error.
    pub async fn transport(&self, scheme: &str, config: PluginConfig) -> Result<Arc<dyn Transport>> {
        let record = Self::find(self.all(|e| &e.transports), scheme)?;
        (record.build)(config).await
    }

    /// The transport whose scheme `endpoint` names (`grpc://...` selects `grpc`).
    ///
    /// # Errors
    /// As [`Registry::transport`], or [`Error::Config`] for an endpoint without a scheme.
    pub async fn transport_for_endpoint(
        &self,
        endpoint: &str,
        config: PluginConfig,
    ) -> Result<Arc<dyn Transport>> {
        let (scheme, _) = split_endpoint(endpoint)?;
        self.transport(scheme, config).await
    }

    /// The DHT registered as `name`, started with `config`.
    ///
    /// # Errors
    /// [`Error::UnknownPlugin`], [`Error::DuplicatePlugin`], or the constructor's error.
    pub async fn dht(&self, name: &str, config: PluginConfig) -> Result<Arc<dyn Dht>> {
        let record = Self::find(self.all(|e| &e.dhts), name)?;
        (record.build)(config).await
    }

    /// The codec a wire tensor names: `codec` when set, else the `compression` enum's built-in codec.
    ///
    /// # Errors
    /// [`Error::UnknownPlugin`] when this process lacks the codec, [`Error::Codec`] for an unknown
    /// enum id.
    pub fn codec_for(&self, message: &WireTensor) -> Result<Arc<dyn Compression>> {
        if !message.codec.is_empty() {
            return self.codec(&message.codec);
        }
        let wire = averager_proto::CompressionType::try_from(message.compression)
            .map_err(|_| Error::codec("?", format!("unknown compression id {}", message.compression)))?;
        self.codec(builtin_codec_name(wire))
    }

    /// Decodes a wire tensor with the codec it names (see [`Registry::codec_for`]).
    ///
    /// # Errors
    /// As [`Registry::codec_for`], or the codec's decoding error.
    pub fn decode(&self, message: &WireTensor) -> Result<Tensor> {
        self.codec_for(message)?.extract(message)
    }
}

fn duplicate<R: Record>(first: &R, second: &R) -> Error {
    let describe = |r: &R| {
        let i = r.info();
        format!("{} ({})", i.origin, i.description)
    };
    Error::DuplicatePlugin {
        kind: R::KIND,
        name: first.info().name.to_string(),
        first: describe(first),
        second: describe(second),
    }
}

/// Registers a codec: `register_codec!("name", "description", constructor)`, where the
/// constructor is a `fn(&PluginConfig) -> Result<Arc<dyn Compression>>` (a non-capturing closure
/// works).
#[macro_export]
macro_rules! register_codec {
    ($name:expr, $description:expr, $build:expr $(,)?) => {
        $crate::registry::inventory::submit! {
            $crate::registry::CodecPlugin::new($name, $description, ::core::module_path!(), $build)
        }
    };
}

/// Registers a reducer: `register_reducer!("name", "description", constructor)`.
#[macro_export]
macro_rules! register_reducer {
    ($name:expr, $description:expr, $build:expr $(,)?) => {
        $crate::registry::inventory::submit! {
            $crate::registry::ReducerPlugin::new($name, $description, ::core::module_path!(), $build)
        }
    };
}

/// Registers a transport under its endpoint scheme: `register_transport!("scheme", "description",
/// constructor)`, where the constructor returns a [`PluginFuture`].
#[macro_export]
macro_rules! register_transport {
    ($scheme:expr, $description:expr, $build:expr $(,)?) => {
        $crate::registry::inventory::submit! {
            $crate::registry::TransportPlugin::new($scheme, $description, ::core::module_path!(), $build)
        }
    };
}

/// Registers a DHT: `register_dht!("name", "description", constructor)`.
#[macro_export]
macro_rules! register_dht {
    ($name:expr, $description:expr, $build:expr $(,)?) => {
        $crate::registry::inventory::submit! {
            $crate::registry::DhtPlugin::new($name, $description, ::core::module_path!(), $build)
        }
    };
}

#[cfg(test)]
mod tests;
