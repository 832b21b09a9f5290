//! Hostile callers against a libp2p server: length prefixes far over the cap, messages announced
//! but never sent, garbage substreams, and substreams that never say anything.
//!
//! As the QUIC transport's hostile tests: the side that behaves gets a clear error, the server's
//! heap stays bounded while the hostile caller works (a counting global allocator measures the
//! peak of live bytes above the level before the hostile phase), and the server still serves an
//! honest client afterwards. Tests run one at a time, as the allocation count is process-wide.

mod raw;

use std::sync::Arc;
use std::time::Duration;

use averager_conformance::hostile::{Counting, Echo, Watermark};
use averager_core::Error;
use averager_core::transport::{AveragingData, DEFAULT_MAX_MESSAGE_BYTES, ServerHandle, Transport};
use averager_transport_libp2p::{
    AGGREGATE_PROTOCOL, DOWNLOAD_PROTOCOL, JOIN_PROTOCOL, Libp2pConfig, Libp2pTransport, StreamSettings,
};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::raw::{End, framed};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Serialises the tests of this binary, so one test's allocations never count in another's peak.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cap of every server here.
const CAP: usize = DEFAULT_MAX_MESSAGE_BYTES;

/// The most the server may allocate (live, at once) during a hostile phase.
const MEMORY_BOUND: usize = 64 << 20;

/// A bound on waits that end on an event: generous, so a loaded machine does not fail a test.
const PATIENCE: Duration = Duration::from_secs(60);

/// The first-request timeout of servers whose tests wait for it to fire.
const SHORT_FIRST_REQUEST: Duration = Duration::from_secs(5);

/// A served [`Echo`].
struct Served {
    service: Arc<Echo>,
    handle: ServerHandle,
    transport: Libp2pTransport,
}

impl Served {
    async fn start(first_request_timeout: Duration) -> Served {
        let streams = StreamSettings { first_request_timeout, ..StreamSettings::default() };
        let transport = Libp2pTransport::start(Libp2pConfig { streams, ..Libp2pConfig::default() })
            .await
            .expect("a node");
        let service = Arc::new(Echo::default());
        let handle = transport.serve(service.clone()).await.expect("serve");
        Served { service, handle, transport }
    }

    /// The server's endpoint with its address, for callers that share no DHT with it.
    fn endpoint(&self) -> String {
        let addr = self.transport.node().listen_addrs().into_iter().next().expect("an address");
        assert!(self.handle.endpoint().ends_with(&self.transport.node().peer_id().to_string()));
        format!("libp2p://{addr}")
    }
}

/// `fut`, bounded by [`PATIENCE`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
}

/// An honest client's call round-trips through `endpoint`.
async fn honest_call(endpoint: &str) {
    let client = Libp2pTransport::start(Libp2pConfig::default()).await.expect("a node");
    let client = within("an honest connect", client.connect(endpoint)).await.expect("an honest connect");
    let part = AveragingData::default();
    let requests = Box::pin(futures::stream::iter([part.clone()]));
    let replies =
        within("an honest call", client.rpc_aggregate_part(requests)).await.expect("an honest call");
    let replies: Vec<_> = within("honest replies", replies.collect()).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].as_ref().ok(), Some(&part));
}

/// Checks the peak of `watermark` against [`MEMORY_BOUND`], and prints it for the report.
fn assert_bounded(watermark: &Watermark, phase: &str) {
    let peak = watermark.peak();
    eprintln!("{phase}: peak live heap above the start: {:.1} MiB", peak as f64 / f64::from(1 << 20));
    assert!(peak < MEMORY_BOUND, "{phase}: the heap grew by {peak} bytes (bound {MEMORY_BOUND})");
}

#[tokio::test]
async fn a_length_prefix_of_4_gib_is_refused_before_anything_is_allocated() {
    let _serial = SERIAL.lock().await;
    let server = Served::start(Duration::from_secs(30)).await;
    let caller = raw::caller().await;
    let node = server.transport.node();

    let watermark = Watermark::start();
    let cases = [
        (JOIN_PROTOCOL, u32::MAX),
        (AGGREGATE_PROTOCOL, u32::MAX - 2),
        (DOWNLOAD_PROTOCOL, u32::MAX - 2),
        (AGGREGATE_PROTOCOL, CAP as u32 + 1),
    ];
    for (protocol, len) in cases {
        // The hostile caller keeps its side open: the refusal must not wait for the bytes.
        let mut stream = raw::call(&caller, node, protocol.clone(), &framed(len, b"x")).await;
        let end = within("the refusal", raw::read_end(&mut stream)).await;
        assert_eq!(end.too_large(), (u64::from(len), CAP as u64), "{protocol}");
    }
    assert_bounded(&watermark, "4 GiB length prefixes");

    let errors = server.service.errors();
    assert_eq!(errors.len(), 2, "each aggregate handler hears of its refused request: {errors:?}");
    for e in errors {
        assert!(matches!(e, Error::MessageTooLarge { limit: CAP, .. }), "{e:?}");
    }
    honest_call(&server.endpoint()).await;
}

#[tokio::test]
async fn an_announced_message_costs_only_the_bytes_that_arrive() {
    const STREAMS: usize = 64;
    let _serial = SERIAL.lock().await;
    let server = Served::start(SHORT_FIRST_REQUEST).await;
    let caller = raw::caller().await;
    let node = server.transport.node();

    // Each substream announces a message of exactly the cap, sends 1 KiB of it and goes quiet.
    let watermark = Watermark::start();
    let mut calls = Vec::new();
    for i in 0..STREAMS {
        let protocol = if i % 2 == 0 { JOIN_PROTOCOL } else { AGGREGATE_PROTOCOL };
        calls.push(raw::call(&caller, node, protocol, &framed(CAP as u32, &[0xAB; 1024])).await);
    }
    for (i, stream) in calls.iter_mut().enumerate() {
        let end = within("the first-request timeout", raw::read_end(stream)).await;
        let text = end.remote_text();
        assert!(text.contains("timed out"), "substream {i}: {text}");
    }
    assert_bounded(&watermark, &format!("{STREAMS} substreams announcing {CAP} bytes each"));

    let errors = server.service.errors();
    assert_eq!(errors.len(), STREAMS / 2, "{errors:?}");
    assert!(errors.iter().all(|e| matches!(e, Error::Timeout { .. })), "{errors:?}");
    honest_call(&server.endpoint()).await;
}

#[tokio::test]
async fn garbage_substreams_get_clear_errors_and_the_server_keeps_serving() {
    const RANDOM_STREAMS: u64 = 200;
    let _serial = SERIAL.lock().await;
    let server = Served::start(Duration::from_secs(30)).await;
    let caller = raw::caller().await;
    let node = server.transport.node();
    let watermark = Watermark::start();

    // A well-framed payload that is no protobuf: 0xFF bytes are an endless varint.
    let garbage = [0xFF; 64];
    for protocol in [JOIN_PROTOCOL, AGGREGATE_PROTOCOL, DOWNLOAD_PROTOCOL] {
        let mut stream = raw::call(&caller, node, protocol.clone(), &framed(64, &garbage)).await;
        let text = within("the refusal of garbage", raw::read_end(&mut stream)).await.remote_text();
        assert!(text.contains("undecodable"), "{protocol}: {text}");
    }
    let errors = server.service.errors();
    assert!(
        matches!(errors.as_slice(), [Error::Transport(text)] if text.contains("undecodable")),
        "the aggregate handler hears of the garbage: {errors:?}"
    );

    // Random bytes: whatever they say, each substream ends (an error, a reset, or an answer) and
    // nothing panics or grows. The caller closes its side, so a call the bytes leave waiting for
    // more ends too.
    let mut rng = StdRng::seed_from_u64(0x5EED_0B5E);
    let protocols = [JOIN_PROTOCOL, AGGREGATE_PROTOCOL, DOWNLOAD_PROTOCOL];
    for case in 0..RANDOM_STREAMS {
        let mut bytes = vec![0u8; rng.random_range(1..2048)];
        rng.fill(&mut bytes[..]);
        let protocol = protocols[case as usize % 3].clone();
        let mut stream = raw::call(&caller, node, protocol, &bytes).await;
        let _ = futures::AsyncWriteExt::close(&mut stream).await;
        let end = within(&format!("random substream {case}"), raw::read_end(&mut stream)).await;
        if let End::Error(kind, _) = &end {
            assert!(matches!(kind, 1 | 2), "random substream {case}: {end:?}");
        }
    }
    assert_bounded(&watermark, "garbage substreams");
    honest_call(&server.endpoint()).await;
}

#[tokio::test]
async fn silent_substreams_are_timed_out_while_an_honest_client_is_served() {
    const CALLERS: usize = 4;
    const STREAMS: usize = 25;
    let _serial = SERIAL.lock().await;
    let server = Served::start(SHORT_FIRST_REQUEST).await;
    let node = server.transport.node();
    let watermark = Watermark::start();

    // Substreams that negotiate their protocol and then send nothing at all, or half a header.
    let mut callers = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..CALLERS {
        let caller = raw::caller().await;
        for i in 0..STREAMS {
            let protocol = [JOIN_PROTOCOL, AGGREGATE_PROTOCOL, DOWNLOAD_PROTOCOL][i % 3].clone();
            let bytes: &[u8] = if i % 2 == 1 { &[7, 0] } else { &[] };
            calls.push(raw::call(&caller, node, protocol, bytes).await);
        }
        callers.push(caller);
    }

    honest_call(&server.endpoint()).await;

    for (i, stream) in calls.iter_mut().enumerate() {
        let text = within("the first-request timeout", raw::read_end(stream)).await.remote_text();
        assert!(text.contains("timed out"), "substream {i}: {text}");
    }
    assert_bounded(&watermark, &format!("{} silent substreams", CALLERS * STREAMS));
    honest_call(&server.endpoint()).await;
}
