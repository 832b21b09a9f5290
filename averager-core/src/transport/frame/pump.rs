//! The caller side of a call on a stream transport: an aggregate call's requests written as
//! frames, then the end frame, and every call's reply stream.

use averager_proto::AveragingData;
use futures::StreamExt;
use tokio::sync::oneshot;

use super::{Frame, FrameRead, FrameWrite, decode, encode_frame, end_frame, read_frame};
use crate::error::Error;
use crate::transport::{MessageStream, RequestStream};

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

/// What a caller's reply stream keeps alive besides its read half.
pub enum Hold<W> {
    /// A unary call's write half, held only to keep the caller's side open.
    Unary(W),
    /// The task sending an aggregate call's requests ([`pump_requests`]).
    Pump(Pump),
}

/// The link from a reply stream to its request pump.
pub struct Pump {
    /// Dropped with the reply stream (or at its end): the pump drops the caller's request stream
    /// and its write half.
    _cancel: oneshot::Sender<()>,
    /// The pump's report of a request over the cap.
    failed: Option<oneshot::Receiver<Error>>,
}

impl Pump {
    /// The link to a pump started with the other ends of `cancel` and `failed`.
    pub fn new(cancel: oneshot::Sender<()>, failed: oneshot::Receiver<Error>) -> Self {
        Pump { _cancel: cancel, failed: Some(failed) }
    }
}

/// The caller's reply stream: frames read from `recv` until the server's end frame, an error
/// frame, or a failure, holding `hold` until then. Dropping it drops `recv` (which the transport
/// turns into a close or a reset, so the server drops the handler) and cancels the request pump.
/// `closed` says, in the error of a stream that closes before the end frame, what happened.
pub fn reply_stream<R, F, W>(
    recv: F,
    limit: usize,
    peer: String,
    hold: Hold<W>,
    closed: &'static str,
) -> MessageStream<R>
where
    R: prost::Message + Default + 'static,
    F: FrameRead + 'static,
    W: Send + 'static,
{
    struct State<F, W> {
        recv: F,
        limit: usize,
        peer: String,
        hold: Hold<W>,
        closed: &'static str,
    }
    async fn pump_failure<W>(hold: &mut Hold<W>) -> Error {
        if let Hold::Pump(pump) = hold
            && let Some(rx) = pump.failed.as_mut()
        {
            let received = rx.await;
            pump.failed = None;
            if let Ok(e) = received {
                return e;
            }
        }
        std::future::pending().await
    }
    let state = State { recv, limit, peer, hold, closed };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        let read = tokio::select! {
            biased;
            e = pump_failure(&mut state.hold) => Err(e),
            read = read_frame(&mut state.recv, state.limit, true, &state.peer) => read,
        };
        match read {
            Ok(Frame::Message(bytes)) => match decode::<R>(bytes, &state.peer) {
                Ok(message) => Some((Ok(message), Some(state))),
                Err(e) => Some((Err(e), None)),
            },
            Ok(Frame::End) => None,
            Ok(Frame::Closed) => {
                let reason = state.closed.to_string();
                Some((Err(Error::Unreachable { endpoint: state.peer.clone(), reason }), None))
            }
            Ok(Frame::Failure(e)) | Err(e) => Some((Err(e), None)),
        }
    }))
}
