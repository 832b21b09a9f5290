//! The compression conformance suite on every codec of this crate.

use std::sync::Arc;

use averager_compression::{Blockwise8Bit, Float16, MeanStd16Bit, Quantile8Bit, Uniform8Bit};
use averager_core::compression::Compression;

averager_conformance::compression_suite!(float16, || Arc::new(Float16) as Arc<dyn Compression>);
averager_conformance::compression_suite!(uniform8, || Arc::new(Uniform8Bit) as Arc<dyn Compression>);
averager_conformance::compression_suite!(meanstd16, || Arc::new(MeanStd16Bit) as Arc<dyn Compression>);
averager_conformance::compression_suite!(quantile8, || Arc::new(Quantile8Bit) as Arc<dyn Compression>);
averager_conformance::compression_suite!(blockwise8, || Arc::new(Blockwise8Bit) as Arc<dyn Compression>);
