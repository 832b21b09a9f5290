//! The hostile-caller suite of the stream transports (QUIC, libp2p), whose calls travel in the
//! core's frames (`averager_core::transport::frame`): written once here over a [`RawCaller`],
//! run by each transport's `tests/hostile` with [`hostile_suite!`](crate::hostile_suite).
//!
//! Each case checks that the side that behaves gets a clear error, that the server's heap stays
//! bounded while the hostile caller works (the test binary installs [`Counting`](super::Counting)
//! as its global allocator), and that the server still serves an honest client afterwards. Cases
//! take [`SERIAL`] so that one case's allocations never count in another's peak.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use averager_core::Error;
use averager_core::transport::frame::{Frame, FrameRead, read_frame};
use averager_core::transport::{AveragingData, DEFAULT_MAX_MESSAGE_BYTES, Rpc, Transport};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Echo, Watermark};
use crate::{Failure, Outcome, ensure};

/// Serialises the hostile cases of a test binary (and any test of its own that measures the heap).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cap of every server the suite starts.
pub const CAP: usize = DEFAULT_MAX_MESSAGE_BYTES;

/// The most a server may allocate (live, at once) during a hostile phase.
pub const MEMORY_BOUND: usize = 64 << 20;

/// A bound on waits that end on an event: generous, so a loaded machine does not fail a case.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The first-request timeout of servers whose cases wait for it to fire: long enough that the
/// honest client those servers also serve never comes near it, even on a loaded machine.
pub const SHORT_FIRST_REQUEST: Duration = Duration::from_secs(5);

/// The first-request timeout of servers whose cases never wait for it.
pub const LONG_FIRST_REQUEST: Duration = Duration::from_secs(30);

/// The largest length a frame header can announce that is not a marker.
const LARGEST_LENGTH: u32 = u32::MAX - 2;

/// One raw call, opened on the RPC it names (QUIC: its method byte is written; libp2p: the RPC's
/// protocol is negotiated); the replies are read as the core's frames.
pub trait RawStream: FrameRead {
    /// Writes `bytes` as they are; a failure is the server having closed the call already.
    fn write(&mut self, bytes: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Ends the caller's side (a finish or a close), as an honest caller that sent all it had.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// A hostile caller of one served endpoint.
pub trait RawCaller: Send + Sync {
    /// Its calls.
    type Stream: RawStream;
    /// Opens a call of `rpc` and writes nothing on it yet.
    fn open(&self, rpc: Rpc) -> impl Future<Output = Self::Stream> + Send;
}

/// What the suite needs of a transport: servers with a first-request timeout, raw callers of
/// them, and honest clients.
pub trait HostileTarget: Sync {
    /// A served endpoint, and whatever keeps it served.
    type Served: Send + Sync;
    /// A raw caller of it.
    type Caller: RawCaller;
    /// Serves `service` on a fresh transport (cap [`CAP`]) whose calls wait
    /// `first_request_timeout` for their first request.
    fn serve(
        &self,
        service: Arc<Echo>,
        first_request_timeout: Duration,
    ) -> impl Future<Output = Self::Served> + Send;
    /// The endpoint an honest client of the transport dials to reach `served`.
    fn endpoint(&self, served: &Self::Served) -> String;
    /// A new raw caller of `served` (a connection, a node of its own).
    fn caller(&self, served: &Self::Served) -> impl Future<Output = Self::Caller> + Send;
    /// A transport for an honest client.
    fn client(&self) -> impl Future<Output = Arc<dyn Transport>> + Send;
}

/// How the server ended a raw call, as the caller read it.
#[derive(Debug)]
pub enum End {
    /// Replies, then an error frame.
    Error {
        /// How many replies came before it.
        messages: usize,
        /// What the error frame said.
        error: Error,
    },
    /// Replies, then the end frame or the end of the stream.
    Clean,
    /// The stream failed or broke off inside a frame.
    Broken(Error),
}

impl End {
    /// The text of an error frame before any reply.
    pub fn error_text(&self) -> Result<String, Failure> {
        match self {
            End::Error { messages: 0, error } => Ok(error.to_string()),
            other => Err(Failure::new(format!("expected an error frame before any reply, got {other:?}"))),
        }
    }

    /// `(size, limit)` of a too-large error frame before any reply.
    pub fn too_large(&self) -> Result<(usize, usize), Failure> {
        match self {
            End::Error { messages: 0, error: Error::MessageTooLarge { size, limit } } => Ok((*size, *limit)),
            other => Err(Failure::new(format!("expected a too-large error frame, got {other:?}"))),
        }
    }
}

/// Reads the server's replies to a raw call until it ends the call.
pub async fn read_end<S: RawStream>(stream: &mut S) -> End {
    let mut messages = 0;
    loop {
        // The server under test honours its cap, so its lengths can be trusted here.
        match read_frame(stream, usize::MAX, true, "the server").await {
            Ok(Frame::Message(_)) => messages += 1,
            Ok(Frame::Failure(error)) => return End::Error { messages, error },
            Ok(Frame::End | Frame::Closed) => return End::Clean,
            Err(e) => return End::Broken(e),
        }
    }
}

/// A frame header announcing `len` bytes, then `body`.
pub fn framed(len: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// `fut`, bounded by [`PATIENCE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, Failure> {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .map_err(|_| Failure::new(format!("{what}: nothing within {PATIENCE:?}")))
}

/// An honest client's call round-trips through `endpoint`.
pub async fn honest_call(client: Arc<dyn Transport>, endpoint: &str) -> Outcome {
    let client = within("an honest connect", client.connect(endpoint)).await??;
    let part = AveragingData { endpoint: "honest".into(), ..AveragingData::default() };
    let requests = Box::pin(futures::stream::iter([part.clone()]));
    let replies = within("an honest call", client.rpc_aggregate_part(requests)).await??;
    let replies: Vec<_> = within("honest replies", replies.collect()).await?;
    ensure!(replies.len() == 1 && replies[0].as_ref().ok() == Some(&part), "honest replies: {replies:?}");
    Ok(())
}

/// Checks the peak of `watermark` against [`MEMORY_BOUND`], and prints it for the report.
pub fn bounded(watermark: &Watermark, phase: &str) -> Outcome {
    let peak = watermark.peak();
    eprintln!("{phase}: peak live heap above the start: {:.1} MiB", peak as f64 / f64::from(1 << 20));
    ensure!(peak < MEMORY_BOUND, "{phase}: the heap grew by {peak} bytes (bound {MEMORY_BOUND})");
    Ok(())
}

/// Opens a call of `rpc` and writes `bytes` on it; the caller's side stays open.
async fn call<C: RawCaller>(caller: &C, rpc: Rpc, bytes: &[u8]) -> Result<C::Stream, Failure> {
    let mut stream = within("opening a raw call", caller.open(rpc)).await?;
    if !bytes.is_empty() {
        within("the hostile write", stream.write(bytes))
            .await?
            .map_err(|e| Failure::new(format!("the hostile bytes were not written: {e}")))?;
    }
    Ok(stream)
}

/// Length prefixes far over the cap, up to 4 GiB, are refused with a too-large error frame before
/// anything is allocated, while the caller keeps its side open; each aggregate handler hears of
/// its refused request.
pub async fn a_length_prefix_of_4_gib_is_refused_before_anything_is_allocated<T: HostileTarget>(
    target: &T,
) -> Outcome {
    let _serial = SERIAL.lock().await;
    let service = Arc::new(Echo::default());
    let served = target.serve(service.clone(), LONG_FIRST_REQUEST).await;
    let caller = target.caller(&served).await;

    let watermark = Watermark::start();
    let cases = [
        (Rpc::JoinGroup, u32::MAX),
        (Rpc::AggregatePart, LARGEST_LENGTH),
        (Rpc::DownloadState, LARGEST_LENGTH),
        (Rpc::AggregatePart, CAP as u32 + 1),
    ];
    for (rpc, len) in cases {
        let mut stream = call(&caller, rpc, &framed(len, b"x")).await?;
        let end = within("the refusal", read_end(&mut stream)).await?;
        ensure!(end.too_large()? == (len as usize, CAP), "{rpc:?}, length {len}: {end:?}");
    }
    bounded(&watermark, "4 GiB length prefixes")?;

    let errors = service.errors();
    ensure!(errors.len() == 2, "each aggregate handler hears of its refused request: {errors:?}");
    for e in errors {
        ensure!(matches!(e, Error::MessageTooLarge { limit: CAP, .. }), "{e:?}");
    }
    honest_call(target.client().await, &target.endpoint(&served)).await
}

/// Calls that announce a message of exactly the cap, send 1 KiB of it and go quiet cost the server
/// only what arrived, and end with the first-request timeout.
pub async fn an_announced_message_costs_only_the_bytes_that_arrive<T: HostileTarget>(target: &T) -> Outcome {
    const STREAMS: usize = 64;
    let _serial = SERIAL.lock().await;
    let service = Arc::new(Echo::default());
    let served = target.serve(service.clone(), SHORT_FIRST_REQUEST).await;
    let caller = target.caller(&served).await;

    let watermark = Watermark::start();
    let mut calls = Vec::new();
    for i in 0..STREAMS {
        let rpc = if i % 2 == 0 { Rpc::JoinGroup } else { Rpc::AggregatePart };
        calls.push(call(&caller, rpc, &framed(CAP as u32, &[0xAB; 1024])).await?);
    }
    for (i, stream) in calls.iter_mut().enumerate() {
        let text = within("the first-request timeout", read_end(stream)).await?.error_text()?;
        ensure!(text.contains("first request timed out"), "call {i}: {text}");
    }
    bounded(&watermark, &format!("{STREAMS} calls announcing {CAP} bytes each"))?;

    let errors = service.errors();
    ensure!(errors.len() == STREAMS / 2, "{errors:?}");
    ensure!(errors.iter().all(|e| matches!(e, Error::Timeout { .. })), "{errors:?}");
    honest_call(target.client().await, &target.endpoint(&served)).await
}

/// Well-framed garbage gets a clear "undecodable" error frame (and the aggregate handler hears of
/// it); random bytes on random calls end every call without a panic or growth, and leave the
/// caller's connection serving.
pub async fn garbage_gets_clear_errors_and_the_server_keeps_serving<T: HostileTarget>(target: &T) -> Outcome {
    const RANDOM_STREAMS: u64 = 200;
    let _serial = SERIAL.lock().await;
    let service = Arc::new(Echo::default());
    let served = target.serve(service.clone(), LONG_FIRST_REQUEST).await;
    let caller = target.caller(&served).await;
    let watermark = Watermark::start();

    // A well-framed payload that is no protobuf: 0xFF bytes are an endless varint.
    let garbage = framed(64, &[0xFF; 64]);
    for rpc in [Rpc::JoinGroup, Rpc::AggregatePart, Rpc::DownloadState] {
        let mut stream = call(&caller, rpc, &garbage).await?;
        stream.finish().await;
        let text = within("the refusal of garbage", read_end(&mut stream)).await?.error_text()?;
        ensure!(text.contains("undecodable"), "{rpc:?}: {text}");
    }
    let errors = service.errors();
    ensure!(
        matches!(errors.as_slice(), [Error::Transport(text)] if text.contains("undecodable")),
        "the aggregate handler hears of the garbage: {errors:?}"
    );

    // Whatever random bytes say, each call ends (an error, an end, a reset); the caller closes its
    // side, so a call the bytes leave waiting for more ends too.
    let mut rng = StdRng::seed_from_u64(0x5EED_0B5E);
    let rpcs = [Rpc::JoinGroup, Rpc::AggregatePart, Rpc::DownloadState];
    for case in 0..RANDOM_STREAMS {
        let mut bytes = vec![0u8; rng.random_range(1..2048)];
        rng.fill(&mut bytes[..]);
        let mut stream = within("opening a raw call", caller.open(rpcs[case as usize % 3])).await?;
        // The server may end the call before all of it is written.
        let _ = stream.write(&bytes).await;
        stream.finish().await;
        within(&format!("random call {case}"), read_end(&mut stream)).await?;
    }
    bounded(&watermark, "garbage calls")?;

    // The hostile caller's own connection still serves.
    let mut stream = call(&caller, Rpc::JoinGroup, &garbage).await?;
    stream.finish().await;
    let text = within("garbage after the random calls", read_end(&mut stream)).await?.error_text()?;
    ensure!(text.contains("undecodable"), "after the random calls: {text}");
    honest_call(target.client().await, &target.endpoint(&served)).await
}

/// Calls that open and then say nothing (or half a frame header) are timed out, each with an
/// error frame, while an honest client is served.
pub async fn silent_calls_are_timed_out_while_an_honest_client_is_served<T: HostileTarget>(
    target: &T,
) -> Outcome {
    const CALLERS: usize = 4;
    const STREAMS: usize = 25;
    let _serial = SERIAL.lock().await;
    let served = target.serve(Arc::new(Echo::default()), SHORT_FIRST_REQUEST).await;
    let watermark = Watermark::start();

    let mut callers = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..CALLERS {
        let caller = target.caller(&served).await;
        for i in 0..STREAMS {
            let rpc = [Rpc::JoinGroup, Rpc::AggregatePart, Rpc::DownloadState][i % 3];
            let bytes: &[u8] = if i % 2 == 1 { &[7, 0] } else { &[] };
            calls.push(call(&caller, rpc, bytes).await?);
        }
        callers.push(caller);
    }

    honest_call(target.client().await, &target.endpoint(&served)).await?;

    for (i, stream) in calls.iter_mut().enumerate() {
        let text = within("the first-request timeout", read_end(stream)).await?.error_text()?;
        ensure!(text.contains("timed out"), "call {i}: {text}");
    }
    bounded(&watermark, &format!("{} silent calls", CALLERS * STREAMS))?;
    honest_call(target.client().await, &target.endpoint(&served)).await
}

/// Expands the hostile suite into tests: `hostile_suite!(name, factory)` with `factory` an
/// expression of a [`HostileTarget`]. The test binary installs
/// `#[global_allocator] static ALLOCATOR: Counting = Counting;` itself.
#[macro_export]
macro_rules! hostile_suite {
    ($name:ident, $factory:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::__hostile_tests! { $factory, [
                a_length_prefix_of_4_gib_is_refused_before_anything_is_allocated,
                an_announced_message_costs_only_the_bytes_that_arrive,
                garbage_gets_clear_errors_and_the_server_keeps_serving,
                silent_calls_are_timed_out_while_an_honest_client_is_served,
            ] }
        }
    };
}

/// One `#[test]` per hostile case (see [`hostile_suite!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __hostile_tests {
    ($factory:expr, [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                $crate::run_case(::core::stringify!($case), async {
                    $crate::hostile::$case(&$factory).await
                })
            }
        )*
    };
}
