//! protocol 6.2: serving `rpc_download_state` from a snapshot.
//!
//! **\[averager\]** the metadata travels in a first message of its own (hivemind attaches it to the
//! first tensor chunk, so a zero-tensor state carries no metadata and is refused downstream).
//! Tensors are encoded one at a time as the stream is polled, each off the async threads, so a
//! donor never holds more than one encoded tensor per download.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::sharing::StateSharing;
use super::snapshot::{StateProvider, StateSnapshot};
use crate::compression::{
    Compression, CompressionInfo, STREAM_CHUNK_BYTES, TensorDescriptor, WireTensor, split_for_streaming,
};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::transport::{DownloadData, MessageStream};

/// msgpack `nil`, sent when a provider gives empty metadata (empty bytes are not msgpack, and a
/// downloader reads empty metadata as "no metadata").
const NIL: &[u8] = &[0xc0];

/// The stream of one `rpc_download_state` call (protocol 6.2).
///
/// When sharing is off, an empty stream (the downloader moves on to another donor). Otherwise a
/// snapshot is taken from `provider` now, and the stream sends: one message carrying only the
/// metadata; then, for each tensor in order, its whole-tensor encoding by `codec` (the snapshot's
/// info for it, or key = index, with `part_size` unset and the descriptor of the tensor itself),
/// split into chunks of [`STREAM_CHUNK_BYTES`] buffer bytes, one message per chunk. An encoding
/// error ends the stream with that error.
///
/// # Errors
/// The provider's error (the call is refused).
pub(crate) async fn serve_download(
    sharing: &StateSharing,
    provider: &dyn StateProvider,
    codec: Arc<dyn Compression>,
) -> Result<MessageStream<DownloadData>> {
    if !sharing.allow_state_sharing() {
        return Ok(Box::pin(futures::stream::empty()));
    }
    let snapshot = provider.current_state().await?;
    Ok(Box::pin(download_stream(snapshot, codec)))
}

struct Pending {
    metadata: Option<Bytes>,
    tensors: std::vec::IntoIter<(usize, Tensor, Option<CompressionInfo>)>,
    chunks: VecDeque<WireTensor>,
    codec: Arc<dyn Compression>,
    failed: bool,
}

fn download_stream(
    snapshot: StateSnapshot,
    codec: Arc<dyn Compression>,
) -> impl futures::Stream<Item = Result<DownloadData>> + Send + 'static {
    let StateSnapshot { metadata, tensors, infos } = snapshot;
    let metadata = if metadata.is_empty() { Bytes::from_static(NIL) } else { Bytes::from(metadata) };
    let mut infos = infos.into_iter();
    let tensors: Vec<_> = tensors.into_iter().enumerate().map(|(i, t)| (i, t, infos.next())).collect();
    let pending = Pending {
        metadata: Some(metadata),
        tensors: tensors.into_iter(),
        chunks: VecDeque::new(),
        codec,
        failed: false,
    };
    futures::stream::unfold(pending, |mut pending| async move {
        let item = pending.next().await?;
        Some((item, pending))
    })
    .fuse()
}

impl Pending {
    async fn next(&mut self) -> Option<Result<DownloadData>> {
        if let Some(metadata) = self.metadata.take() {
            return Some(Ok(DownloadData { metadata, tensor_part: None }));
        }
        if let Some(chunk) = self.chunks.pop_front() {
            return Some(Ok(part(chunk)));
        }
        if self.failed {
            return None;
        }
        let (index, tensor, info) = self.tensors.next()?;
        let codec = Arc::clone(&self.codec);
        // Each tensor moves into the encoding task and is freed there: the snapshot shrinks as
        // the stream advances.
        let encoded = tokio::task::spawn_blocking(move || encode(codec.as_ref(), index, &tensor, info)).await;
        let encoded = match encoded {
            Ok(result) => result,
            Err(e) => Err(Error::Internal(format!("encoding state tensor {index} failed: {e}"))),
        };
        match encoded {
            Ok(wire) => {
                self.chunks = split_for_streaming(wire, STREAM_CHUNK_BYTES).into();
                self.chunks.pop_front().map(|chunk| Ok(part(chunk)))
            }
            Err(error) => {
                tracing::warn!(%error, index, "cannot encode a state tensor; ending the download");
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

fn part(chunk: WireTensor) -> DownloadData {
    DownloadData { metadata: Bytes::new(), tensor_part: Some(chunk) }
}

/// Encodes a whole tensor (protocol 6.2: no partitioning, `part_size` unset).
fn encode(
    codec: &dyn Compression,
    index: usize,
    tensor: &Tensor,
    info: Option<CompressionInfo>,
) -> Result<WireTensor> {
    let view = tensor.view();
    let mut info = info.unwrap_or_else(|| CompressionInfo::for_tensor(index, &view));
    // The tensor is encoded whole, so it is its own descriptor, whatever the caller's info said.
    info.descriptor = TensorDescriptor::of(&view);
    info.part_index = 0;
    info.part_size = None;
    codec.compress(&view, &info)
}
