//! Hostile callers against a QUIC server: length prefixes far over the cap, messages announced but
//! never sent, garbage streams, streams that never say anything, and an impostor behind a pinned
//! endpoint.
//!
//! Each test checks that the side that behaves gets a clear error, that the server's heap stays
//! bounded while the hostile caller works (a counting global allocator measures the peak of live
//! bytes above the level before the hostile phase), and that the server still serves an honest
//! client afterwards. Tests run one at a time, as the allocation count is process-wide.

mod raw;

use std::sync::Arc;
use std::time::Duration;

use averager_core::Error;
use averager_core::transport::{AveragingData, DEFAULT_MAX_MESSAGE_BYTES, ServerHandle, Transport};
use averager_transport_quic::{QuicSettings, QuicTransport};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::raw::{AGGREGATE, DOWNLOAD, End, JOIN};
use averager_conformance::hostile::{Counting, Echo, Watermark};

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

/// The first-request timeout of servers whose tests wait for it to fire: long enough that the
/// honest client those servers also serve never comes near it, even on a loaded machine.
const SHORT_FIRST_REQUEST: Duration = Duration::from_secs(5);

/// A served [`Echo`].
struct Served {
    service: Arc<Echo>,
    handle: ServerHandle,
    _transport: QuicTransport,
}

impl Served {
    async fn start(first_request_timeout: Duration) -> Served {
        let settings = QuicSettings { first_request_timeout, ..QuicSettings::default() };
        let transport = QuicTransport::with_settings(settings).expect("valid settings");
        let service = Arc::new(Echo::default());
        let handle = transport.serve(service.clone()).await.expect("serve");
        Served { service, handle, _transport: transport }
    }

    fn endpoint(&self) -> &str {
        self.handle.endpoint()
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
    let client = QuicTransport::default();
    let client = within("an honest connect", client.connect(endpoint)).await.expect("an honest connect");
    let part = AveragingData { endpoint: "honest".into(), ..AveragingData::default() };
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
    let (_client, connection) = raw::connect(server.endpoint()).await;

    let watermark = Watermark::start();
    let cases =
        [(JOIN, u32::MAX), (AGGREGATE, u32::MAX - 1), (DOWNLOAD, u32::MAX - 1), (AGGREGATE, CAP as u32 + 1)];
    for (method, len) in cases {
        // The hostile caller keeps its side open: the refusal must not wait for the bytes.
        let (_send, mut recv) = raw::call(&connection, &raw::framed(method, len, b"x"), false).await;
        let end = within("the refusal", raw::read_end(&mut recv)).await;
        assert_eq!(end.too_large(), (u64::from(len), CAP as u64), "method {method}");
    }
    assert_bounded(&watermark, "4 GiB length prefixes");

    let errors = server.service.errors();
    assert_eq!(errors.len(), 2, "each aggregate handler hears of its refused request: {errors:?}");
    for e in errors {
        assert!(matches!(e, Error::MessageTooLarge { limit: CAP, .. }), "{e:?}");
    }
    honest_call(server.endpoint()).await;
}

#[tokio::test]
async fn an_announced_message_costs_only_the_bytes_that_arrive() {
    const STREAMS: usize = 64;
    let _serial = SERIAL.lock().await;
    let server = Served::start(SHORT_FIRST_REQUEST).await;
    let (_client, connection) = raw::connect(server.endpoint()).await;

    // Each stream announces a message of exactly the cap, sends 1 KiB of it and goes quiet.
    let watermark = Watermark::start();
    let mut calls = Vec::new();
    for i in 0..STREAMS {
        let method = if i % 2 == 0 { JOIN } else { AGGREGATE };
        calls.push(raw::call(&connection, &raw::framed(method, CAP as u32, &[0xAB; 1024]), false).await);
    }
    for (i, (_send, recv)) in calls.iter_mut().enumerate() {
        let end = within("the first-request timeout", raw::read_end(recv)).await;
        let text = end.remote_text();
        assert!(text.contains("first request timed out"), "stream {i}: {text}");
    }
    assert_bounded(&watermark, &format!("{STREAMS} streams announcing {CAP} bytes each"));

    let errors = server.service.errors();
    assert_eq!(errors.len(), STREAMS / 2, "{errors:?}");
    assert!(errors.iter().all(|e| matches!(e, Error::Timeout { .. })), "{errors:?}");
    honest_call(server.endpoint()).await;
}

#[tokio::test]
async fn garbage_streams_get_clear_errors_and_the_server_keeps_serving() {
    const RANDOM_STREAMS: u64 = 200;
    let _serial = SERIAL.lock().await;
    let server = Served::start(Duration::from_secs(30)).await;
    let (_client, connection) = raw::connect(server.endpoint()).await;
    let watermark = Watermark::start();

    for method in [0, 4, 0x7F, 0xFF] {
        let (_send, mut recv) = raw::call(&connection, &[method, 1, 2, 3, 4, 5], true).await;
        let text = within("the refusal of a bad method", raw::read_end(&mut recv)).await.remote_text();
        assert!(text.contains(&format!("unknown method byte {method}")), "{text}");
    }

    // A well-framed payload that is no protobuf: 0xFF bytes are an endless varint.
    let garbage = [0xFF; 64];
    for method in [JOIN, AGGREGATE, DOWNLOAD] {
        let (_send, mut recv) = raw::call(&connection, &raw::framed(method, 64, &garbage), true).await;
        let text = within("the refusal of garbage", raw::read_end(&mut recv)).await.remote_text();
        assert!(text.contains("undecodable"), "method {method}: {text}");
    }
    let errors = server.service.errors();
    assert!(
        matches!(errors.as_slice(), [Error::Transport(text)] if text.contains("undecodable")),
        "the aggregate handler hears of the garbage: {errors:?}"
    );

    // Random bytes: whatever they say, each stream ends (an error, a reset, or an answer) and
    // nothing panics or grows.
    let mut rng = StdRng::seed_from_u64(0x5EED_0B5E);
    for case in 0..RANDOM_STREAMS {
        let mut bytes = vec![0u8; rng.random_range(1..2048)];
        rng.fill(&mut bytes[..]);
        let (_send, mut recv) = raw::call(&connection, &bytes, true).await;
        let end = within(&format!("random stream {case}"), raw::read_end(&mut recv)).await;
        if let End::Broken(reason) = &end {
            assert!(
                !reason.contains("connection lost"),
                "random stream {case} killed the connection: {end:?}"
            );
        }
    }
    assert_bounded(&watermark, "garbage streams");
    honest_call(server.endpoint()).await;
}

#[tokio::test]
async fn silent_streams_are_timed_out_while_an_honest_client_is_served() {
    const CONNECTIONS: usize = 4;
    const STREAMS: usize = 25;
    let _serial = SERIAL.lock().await;
    let server = Served::start(SHORT_FIRST_REQUEST).await;
    let watermark = Watermark::start();

    // On each connection, odd streams send a method byte and nothing more; even streams send
    // nothing at all, and reach the server only because a later stream did (QUIC opens every
    // lower stream with it).
    let mut connections = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, connection) = raw::connect(server.endpoint()).await;
        for i in 0..STREAMS {
            let (mut send, recv) = connection.open_bi().await.expect("a stream");
            if i % 2 == 1 || i == STREAMS - 1 {
                let method = [JOIN, AGGREGATE, DOWNLOAD][i % 3];
                send.write_all(&[method]).await.expect("the method byte");
            }
            calls.push((send, recv));
        }
        connections.push((client, connection));
    }

    honest_call(server.endpoint()).await;

    for (i, (_send, recv)) in calls.iter_mut().enumerate() {
        let text = within("the first-request timeout", raw::read_end(recv)).await.remote_text();
        assert!(text.contains("timed out"), "stream {i}: {text}");
    }
    assert_bounded(&watermark, &format!("{} silent streams", CONNECTIONS * STREAMS));
    honest_call(server.endpoint()).await;
}

#[tokio::test]
async fn an_impostor_behind_a_pinned_endpoint_is_refused_and_poisons_nothing() {
    let _serial = SERIAL.lock().await;
    let genuine = Served::start(Duration::from_secs(30)).await;
    let impostor = Served::start(Duration::from_secs(30)).await;
    let (_, genuine_pin) = genuine.endpoint().split_once('#').expect("a pinned endpoint");
    let (impostor_address, impostor_pin) = impostor.endpoint().split_once('#').expect("a pinned endpoint");

    // The genuine peer's endpoint, as another peer advertised it, but the impostor answers there.
    let client = QuicTransport::default();
    let forged = format!("{impostor_address}#{genuine_pin}");
    let error = within("the refused dial", client.connect(&forged)).await.err().expect("a pin mismatch");
    let text = error.to_string();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(text.contains("pin mismatch"), "refused by the pin, not by a timeout: {text}");
    assert!(text.contains(genuine_pin) && text.contains(impostor_pin), "names both fingerprints: {text}");

    // Nothing of the refusal sticks: the same transport reaches both peers at their own pins, and
    // the impostor still serves honest callers.
    let again = within("the refused dial, again", client.connect(&forged)).await;
    assert!(again.is_err(), "a refused dial is never cached as a success");
    for endpoint in [genuine.endpoint(), impostor.endpoint()] {
        within("a dial at the right pin", client.connect(endpoint)).await.expect("the right pin connects");
        honest_call(endpoint).await;
    }

    // An endpoint's own pin wins over the settings' pin.
    let settings = QuicSettings { pin: Some(impostor_pin.to_string()), ..QuicSettings::default() };
    let pinned = QuicTransport::with_settings(settings).expect("valid settings");
    within("a dial at the endpoint's pin", pinned.connect(genuine.endpoint()))
        .await
        .expect("the endpoint pin wins");
}
