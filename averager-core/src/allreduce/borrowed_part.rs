//! protocol 7.2 NONE, sent without a copy: an uncompressed float32 part's message whose buffer
//! is the tensor's own memory.
//!
//! The identity codec's buffer is the part's little-endian bytes, which on a little-endian machine
//! are already in the tensor. So instead of copying them into a fresh buffer (a pass over the
//! part, and for large tensors a page fault for every 4 KiB of that buffer), the message's
//! [`Bytes`] keeps the round's tensors alive and points into them; the transport writes from
//! there.
//!
//! While such a message lives the tensors are shared, so at the round's end the averager waits
//! for it to be dropped before it takes its own tensors back (at most `OWNED_RECLAIM_LIMIT`, then
//! it copies them) or writes into lent ones (`averager/round_end.rs`). A transport holds a part
//! after its reducer answered only briefly: its task wrote the last bytes and was preempted before
//! it dropped the part (or the reducer failed while the part was still queued).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::round_tensors::RoundTensors;
use crate::compression::{Compression, NoCompression, WireTensor, wire_header};
use crate::tensor::TensorSlice;

/// A float32 range of one of the round's tensors, as the bytes of a NONE message.
struct PartBytes {
    tensors: Arc<RoundTensors>,
    tensor: usize,
    range: Range<usize>,
}

impl AsRef<[u8]> for PartBytes {
    fn as_ref(&self) -> &[u8] {
        // `borrowed_part` checked the tensor, dtype and range before building this.
        match self.tensors.get(self.tensor).map(|view| view.data()) {
            Some(TensorSlice::F32(values)) => {
                values.get(self.range.clone()).map_or(&[], bytemuck::cast_slice)
            }
            _ => &[],
        }
    }
}

/// The message `codec` would encode for `range` of tensor `tensor` (the identity codec's message
/// does not depend on the part's [`CompressionInfo`](crate::compression::CompressionInfo)), without a copy, when `codec`
/// is the identity codec, the tensor is float32 and this machine is little-endian; `None`
/// otherwise (and for a range outside the tensor), for the caller to encode as usual.
pub(crate) fn borrowed_part(
    codec: &dyn Compression,
    tensors: &Arc<RoundTensors>,
    tensor: usize,
    range: Range<usize>,
) -> Option<WireTensor> {
    let plain = codec.name() == NoCompression::NAME && !codec.delegates();
    if !plain || cfg!(target_endian = "big") {
        return None;
    }
    let TensorSlice::F32(values) = tensors.get(tensor)?.data() else {
        return None;
    };
    values.get(range.clone())?;
    let view = tensors.flat_view(tensor, range.clone()).ok()?;
    let mut message = wire_header(&view, view.dtype(), codec.wire_type(), NoCompression::NAME);
    message.buffer = Bytes::from_owner(PartBytes { tensors: Arc::clone(tensors), tensor, range });
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::CompressionInfo;
    use crate::tensor::{DType, Tensor, TensorData};

    fn tensors() -> Arc<RoundTensors> {
        let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.25 - 7.0).collect();
        let halves: Vec<half::f16> = (0..10).map(|i| half::f16::from_f32(i as f32)).collect();
        Arc::new(RoundTensors::Owned(vec![
            Tensor::new(vec![10, 100], TensorData::F32(values)).unwrap(),
            Tensor::new(vec![10], TensorData::F16(halves)).unwrap(),
        ]))
    }

    #[test]
    fn a_borrowed_part_is_the_message_the_identity_codec_encodes() {
        let tensors = tensors();
        let info = CompressionInfo::default();
        for range in [0..1000, 100..350, 999..1000, 5..5] {
            let borrowed = borrowed_part(&NoCompression, &tensors, 0, range.clone()).unwrap();
            let view = tensors.flat_view(0, range).unwrap();
            let encoded = NoCompression.compress(&view, &info).unwrap();
            assert_eq!(borrowed, encoded);
        }
    }

    #[test]
    fn the_tensors_stay_shared_while_a_borrowed_part_lives() {
        let tensors = tensors();
        let part = borrowed_part(&NoCompression, &tensors, 0, 0..10).unwrap();
        assert_eq!(Arc::strong_count(&tensors), 2);
        drop(part);
        assert_eq!(Arc::strong_count(&tensors), 1);
    }

    #[test]
    fn other_codecs_dtypes_and_ranges_are_encoded_as_usual() {
        let tensors = tensors();
        assert_eq!(tensors.view(1).unwrap().dtype(), DType::F16);
        assert!(borrowed_part(&NoCompression, &tensors, 1, 0..10).is_none());
        assert!(borrowed_part(&NoCompression, &tensors, 0, 990..1001).is_none());
        assert!(borrowed_part(&NoCompression, &tensors, 2, 0..1).is_none());
        assert!(borrowed_part(&Renamed, &tensors, 0, 0..10).is_none());
    }

    /// The identity codec under another name: a codec the receiver decodes by that name.
    #[derive(Debug)]
    struct Renamed;

    impl Compression for Renamed {
        fn name(&self) -> &str {
            "none-like"
        }
        fn accepts(&self, dtype: DType, ndim: usize) -> bool {
            NoCompression.accepts(dtype, ndim)
        }
        fn compress(
            &self,
            tensor: &crate::tensor::TensorView<'_>,
            info: &CompressionInfo,
        ) -> crate::Result<WireTensor> {
            NoCompression.compress(tensor, info)
        }
        fn extract(&self, message: &WireTensor) -> crate::Result<Tensor> {
            NoCompression.extract(message)
        }
        fn estimate_compression_ratio(&self, _: &CompressionInfo) -> f64 {
            1.0
        }
        fn error_bound(&self, dtype: DType) -> crate::compression::ErrorBound {
            NoCompression.error_bound(dtype)
        }
    }
}
