//! The four record types that plugin crates submit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::PluginConfig;
use crate::compression::Compression;
use crate::dht::Dht;
use crate::error::Result;
use crate::reduce::Reducer;
use crate::transport::Transport;

/// What an asynchronous plugin constructor returns.
pub type PluginFuture<T> = Pin<Box<dyn Future<Output = Result<Arc<T>>> + Send + 'static>>;

macro_rules! record {
    ($(#[$doc:meta])* $name:ident, $build:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name {
            /// The name it is looked up by (for transports: the endpoint scheme).
            pub name: &'static str,
            /// One line on what it is.
            pub description: &'static str,
            /// The module that registered it (`module_path!()`, filled in by the macro).
            pub origin: &'static str,
            /// Builds an instance from a configuration value.
            pub build: $build,
        }

        impl $name {
            /// A record; the `register_*!` macros call this with `origin = module_path!()`.
            pub const fn new(
                name: &'static str,
                description: &'static str,
                origin: &'static str,
                build: $build,
            ) -> Self {
                $name { name, description, origin, build }
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("name", &self.name)
                    .field("origin", &self.origin)
                    .finish_non_exhaustive()
            }
        }

        inventory::collect!($name);
    };
}

record!(
    /// A codec plugin.
    CodecPlugin,
    fn(&PluginConfig) -> Result<Arc<dyn Compression>>
);
record!(
    /// A reducer plugin.
    ReducerPlugin,
    fn(&PluginConfig) -> Result<Arc<dyn Reducer>>
);
record!(
    /// A transport plugin, named by the endpoint scheme it serves.
    TransportPlugin,
    fn(PluginConfig) -> PluginFuture<dyn Transport>
);
record!(
    /// A DHT plugin.
    DhtPlugin,
    fn(PluginConfig) -> PluginFuture<dyn Dht>
);
