//! Message builders.
//!
//! The conformance crate has no protobuf encoder, so the sized messages are built from the
//! protobuf length rules directly; a transport that measures with prost agrees to the byte, which
//! `message_at_the_cap_passes` and the oversize cases check from both sides.

use averager_core::proto::{
    AveragingData, DownloadData, JoinRequest, MessageCode, MessageFromLeader, Tensor,
};
use bytes::Bytes;

use crate::Failure;

fn varint_len(mut value: usize) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// The encoded length of a length-delimited field holding `len` bytes (omitted when empty).
fn bytes_field_len(len: usize) -> usize {
    if len == 0 { 0 } else { 1 + varint_len(len) + len }
}

/// The encoded length of a length-delimited field holding a (present) sub-message of `len` bytes.
fn message_field_len(len: usize) -> usize {
    1 + varint_len(len) + len
}

pub(super) fn filler(len: usize) -> Bytes {
    Bytes::from(vec![0xA5; len])
}

/// An `AveragingData` whose encoded size is exactly `size` bytes: a tensor buffer plus an
/// `endpoint` string that takes up the slack a varint boundary leaves.
pub(super) fn sized_part(size: usize) -> Result<AveragingData, Failure> {
    // `code` is a one-byte varint after a one-byte tag.
    let code = MessageCode::PartForAveraging as i32;
    let code_len = 2;
    for buffer in (size.saturating_sub(32)..=size.saturating_sub(4)).rev() {
        let base = code_len + message_field_len(bytes_field_len(buffer));
        if base > size {
            continue;
        }
        let slack = size - base;
        let endpoint_len = match slack {
            0 => 0,
            1 => continue,
            s if s - 2 < 0x80 => s - 2,
            _ => continue,
        };
        if bytes_field_len(endpoint_len) != slack {
            continue;
        }
        return Ok(AveragingData {
            code,
            endpoint: "e".repeat(endpoint_len),
            tensor_part: Some(Tensor { buffer: filler(buffer), ..Default::default() }),
            ..Default::default()
        });
    }
    Err(Failure::new(format!("cannot build a message of exactly {size} bytes")))
}

/// The `gather` length that makes a `JoinRequest` holding only `gather` at least `size` bytes.
pub(super) fn join_gather_len(size: usize) -> usize {
    (size.saturating_sub(8)..).find(|&len| bytes_field_len(len) >= size).unwrap_or(size)
}

/// The `metadata` length that makes a `DownloadData` holding only `metadata` at least `size` bytes.
pub(super) fn download_metadata_len(size: usize) -> usize {
    join_gather_len(size)
}

fn full_tensor(i: usize) -> Tensor {
    Tensor {
        buffer: Bytes::from(format!("tensor buffer {i}").into_bytes()),
        size: vec![2, 3, i as u32 + 1],
        requires_grad: true,
        dtype: "float32".into(),
        compression: 2,
        chunks: 3,
        codec: "float16".into(),
    }
}

pub(super) fn full_join_request(i: usize) -> JoinRequest {
    JoinRequest {
        endpoint: format!("follower-{i}"),
        schema_hash: Bytes::from_static(b"schema hash"),
        expiration: 1234.5 + i as f64,
        gather: Bytes::from(format!("gather {i}").into_bytes()),
        client_mode: true,
        group_key: format!("run.0b{i:b}"),
    }
}

pub(super) fn full_leader_message(i: usize) -> MessageFromLeader {
    MessageFromLeader {
        code: MessageCode::BeginAllreduce as i32,
        group_id: Bytes::from(format!("group {i}").into_bytes()),
        suggested_leader: format!("leader-{i}"),
        ordered_group_endpoints: vec!["a".into(), format!("b{i}")],
        gathered: vec![Bytes::from_static(b"ga"), Bytes::from(vec![i as u8; 3])],
    }
}

pub(super) fn full_part(i: usize) -> AveragingData {
    AveragingData {
        code: MessageCode::PartForAveraging as i32,
        group_id: Bytes::from(format!("group {i}").into_bytes()),
        endpoint: format!("sender-{i}"),
        tensor_part: Some(full_tensor(i)),
        metadata: Bytes::from(format!("metadata {i}").into_bytes()),
        weight: 0.5 + i as f64,
    }
}

pub(super) fn tagged_part(caller: usize, k: usize) -> AveragingData {
    AveragingData { endpoint: format!("caller-{caller}"), weight: k as f64, ..full_part(k) }
}

pub(super) fn full_download(i: usize) -> DownloadData {
    DownloadData {
        metadata: Bytes::from(format!("state metadata {i}").into_bytes()),
        tensor_part: Some(full_tensor(i)),
    }
}

pub(super) fn numbered_download(i: usize, size: usize) -> DownloadData {
    let mut metadata = vec![(i % 251) as u8; size];
    metadata[..8].copy_from_slice(&(i as u64).to_le_bytes());
    DownloadData { metadata: Bytes::from(metadata), tensor_part: None }
}
