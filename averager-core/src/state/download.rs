//! protocol 6.3: `load_state_from_peers`, downloading the state of the best donor that delivers.
//!
//! **\[averager\]** every read has a per-chunk timeout (hivemind applies none unless the caller gave
//! an overall timeout), a metadata-only first message is accepted (zero-tensor states work), and
//! the bytes buffered per download are capped, so a stalled or hostile donor costs at most one
//! timeout and a bounded amount of memory before the next donor is tried.

use std::future::Future;
use std::time::Duration;

use averager_proto::MessageCode;
use futures::StreamExt;

use super::assemble::Assembler;
use super::donor::decode_priority;
use crate::compression::WireTensor;
use crate::dht::Dht;
use crate::error::{Error, Result};
use crate::matchmaking::donors_key;
use crate::registry::Registry;
use crate::tensor::Tensor;
use crate::transport::{DownloadRequest, Transport};

/// The donors declared under `<prefix>.all_averagers`, best first, without `my_endpoint`.
///
/// Entries whose value is a msgpack int or float are donors; `nil` (a donor that withdrew) is
/// skipped quietly, anything else (not msgpack, a string, a non-finite number, a subkey that is not
/// UTF-8) is skipped with a warning. Donors are ordered by priority, descending, ties broken at
/// random so that equal donors share the load.
///
/// # Errors
/// The DHT's error.
pub(crate) async fn list_donors(
    dht: &dyn Dht,
    prefix: &str,
    my_endpoint: &str,
) -> Result<Vec<(String, f64)>> {
    let key = donors_key(prefix);
    let records = dht.get(&key, true).await?;
    let mut donors: Vec<(f64, f64, String)> = Vec::with_capacity(records.len());
    for (subkey, entry) in records {
        let Ok(endpoint) = String::from_utf8(subkey.to_vec()) else {
            tracing::warn!(%key, subkey = ?subkey, "ignoring a donor record whose subkey is not UTF-8");
            continue;
        };
        if endpoint == my_endpoint {
            continue;
        }
        match decode_priority(&entry.value) {
            Ok(Some(priority)) => donors.push((priority, rand::random::<f64>(), endpoint)),
            Ok(None) => {}
            Err(error) => tracing::warn!(%key, %endpoint, %error, "ignoring a malformed donor record"),
        }
    }
    donors.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    Ok(donors.into_iter().map(|(priority, _, endpoint)| (endpoint, priority)).collect())
}

/// Downloads the state of the best donor that delivers one (protocol 6.3): its msgpack metadata and
/// its tensors.
///
/// Donors come from [`list_donors`] (so never this peer itself). Each is asked in turn; every step
/// (connecting, the call, each message) must complete within `chunk_timeout`; the first message
/// must carry the metadata; each tensor is combined from its chunks (at most `max_state_bytes` of
/// buffers in all) and decoded with the codec its first chunk names, found in `registry`. A donor
/// that fails in any way (no metadata, an error, a timeout, a garbage chunk, too much data, an
/// unknown codec) is logged and the next is tried.
///
/// Returns `Ok(None)` when there is no donor or every donor failed.
///
/// # Errors
/// The DHT's error when the donor list cannot be read, or [`Error::Timeout`] when `overall` is
/// given and runs out first (a download under way is then cancelled).
#[expect(clippy::too_many_arguments, reason = "mirrors the averager's call site; every limit is explicit")]
pub(crate) async fn load_state_from_peers(
    dht: &dyn Dht,
    transport: &dyn Transport,
    registry: &Registry,
    prefix: &str,
    my_endpoint: &str,
    chunk_timeout: Duration,
    overall: Option<Duration>,
    max_state_bytes: usize,
) -> Result<Option<(Vec<u8>, Vec<Tensor>)>> {
    let attempt = async {
        let donors = list_donors(dht, prefix, my_endpoint).await?;
        if donors.is_empty() {
            tracing::info!(prefix, "no peer shares its state");
        }
        for (endpoint, priority) in donors {
            match download_from(transport, registry, &endpoint, chunk_timeout, max_state_bytes).await {
                Ok(state) => {
                    tracing::info!(%endpoint, priority, tensors = state.1.len(), "downloaded the state");
                    return Ok(Some(state));
                }
                Err(error) => {
                    tracing::warn!(%endpoint, priority, %error, "cannot download the state; trying the next donor");
                }
            }
        }
        Ok(None)
    };
    match overall {
        Some(limit) => tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| Error::timeout("loading the state from peers", limit))?,
        None => attempt.await,
    }
}

/// Downloads and decodes one donor's state.
pub(super) async fn download_from(
    transport: &dyn Transport,
    registry: &Registry,
    endpoint: &str,
    chunk_timeout: Duration,
    max_state_bytes: usize,
) -> Result<(Vec<u8>, Vec<Tensor>)> {
    let client = within(chunk_timeout, "connecting to the donor", transport.connect(endpoint)).await??;
    let call = client.rpc_download_state(DownloadRequest::default());
    let mut stream = within(chunk_timeout, "the donor's answer", call).await??;
    let Some(first) = within(chunk_timeout, "the state metadata", stream.next()).await? else {
        return Err(violation("the donor sent nothing (it does not share its state now)"));
    };
    let first = first?;
    if first.metadata.is_empty() {
        return Err(violation("the donor's first message carries no metadata"));
    }
    let mut assembler = Assembler::new(max_state_bytes);
    assembler.charge(first.metadata.len())?;
    let metadata = first.metadata.to_vec();
    let mut tensors = Vec::new();
    // Our donors send the metadata alone; hivemind's attach the first chunk to it.
    let mut chunk = first.tensor_part;
    loop {
        if let Some(part) = chunk.take()
            && let Some(wire) = assembler.push(part)?
        {
            tensors.push(decode(registry, wire).await?);
        }
        let Some(message) = within(chunk_timeout, "the next state chunk", stream.next()).await? else {
            break;
        };
        let message = message?;
        if !message.metadata.is_empty() {
            return Err(violation("only the first message may carry metadata"));
        }
        chunk = Some(message.tensor_part.ok_or_else(|| violation("a message carries no tensor part"))?);
    }
    if let Some(wire) = assembler.finish()? {
        tensors.push(decode(registry, wire).await?);
    }
    Ok((metadata, tensors))
}

/// Decodes one whole tensor off the async threads, with the codec it names.
async fn decode(registry: &Registry, wire: WireTensor) -> Result<Tensor> {
    let codec = registry.codec_for(&wire)?;
    tokio::task::spawn_blocking(move || codec.extract(&wire))
        .await
        .map_err(|e| Error::Internal(format!("decoding a state tensor failed: {e}")))?
}

/// `future`, or a timeout error naming `what` after `limit`.
async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, future).await.map_err(|_| Error::timeout(what, limit))
}

fn violation(detail: &str) -> Error {
    Error::protocol(MessageCode::ProtocolViolation, detail)
}
