//! protocol 0: the `zstd+<inner>` wrappers: one zstd frame holding the inner codec's buffer.

use std::cell::RefCell;
use std::sync::Arc;

use ::zstd::bulk::{Compressor, Decompressor};
use ::zstd::zstd_safe;
use averager_core::averager::CodecSpec;
use averager_core::compression::{BytesMut, Compression};
use averager_core::registry::PluginConfig;
use averager_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::{Framing, Wrapped, register_wrappers, wrapper_compression};

/// The most a zstd frame expands: every block holds at most 128 KiB and takes at least 4 bytes
/// (a 3-byte header and one byte of content, as in an RLE block).
const MAX_EXPANSION: usize = 128 * 1024 / 4;

thread_local! {
    /// Contexts are reused per thread: creating one allocates several hundred KiB, more than
    /// compressing a small part costs.
    static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Settings of the `zstd` registry names: `{ "inner": "<codec>" | { name, settings }, "level": 3 }`.
///
/// Under `zstd+<inner>` the inner codec is fixed and `inner` may only repeat it; under the plain
/// `zstd` it chooses the inner codec (NONE when absent), which may be a configured selector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZstdSettings {
    /// The inner codec by registry name, optionally with its settings.
    pub inner: Option<CodecSpec>,
    /// zstd's compression level; [`Zstd::DEFAULT_LEVEL`] when absent.
    pub level: Option<i32>,
}

#[derive(Debug)]
struct ZstdFrame {
    level: i32,
}

impl Framing for ZstdFrame {
    const PREFIX: &'static str = "zstd";

    fn compress(&self, data: &[u8]) -> Result<Vec<u8>> {
        COMPRESSOR.with_borrow_mut(|slot| {
            let compressor = match slot {
                Some(c) => c,
                None => slot.insert(Compressor::new(self.level).map_err(zstd_error)?),
            };
            compressor.set_compression_level(self.level).map_err(zstd_error)?;
            // A one-shot compression records the content size in the frame header, which the
            // decoder requires.
            compressor.compress(data).map_err(zstd_error)
        })
    }

    fn decompress(&self, data: &[u8], cap: usize) -> Result<Vec<u8>> {
        let size = declared_size(data, cap)?;
        let mut out = Vec::with_capacity(size);
        let written = with_decompressor(|d| d.decompress_to_buffer(data, &mut out))?;
        check_written(size, written)?;
        Ok(out)
    }

    fn compress_into(&self, data: &[u8], out: &mut BytesMut) -> Result<()> {
        let start = out.len();
        out.resize(start + zstd_safe::compress_bound(data.len()), 0);
        let written = COMPRESSOR.with_borrow_mut(|slot| {
            let compressor = match slot {
                Some(c) => c,
                None => slot.insert(Compressor::new(self.level).map_err(zstd_error)?),
            };
            compressor.set_compression_level(self.level).map_err(zstd_error)?;
            compressor.compress_to_buffer(data, &mut out[start..]).map_err(zstd_error)
        });
        // On an error too: `out` keeps what it held.
        out.truncate(start + written.as_ref().copied().unwrap_or(0));
        written.map(|_| ())
    }

    fn decompress_into(&self, data: &[u8], cap: usize, out: &mut BytesMut) -> Result<()> {
        let size = declared_size(data, cap)?;
        out.clear();
        out.resize(size, 0);
        // The slice's length bounds the output: a frame that holds more is an error.
        let written = with_decompressor(|d| d.decompress_to_buffer(data, &mut out[..]))?;
        check_written(size, written)
    }
}

/// The content size `data` declares after checking that it is one whole frame and that the size
/// is within `cap` and what its bytes can expand to, before anything is allocated.
fn declared_size(data: &[u8], cap: usize) -> Result<usize> {
    let declared = match zstd_safe::get_frame_content_size(data) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(zstd_codec_error("the zstd frame does not declare its content size")),
        Err(_) => return Err(zstd_codec_error("the buffer is not a zstd frame")),
    };
    let frame_len = zstd_safe::find_frame_compressed_size(data)
        .map_err(|_| zstd_codec_error("the zstd frame is truncated or malformed"))?;
    if frame_len != data.len() {
        return Err(zstd_codec_error(format!(
            "{} bytes follow the {frame_len}-byte zstd frame",
            data.len().saturating_sub(frame_len)
        )));
    }
    let limit = cap.min(data.len().saturating_mul(MAX_EXPANSION));
    usize::try_from(declared).ok().filter(|&s| s <= limit).ok_or_else(|| {
        zstd_codec_error(format!(
            "the zstd frame declares {declared} bytes; at most {limit} are possible for this message"
        ))
    })
}

/// Runs `f` with this thread's decompression context.
fn with_decompressor(f: impl FnOnce(&mut Decompressor<'static>) -> std::io::Result<usize>) -> Result<usize> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(d) => d,
            None => slot.insert(Decompressor::new().map_err(zstd_error)?),
        };
        f(decompressor).map_err(zstd_error)
    })
}

fn check_written(size: usize, written: usize) -> Result<()> {
    if written == size {
        Ok(())
    } else {
        Err(zstd_codec_error(format!("the zstd frame declares {size} bytes but holds {written}")))
    }
}

fn zstd_codec_error(reason: impl Into<String>) -> Error {
    Error::codec("zstd", reason)
}

fn zstd_error(e: std::io::Error) -> Error {
    zstd_codec_error(e.to_string())
}

/// An inner codec whose buffer is compressed with zstd; the wire name is `zstd+<inner>`.
///
/// Lossless on top of the inner codec: the error bound, accepted dtypes, capabilities and ratio
/// estimate are the inner codec's. Decoding refuses frames without a declared content size, with
/// trailing bytes, or declaring more than [`decoded_cap`](super::decoded_cap) of the message (or
/// more than the compressed bytes can expand to), before allocating.
#[derive(Debug)]
pub struct Zstd(Wrapped<ZstdFrame>);

impl Zstd {
    /// zstd's default level, used when the settings name none.
    pub const DEFAULT_LEVEL: i32 = ::zstd::DEFAULT_COMPRESSION_LEVEL;

    /// Wraps `inner`, compressing at `level` (zstd's range, negative levels for speed).
    ///
    /// # Errors
    /// [`Error::Config`] for a level outside zstd's range.
    pub fn new(inner: Arc<dyn Compression>, level: i32) -> Result<Self> {
        Ok(Zstd(Wrapped::new(inner, ZstdFrame { level: checked_level(level)? })))
    }

    /// The inner codec.
    pub fn inner(&self) -> &Arc<dyn Compression> {
        &self.0.inner
    }

    /// The compression level.
    pub fn level(&self) -> i32 {
        self.0.framing.level
    }

    /// The constructor of the registry names: `zstd+<inner>` when `inner` is given, else the
    /// plain `zstd`.
    fn build(inner: Option<&str>, config: &PluginConfig) -> Result<Arc<dyn Compression>> {
        let settings: ZstdSettings = config.parse()?;
        let framing = ZstdFrame { level: checked_level(settings.level.unwrap_or(Self::DEFAULT_LEVEL))? };
        let wrapped = match inner {
            Some(name) => Wrapped::concrete(name, settings.inner.as_ref(), framing)?,
            None => Wrapped::plain(settings.inner.as_ref(), framing)?,
        };
        Ok(Arc::new(Zstd(wrapped)))
    }
}

fn checked_level(level: i32) -> Result<i32> {
    let range = ::zstd::compression_level_range();
    if range.contains(&level) {
        Ok(level)
    } else {
        Err(Error::Config(format!("zstd level {level} is outside {}..={}", range.start(), range.end())))
    }
}

wrapper_compression!(Zstd);

register_wrappers!("zstd", "zstd-compressed buffer of an inner codec", Zstd::build);

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use averager_core::compression::{CompressionInfo, CompressionType, NoCompression, WireTensor};
    use averager_core::registry::Registry;
    use averager_core::tensor::{DType, Tensor};

    use super::*;
    use crate::{Float16, Uniform8Bit};

    fn f32_tensor(n: usize) -> Tensor {
        Tensor::from_f32(vec![n], (0..n).map(|i| (i % 17) as f32 * 0.25).collect()).unwrap()
    }

    fn encode(codec: &dyn Compression, t: &Tensor) -> WireTensor {
        codec.compress(&t.view(), &CompressionInfo::for_tensor(0, &t.view())).unwrap()
    }

    /// A zstd frame header (magic, then a descriptor with an 8-byte content size) declaring
    /// `size` bytes, followed by one empty last raw block.
    fn frame_declaring(size: u64) -> Vec<u8> {
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        frame.extend_from_slice(&size.to_le_bytes());
        frame.extend_from_slice(&[0x01, 0x00, 0x00]);
        frame
    }

    #[test]
    fn the_wire_names_zstd_plus_the_inner_codec_and_the_enum_is_none() {
        let t = f32_tensor(1000).with_requires_grad(true);
        for (inner, name) in [
            (Arc::new(NoCompression) as Arc<dyn Compression>, "zstd+none"),
            (Arc::new(Float16), "zstd+float16"),
            (Arc::new(Uniform8Bit), "zstd+uniform8"),
        ] {
            let codec = Zstd::new(inner.clone(), 3).unwrap();
            assert_eq!(codec.name(), name);
            let wire = encode(&codec, &t);
            assert_eq!((wire.codec.as_str(), wire.compression), (name, CompressionType::None as i32));
            assert_eq!(
                (wire.size.clone(), wire.dtype.as_str(), wire.requires_grad),
                (vec![1000], "float32", true)
            );
            assert!(wire.buffer.len() < encode(&*inner, &t).buffer.len(), "{name} did not shrink");
            assert_eq!(
                Registry::global().decode(&wire).unwrap(),
                inner.extract(&encode(&*inner, &t)).unwrap()
            );
        }
    }

    #[test]
    fn frames_declare_their_content_size() {
        for data in [&b""[..], b"x", &[7u8; 100_000]] {
            let frame = ZstdFrame { level: 3 }.compress(data).unwrap();
            assert_eq!(zstd_safe::get_frame_content_size(&frame).unwrap(), Some(data.len() as u64));
            assert_eq!(ZstdFrame { level: 3 }.decompress(&frame, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn a_frame_declaring_gigabytes_is_refused_quickly() {
        let wire = encode(&Zstd::new(Arc::new(NoCompression), 3).unwrap(), &f32_tensor(4));
        for declared in [4u64 << 30, 1 << 30, u64::MAX, 100_000] {
            for size in [vec![4], vec![u32::MAX]] {
                let forged = WireTensor {
                    buffer: frame_declaring(declared).into(),
                    size: size.clone(),
                    ..wire.clone()
                };
                let started = Instant::now();
                let result = Registry::global().decode(&forged);
                assert!(matches!(result, Err(Error::Codec { .. })), "{declared} as {size:?}: {result:?}");
                assert!(
                    started.elapsed() < Duration::from_millis(200),
                    "{declared}: took {:?}",
                    started.elapsed()
                );
            }
        }
    }

    #[test]
    fn frames_without_a_declared_size_or_with_trailing_bytes_are_refused() {
        // Streaming compression without a pledged size leaves the content size out.
        let mut streamed = Vec::new();
        {
            let mut encoder = ::zstd::stream::write::Encoder::new(&mut streamed, 3).unwrap();
            std::io::Write::write_all(&mut encoder, &[0u8; 16]).unwrap();
            encoder.finish().unwrap();
        }
        assert_eq!(zstd_safe::get_frame_content_size(&streamed).unwrap(), None);
        let frame = ZstdFrame { level: 3 };
        assert!(frame.decompress(&streamed, 1 << 20).is_err());

        let mut trailing = frame.compress(&[0u8; 16]).unwrap();
        trailing.push(0);
        assert!(frame.decompress(&trailing, 1 << 20).is_err());
        let two_frames = [frame.compress(&[1u8; 8]).unwrap(), frame.compress(&[2u8; 8]).unwrap()].concat();
        assert!(frame.decompress(&two_frames, 1 << 20).is_err());
        assert!(frame.decompress(&[], 1 << 20).is_err());
    }

    #[test]
    fn the_declared_size_must_fit_the_declared_shape() {
        let codec = Zstd::new(Arc::new(NoCompression), 3).unwrap();
        let wire = encode(&codec, &f32_tensor(1000));
        // 1000 float32 values cannot come from a message that declares a single element.
        let forged = WireTensor {
            buffer: ZstdFrame { level: 1 }.compress(&vec![0u8; 200_000]).unwrap().into(),
            ..wire
        };
        assert!(codec.extract(&WireTensor { size: vec![1], ..forged.clone() }).is_err());
        assert!(codec.extract(&WireTensor { size: vec![50_000], ..forged }).is_ok());
    }

    #[test]
    fn registry_names_build_with_settings() {
        let r = Registry::global();
        let config = |v| PluginConfig::new(v);
        let c = r.build_codec("zstd+uniform8", &config(serde_json::json!({ "level": 9 }))).unwrap();
        assert_eq!(c.name(), "zstd+uniform8");
        let plain =
            r.build_codec("zstd", &config(serde_json::json!({ "inner": "float16", "level": -3 }))).unwrap();
        assert_eq!(plain.name(), "zstd");
        let wire = encode(&*plain, &f32_tensor(10));
        assert_eq!(wire.codec, "zstd+float16");
        assert_eq!(r.decode(&wire).unwrap(), Float16.extract(&encode(&Float16, &f32_tensor(10))).unwrap());
        assert_eq!(r.codec("zstd").unwrap().name(), "zstd");

        for (name, bad) in [
            ("zstd+uniform8", serde_json::json!({ "inner": "float16" })),
            ("zstd", serde_json::json!({ "level": 1000 })),
            ("zstd", serde_json::json!({ "levle": 3 })),
        ] {
            assert!(matches!(r.build_codec(name, &config(bad.clone())), Err(Error::Config(_))), "{bad}");
        }
        assert!(matches!(
            r.build_codec("zstd", &config(serde_json::json!({ "inner": "no-such-codec" }))),
            Err(Error::UnknownPlugin { .. })
        ));
        assert!(Zstd::new(Arc::new(NoCompression), i32::MAX).is_err());
    }

    #[test]
    fn a_plain_wrapper_around_a_selector_names_the_chosen_codec() {
        let settings = serde_json::json!({
            "inner": { "name": "size-adaptive", "settings": { "threshold": 100, "less": "none", "greater_equal": "float16" } }
        });
        let codec = Registry::global().build_codec("zstd", &PluginConfig::new(settings)).unwrap();
        for (n, name) in [(10, "zstd+none"), (1000, "zstd+float16")] {
            let t = f32_tensor(n);
            let wire = encode(&*codec, &t);
            assert_eq!(wire.codec, name);
            let back = Registry::global().decode(&wire).unwrap();
            assert_eq!(codec.extract(&wire).unwrap(), back);
            assert_eq!(back.shape(), t.shape());
            assert_eq!(back.dtype(), DType::F32);
        }
    }
}
