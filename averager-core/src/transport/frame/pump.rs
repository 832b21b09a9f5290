//! The caller side of an `rpc_aggregate_part` call on a stream transport: its requests written
//! as frames, then the end frame.

use averager_proto::AveragingData;
use futures::StreamExt;
use tokio::sync::oneshot;

use super::{FrameWrite, encode_frame, end_frame};
use crate::error::Error;
use crate::transport::RequestStream;

/// Sends the caller's `requests` on `send` as frames, then the end frame, until `cancel` fires
/// (or its sender is dropped); a request over `limit` is reported on `failed` and ends the pump.
///
/// After the end frame the write half is kept until `cancel`: a stream transport whose write
/// half closes early would tell the server the caller went away.
pub async fn pump_requests<W: FrameWrite>(
    mut send: W,
    mut requests: RequestStream<AveragingData>,
    limit: usize,
    peer: String,
    mut cancel: oneshot::Receiver<()>,
    failed: oneshot::Sender<Error>,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut cancel => return,
            next = requests.next() => next,
        };
        let Some(message) = next else {
            drop(requests);
            let _ = send.write_chunks(vec![end_frame()], &peer).await;
            let _ = cancel.await;
            return;
        };
        let chunks = match encode_frame(message, limit) {
            Ok(chunks) => chunks,
            Err(e) => {
                let _ = failed.send(e);
                return;
            }
        };
        tokio::select! {
            biased;
            _ = &mut cancel => return,
            written = send.write_chunks(chunks, &peer) => if written.is_err() { return },
        }
    }
}
