//! The compression conformance suite on every codec of this crate.

use std::sync::Arc;

use averager_compression::{Float16, Uniform8Bit};
use averager_core::compression::Compression;

averager_conformance::compression_suite!(float16, || Arc::new(Float16) as Arc<dyn Compression>);
averager_conformance::compression_suite!(uniform8, || Arc::new(Uniform8Bit) as Arc<dyn Compression>);
