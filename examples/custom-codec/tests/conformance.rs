//! The whole compression conformance suite on this crate's codec: one line.

use std::sync::Arc;

use acme_codecs::AcmeInt8;
use averager::Compression;

averager_conformance::compression_suite!(acme_int8, || Arc::new(AcmeInt8) as Arc<dyn Compression>, lacks: [lossless]);
