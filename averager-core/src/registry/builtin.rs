//! The core's own in-process plugins, registered like any backend's.

use std::sync::Arc;

use crate::compression::NoCompression;
use crate::dht::MemoryDht;
use crate::reduce::MeanReducer;
use crate::transport::{MemoryNetwork, MemoryTransport};

crate::register_codec!(
    NoCompression::NAME,
    "no compression: raw little-endian element bytes (protocol 7.2 NONE)",
    |_| Ok(Arc::new(NoCompression))
);

crate::register_reducer!(
    MeanReducer::NAME,
    "weighted mean, accumulated in f64 as parts arrive (protocol 4.6)",
    |_| Ok(Arc::new(MeanReducer))
);

crate::register_transport!(
    MemoryTransport::SCHEME,
    "in-process transport: peers in one process reach each other at mem://<name>",
    |config| Box::pin(async move {
        let settings = config.parse()?;
        Ok(Arc::new(MemoryTransport::with_settings(MemoryNetwork::global(), settings))
            as Arc<dyn crate::Transport>)
    })
);

crate::register_dht!(
    MemoryDht::NAME,
    "in-process DHT: one shared table, full protocol 2.3 semantics",
    |config| Box::pin(async move {
        let settings = config.parse()?;
        Ok(Arc::new(MemoryDht::with_settings(settings)) as Arc<dyn crate::Dht>)
    })
);
