//! protocol 0: the `lz4+<inner>` wrappers: the inner codec's buffer as one LZ4 block, after its
//! decompressed size (4 bytes, little-endian), as `lz4_flex::compress_prepend_size` writes it.

use std::sync::Arc;

use averager_core::averager::CodecSpec;
use averager_core::compression::{BytesMut, Compression};
use averager_core::registry::PluginConfig;
use averager_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::{Framing, Wrapped, register_wrappers, wrapper_compression};

/// The most an LZ4 block expands: a match of length `L` costs about `L / 255` bytes of length
/// extension, so each input byte yields at most 255 output bytes (plus a few for the last token).
const MAX_EXPANSION: usize = 255;

/// Slack for the shortest blocks, whose fixed costs dominate.
const EXPANSION_SLACK: usize = 64;

/// Settings of the `lz4` registry names: `{ "inner": "<codec>" | { name, settings } }`.
///
/// Under `lz4+<inner>` the inner codec is fixed and `inner` may only repeat it; under the plain
/// `lz4` it chooses the inner codec (NONE when absent), which may be a configured selector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lz4Settings {
    /// The inner codec by registry name, optionally with its settings.
    pub inner: Option<CodecSpec>,
}

#[derive(Debug)]
struct Lz4Block;

impl Framing for Lz4Block {
    const PREFIX: &'static str = "lz4";

    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        if u32::try_from(data.len()).is_err() {
            return Err(lz4_error(format!("{} bytes exceed LZ4's 4-byte size prefix", data.len())));
        }
        Ok(lz4_flex::block::compress_prepend_size(data))
    }

    /// Reads the size prefix itself: `lz4_flex::decompress_size_prepended` would allocate
    /// whatever the prefix claims (4 GiB for a 4-byte input).
    fn decompress(&self, data: &[u8], cap: usize) -> Result<Vec<u8>> {
        let (size, block) = declared_size(data, cap)?;
        let mut out = vec![0u8; size];
        decompress_block(block, &mut out)?;
        Ok(out)
    }

    fn compress_into(&self, data: &[u8], out: &mut BytesMut) -> Result<()> {
        let Ok(size) = u32::try_from(data.len()) else {
            return Err(lz4_error(format!("{} bytes exceed LZ4's 4-byte size prefix", data.len())));
        };
        let start = out.len();
        out.resize(start + 4 + lz4_flex::block::get_maximum_output_size(data.len()), 0);
        out[start..start + 4].copy_from_slice(&size.to_le_bytes());
        let written = lz4_flex::block::compress_into(data, &mut out[start + 4..]);
        // On an error too: `out` keeps what it held.
        out.truncate(start + written.as_ref().map_or(0, |w| 4 + w));
        written.map(|_| ()).map_err(|e| lz4_error(e.to_string()))
    }

    fn decompress_into(&self, data: &[u8], cap: usize, out: &mut BytesMut) -> Result<()> {
        let (size, block) = declared_size(data, cap)?;
        out.clear();
        out.resize(size, 0);
        decompress_block(block, out)
    }
}

/// The size prefix of `data`, checked against `cap` and what the block can expand to before
/// anything is allocated, and the block after it.
fn declared_size(data: &[u8], cap: usize) -> Result<(usize, &[u8])> {
    let Some((prefix, block)) = data.split_first_chunk::<4>() else {
        return Err(lz4_error(format!("{} bytes hold no 4-byte size prefix", data.len())));
    };
    let declared = u32::from_le_bytes(*prefix);
    let limit = cap.min(block.len().saturating_mul(MAX_EXPANSION).saturating_add(EXPANSION_SLACK));
    let size = usize::try_from(declared).ok().filter(|&s| s <= limit).ok_or_else(|| {
        lz4_error(format!(
            "the block declares {declared} bytes; at most {limit} are possible for this message"
        ))
    })?;
    Ok((size, block))
}

/// Decompresses `block` into all of `out`, refusing a block that holds another length.
fn decompress_block(block: &[u8], out: &mut [u8]) -> Result<()> {
    let size = out.len();
    let written = lz4_flex::block::decompress_into(block, out).map_err(|e| lz4_error(e.to_string()))?;
    if written != size {
        return Err(lz4_error(format!("the block declares {size} bytes but holds {written}")));
    }
    Ok(())
}

fn lz4_error(reason: impl Into<String>) -> Error {
    Error::codec("lz4", reason)
}

/// An inner codec whose buffer is compressed with LZ4 (block format, size-prefixed); the wire
/// name is `lz4+<inner>`.
///
/// Lossless on top of the inner codec: the error bound, accepted dtypes, capabilities and ratio
/// estimate are the inner codec's. Faster than [`Zstd`](crate::Zstd) and compresses less. Decoding
/// refuses a size prefix above [`decoded_cap`](super::decoded_cap) of the message (or above what
/// the block can expand to) before allocating, and blocks that decode to another length.
#[derive(Debug)]
pub struct Lz4(Wrapped<Lz4Block>);

impl Lz4 {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Compression>) -> Self {
        Lz4(Wrapped::new(inner, Lz4Block))
    }

    /// The inner codec.
    pub fn inner(&self) -> &Arc<dyn Compression> {
        &self.0.inner
    }

    /// The constructor of the registry names: `lz4+<inner>` when `inner` is given, else the
    /// plain `lz4`.
    fn build(inner: Option<&str>, config: &PluginConfig) -> Result<Arc<dyn Compression>> {
        let settings: Lz4Settings = config.parse()?;
        let wrapped = match inner {
            Some(name) => Wrapped::concrete(name, settings.inner.as_ref(), Lz4Block)?,
            None => Wrapped::plain(settings.inner.as_ref(), Lz4Block)?,
        };
        Ok(Arc::new(Lz4(wrapped)))
    }
}

wrapper_compression!(Lz4);

register_wrappers!("lz4", "LZ4-compressed buffer of an inner codec", Lz4::build);

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use averager_core::compression::{CompressionInfo, CompressionType, NoCompression, WireTensor};
    use averager_core::registry::Registry;
    use averager_core::tensor::Tensor;

    use super::*;
    use crate::Float16;

    fn f32_tensor(n: usize) -> Tensor {
        Tensor::from_f32(vec![n], (0..n).map(|i| (i % 17) as f32 * 0.25).collect()).unwrap()
    }

    fn encode(codec: &dyn Compression, t: &Tensor) -> WireTensor {
        codec.compress(&t.view(), &CompressionInfo::for_tensor(0, &t.view())).unwrap()
    }

    #[test]
    fn the_wire_names_lz4_plus_the_inner_codec_and_the_enum_is_none() {
        let t = f32_tensor(1000);
        for (inner, name) in [
            (Arc::new(NoCompression) as Arc<dyn Compression>, "lz4+none"),
            (Arc::new(Float16), "lz4+float16"),
        ] {
            let codec = Lz4::new(inner.clone());
            assert_eq!(codec.name(), name);
            let wire = encode(&codec, &t);
            assert_eq!((wire.codec.as_str(), wire.compression), (name, CompressionType::None as i32));
            assert!(wire.buffer.len() < encode(&*inner, &t).buffer.len(), "{name} did not shrink");
            assert_eq!(
                Registry::global().decode(&wire).unwrap(),
                inner.extract(&encode(&*inner, &t)).unwrap()
            );
        }
    }

    #[test]
    fn a_size_prefix_claiming_gigabytes_is_refused_without_allocating() {
        let wire = encode(&Lz4::new(Arc::new(NoCompression)), &f32_tensor(4));
        for buffer in [
            u32::MAX.to_le_bytes().to_vec(),
            [u32::MAX.to_le_bytes().as_slice(), &[0xf0, 0xff, 0xff, 0xff]].concat(),
            (1u32 << 30).to_le_bytes().to_vec(),
        ] {
            for size in [vec![4], vec![u32::MAX]] {
                let forged = WireTensor { buffer: buffer.clone().into(), size: size.clone(), ..wire.clone() };
                let started = Instant::now();
                let result = Registry::global().decode(&forged);
                assert!(matches!(result, Err(Error::Codec { .. })), "{buffer:?} as {size:?}: {result:?}");
                assert!(started.elapsed() < Duration::from_millis(200), "took {:?}", started.elapsed());
            }
        }
    }

    #[test]
    fn short_and_mismatched_blocks_are_errors() {
        let block = Lz4Block;
        for bad in [&[][..], &[1, 0], &[1, 0, 0]] {
            assert!(block.decompress(bad, 1 << 20).is_err(), "{bad:?}");
        }
        let mut valid = block.compress(&[5u8; 1000]).unwrap();
        assert_eq!(block.decompress(&valid, 1000).unwrap(), vec![5u8; 1000]);
        assert!(block.decompress(&valid, 999).is_err());
        // A prefix larger than the block's content: the decoded length differs.
        valid[..4].copy_from_slice(&1001u32.to_le_bytes());
        assert!(block.decompress(&valid, 1 << 20).is_err());
        valid[..4].copy_from_slice(&999u32.to_le_bytes());
        assert!(block.decompress(&valid, 1 << 20).is_err());
        assert_eq!(block.decompress(&block.compress(&[]).unwrap(), 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn registry_names_build_with_settings() {
        let r = Registry::global();
        let plain =
            r.build_codec("lz4", &PluginConfig::new(serde_json::json!({ "inner": "float16" }))).unwrap();
        assert_eq!(plain.name(), "lz4");
        assert_eq!(encode(&*plain, &f32_tensor(3)).codec, "lz4+float16");
        assert_eq!(r.codec("lz4+float16").unwrap().name(), "lz4+float16");
        assert!(matches!(
            r.build_codec("lz4", &PluginConfig::new(serde_json::json!({ "level": 3 }))),
            Err(Error::Config(_))
        ));
    }
}
