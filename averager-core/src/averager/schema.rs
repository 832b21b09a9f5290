//! protocol 3.1 **\[averager\]**: the schema hash peers compare before grouping.
//!
//! Peers group only when their partitions agree (protocol 11.7): the same shapes and dtypes, the
//! same `part_size_bytes`, and the same ratio estimates from their codecs for every tensor.
//! Unlike hivemind's hash it leaves out device, `requires_grad` and pinned memory (protocol 11.9),
//! which do not change the partition.

use sha2::{Digest, Sha256};

use crate::compression::{Compression, CompressionInfo};
use crate::tensor::TensorView;

/// SHA-256 over everything the partition depends on, in a fixed little-endian layout.
///
/// `infos[i]` describes tensor `i` (its key and role choose the codec of a selector).
pub(crate) fn schema_hash(
    tensors: &[TensorView<'_>],
    infos: &[CompressionInfo],
    codec: &dyn Compression,
    part_size_bytes: usize,
) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"averager-schema-v1");
    h.update((part_size_bytes as u64).to_le_bytes());
    h.update((tensors.len() as u64).to_le_bytes());
    for (tensor, info) in tensors.iter().zip(infos) {
        h.update((tensor.shape().len() as u64).to_le_bytes());
        for &d in tensor.shape() {
            h.update((d as u64).to_le_bytes());
        }
        h.update(tensor.dtype().name().as_bytes());
        h.update([0]);
        h.update(codec.estimate_compression_ratio(info).to_bits().to_le_bytes());
    }
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compression::NoCompression;
    use crate::tensor::{DType, Tensor};

    fn hash(tensors: &[Tensor], part_size_bytes: usize) -> Vec<u8> {
        let views: Vec<_> = tensors.iter().map(Tensor::view).collect();
        let infos: Vec<_> =
            views.iter().enumerate().map(|(i, v)| CompressionInfo::for_tensor(i, v)).collect();
        schema_hash(&views, &infos, &NoCompression, part_size_bytes)
    }

    #[test]
    fn equal_schemas_hash_equal_and_any_partition_input_changes_it() {
        let a = [Tensor::zeros(vec![3, 4], DType::F32).unwrap(), Tensor::zeros(vec![2], DType::F64).unwrap()];
        let base = hash(&a, 1 << 19);
        assert_eq!(base.len(), 32);
        assert_eq!(hash(&a, 1 << 19), base);
        // Values and requires_grad do not matter.
        let mut b = a.clone();
        b[0] = Tensor::from_f32(vec![3, 4], vec![1.0; 12]).unwrap().with_requires_grad(true);
        assert_eq!(hash(&b, 1 << 19), base);
        // Shape, dtype, count and part size do.
        assert_ne!(hash(&[a[0].clone().reshape(vec![4, 3]).unwrap(), a[1].clone()], 1 << 19), base);
        assert_ne!(hash(&[a[0].clone(), Tensor::zeros(vec![2], DType::F32).unwrap()], 1 << 19), base);
        assert_ne!(hash(&a[..1], 1 << 19), base);
        assert_ne!(hash(&a, 1 << 20), base);
    }
}
