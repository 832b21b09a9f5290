//! Hostile callers against a gRPC server: length prefixes far over the cap, messages announced
//! but never sent, garbage on raw sockets and inside well-formed gRPC frames, and connections and
//! streams that never say anything.
//!
//! Each test checks that the side that behaves gets a clear error, that the server's heap stays
//! bounded while the hostile caller works (a counting global allocator measures the peak of live
//! bytes above the level before the hostile phase), and that the server still serves an honest
//! client afterwards. Tests run one at a time, as the allocation count is process-wide.

mod raw;

use std::sync::Arc;
use std::time::Duration;

use averager_core::Error;
use averager_core::transport::{
    AveragingData, DEFAULT_MAX_MESSAGE_BYTES, DownloadData, DownloadRequest, ServerHandle, Transport,
};
use averager_transport_grpc::{GrpcSettings, GrpcTransport};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw::{AGGREGATE, DEADLINE_EXCEEDED, DOWNLOAD, End, JOIN, OUT_OF_RANGE, UNIMPLEMENTED};
use averager_conformance::hostile::{Counting, Echo, Watermark};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Serialises the tests of this binary, so one test's allocations never count in another's peak.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cap of every server here.
const CAP: usize = DEFAULT_MAX_MESSAGE_BYTES;

/// The most the server may allocate (live, at once) during a hostile phase.
const MEMORY_BOUND: usize = 64 << 20;

/// The most a client may allocate while a hostile server answers it: under the cap, so that a
/// single reservation of an announced length would show.
const CLIENT_MEMORY_BOUND: usize = 8 << 20;

/// A bound on waits that end on an event: generous, so a loaded machine does not fail a test.
const PATIENCE: Duration = Duration::from_secs(60);

/// The first-request timeout of servers whose tests wait for it to fire: long enough that the
/// honest client those servers also serve never comes near it, even on a loaded machine.
const SHORT_FIRST_REQUEST: Duration = Duration::from_secs(5);

/// A served [`Echo`].
struct Served {
    service: Arc<Echo>,
    handle: ServerHandle,
    _transport: GrpcTransport,
}

impl Served {
    async fn start(first_request_timeout: Duration) -> Served {
        let settings = GrpcSettings { first_request_timeout, ..GrpcSettings::default() };
        let transport = GrpcTransport::with_settings(settings).expect("valid settings");
        let service = Arc::new(Echo::default());
        let handle = transport.serve(service.clone()).await.expect("serve");
        Served { service, handle, _transport: transport }
    }

    fn endpoint(&self) -> &str {
        self.handle.endpoint()
    }

    fn address(&self) -> &str {
        self.endpoint().trim_start_matches("grpc://")
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
    let client = GrpcTransport::default();
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
    assert_bounded_by(watermark, phase, MEMORY_BOUND);
}

fn assert_bounded_by(watermark: &Watermark, phase: &str, bound: usize) {
    let peak = watermark.peak();
    eprintln!("{phase}: peak live heap above the start: {:.1} MiB", peak as f64 / f64::from(1 << 20));
    assert!(peak < bound, "{phase}: the heap grew by {peak} bytes (bound {bound})");
}

/// Reads `connection` until the server closes it (an end or an error).
async fn closed_by_the_server(connection: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    loop {
        match connection.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn a_length_prefix_of_4_gib_is_refused_before_anything_is_allocated() {
    let _serial = SERIAL.lock().await;
    let server = Served::start(Duration::from_secs(30)).await;
    let client = raw::connect(server.endpoint()).await;

    let watermark = Watermark::start();
    let cases = [(JOIN, u32::MAX), (AGGREGATE, u32::MAX), (DOWNLOAD, u32::MAX), (AGGREGATE, CAP as u32 + 1)];
    for (path, len) in cases {
        // The hostile caller keeps its side open: the refusal must not wait for the bytes.
        let (response, _send) = raw::call(&client, path, raw::frame(len, b"x"), false).await;
        let end = within("the refusal", raw::end(response)).await;
        let (code, message) = end.status();
        assert_eq!(code, OUT_OF_RANGE, "{path}: {end:?}");
        assert!(
            message.contains(&format!("found {len} bytes, the limit is: {CAP} bytes")),
            "{path}: {message}"
        );
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
    let client = raw::connect(server.endpoint()).await;

    // Each stream announces a message of exactly the cap, sends 1 KiB of it and goes quiet.
    let watermark = Watermark::start();
    let mut calls = Vec::new();
    for i in 0..STREAMS {
        let path = if i % 2 == 0 { JOIN } else { AGGREGATE };
        calls.push(raw::call(&client, path, raw::frame(CAP as u32, &[0xAB; 1024]), false).await);
    }
    for (i, (response, _send)) in calls.into_iter().enumerate() {
        let end = within("the first-request timeout", raw::end(response)).await;
        let (code, message) = end.status();
        assert_eq!(code, DEADLINE_EXCEEDED, "stream {i}: {end:?}");
        assert!(message.contains("first request"), "stream {i}: {message}");
    }
    assert_bounded(&watermark, &format!("{STREAMS} streams announcing {CAP} bytes each"));

    let errors = server.service.errors();
    assert_eq!(errors.len(), STREAMS / 2, "{errors:?}");
    assert!(errors.iter().all(|e| matches!(e, Error::Timeout { .. })), "{errors:?}");
    honest_call(server.endpoint()).await;
}

#[tokio::test]
async fn garbage_gets_clear_errors_and_the_server_keeps_serving() {
    const RANDOM_CONNECTIONS: u64 = 20;
    const RANDOM_STREAMS: u64 = 200;
    let _serial = SERIAL.lock().await;
    let server = Served::start(Duration::from_secs(30)).await;
    let watermark = Watermark::start();
    let mut rng = StdRng::seed_from_u64(0x5EED_0B5E);

    // Not HTTP/2 at all: the server closes the connection.
    let mut texts: Vec<Vec<u8>> =
        vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), vec![0; 100], vec![0xFF; 100]];
    for _ in 0..RANDOM_CONNECTIONS {
        let mut bytes = vec![0u8; rng.random_range(1..4096)];
        rng.fill(&mut bytes[..]);
        texts.push(bytes);
    }
    for bytes in texts {
        let mut connection = TcpStream::connect(server.address()).await.expect("a TCP connection");
        // The server may close before all of it is written.
        let _ = connection.write_all(&bytes).await;
        within("the close of a garbage connection", closed_by_the_server(&mut connection)).await;
    }

    // Well-formed gRPC frames around bytes that are no protobuf (0xFF is an endless varint).
    let client = raw::connect(server.endpoint()).await;
    for path in [JOIN, AGGREGATE, DOWNLOAD] {
        let (response, _send) = raw::call(&client, path, raw::frame(64, &[0xFF; 64]), true).await;
        let end = within("the refusal of garbage", raw::end(response)).await;
        let (code, message) = end.status();
        assert_ne!(code, 0, "{path}: {end:?}");
        assert!(message.contains("decode"), "{path}: {message}");
    }
    let errors = server.service.errors();
    assert!(
        matches!(errors.as_slice(), [Error::Transport(text)] if text.contains("decode")),
        "the aggregate handler hears of the garbage: {errors:?}"
    );
    let (response, _send) =
        raw::call(&client, "/DecentralizedAveraging/no_such_rpc", raw::frame(0, b""), true).await;
    assert_eq!(within("an unknown path", raw::end(response)).await.status().0, UNIMPLEMENTED);

    // Random request bodies on random calls: each call ends with a status, nothing panics or grows.
    for case in 0..RANDOM_STREAMS {
        let path = [JOIN, AGGREGATE, DOWNLOAD][rng.random_range(0..3)];
        let mut bytes = vec![0u8; rng.random_range(1..2048)];
        rng.fill(&mut bytes[..]);
        let (response, _send) = raw::call(&client, path, bytes, true).await;
        let end = within(&format!("random stream {case}"), raw::end(response)).await;
        assert!(matches!(end, End::Status { .. }), "random stream {case}: {end:?}");
    }
    assert_bounded(&watermark, "garbage connections and streams");
    honest_call(server.endpoint()).await;
}

#[tokio::test]
async fn silent_connections_and_streams_are_timed_out_while_an_honest_client_is_served() {
    const CONNECTIONS: usize = 100;
    const H2_CONNECTIONS: usize = 4;
    const STREAMS: usize = 25;
    let _serial = SERIAL.lock().await;
    let server = Served::start(SHORT_FIRST_REQUEST).await;
    let watermark = Watermark::start();

    // Connections that never send the HTTP/2 preface.
    let mut silent = Vec::new();
    for _ in 0..CONNECTIONS {
        silent.push(TcpStream::connect(server.address()).await.expect("a TCP connection"));
    }
    // Streams that send their headers and never a byte of request.
    let mut clients = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..H2_CONNECTIONS {
        let client = raw::connect(server.endpoint()).await;
        for i in 0..STREAMS {
            calls.push(raw::call(&client, [JOIN, AGGREGATE, DOWNLOAD][i % 3], Vec::new(), false).await);
        }
        clients.push(client);
    }

    honest_call(server.endpoint()).await;

    for (i, (response, _send)) in calls.into_iter().enumerate() {
        let end = within("the first-request timeout", raw::end(response)).await;
        assert_eq!(end.status().0, DEADLINE_EXCEEDED, "stream {i}: {end:?}");
    }
    for connection in &mut silent {
        within("the close of a silent connection", closed_by_the_server(connection)).await;
    }
    assert_bounded(
        &watermark,
        &format!("{CONNECTIONS} silent connections and {} silent streams", H2_CONNECTIONS * STREAMS),
    );
    honest_call(server.endpoint()).await;
}

/// The first reply (or error) of an `rpc_download_state` call to `endpoint`.
async fn first_download(
    client: &GrpcTransport,
    endpoint: &str,
) -> Option<averager_core::Result<DownloadData>> {
    let client = within("connect", client.connect(endpoint)).await.expect("connect");
    let mut replies =
        within("the call", client.rpc_download_state(DownloadRequest {})).await.expect("the call");
    within("the first reply", replies.next()).await
}

#[tokio::test]
async fn a_reply_that_announces_the_cap_costs_the_client_only_what_arrives() {
    const CALLS: usize = 16;
    let _serial = SERIAL.lock().await;
    // Each reply announces a message of exactly the cap, sends 1 KiB of it and ends the call.
    let truncated = raw::hostile_server(raw::frame(CAP as u32, &[0xAB; 1024])).await;
    let huge = raw::hostile_server(raw::frame(u32::MAX, b"x")).await;
    let client = GrpcTransport::default();

    let watermark = Watermark::start();
    let calls = (0..CALLS).map(|_| first_download(&client, &truncated));
    for (i, first) in futures::future::join_all(calls).await.into_iter().enumerate() {
        match first {
            Some(Err(Error::Transport(text))) if text.contains("ended inside a gRPC message") => {}
            other => panic!("call {i}: expected the truncation, got {other:?}"),
        }
    }
    match first_download(&client, &huge).await {
        Some(Err(Error::MessageTooLarge { size, limit })) => {
            assert_eq!((size, limit), (u32::MAX as usize, CAP));
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert_bounded_by(
        &watermark,
        &format!("{CALLS} replies announcing {CAP} bytes each"),
        CLIENT_MEMORY_BOUND,
    );
}
