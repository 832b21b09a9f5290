//! The [`Transport`] conformance suite (protocol 2.2): one `pub async fn` per promise of the trait, and
//! [`transport_suite!`](crate::transport_suite) to turn them into tests.
//!
//! ```
//! # use std::sync::Arc;
//! # use averager_core::transport::{MemoryTransport as MyTransport, Transport};
//! averager_conformance::transport_suite!(my_transport, || async {
//!     Arc::new(MyTransport::default()) as Arc<dyn Transport>
//! });
//! # fn main() {}
//! ```
//!
//! The factory makes one transport per peer; a case calls it several times (a server peer and a
//! client peer at least), and the peers it makes must reach each other. Waits that must end
//! "promptly" are bounded by [`PROMPT`]; no case sleeps to synchronise.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use averager_core::Error;
use averager_core::proto::{AveragingData, DownloadData, DownloadRequest, JoinRequest};
use averager_core::transport::{AveragingClient, MessageStream, RequestStream, ServerHandle, Transport};
use futures::{StreamExt, stream};
use tokio::sync::mpsc;

use crate::{Failure, Outcome, ensure};

mod messages;
mod service;

use self::messages::{
    download_metadata_len, filler, full_download, full_join_request, full_leader_message, full_part,
    join_gather_len, numbered_download, sized_part, tagged_part,
};
use self::service::{AggregateScript, DownloadScript, DropSignal, JoinScript, TestService};

/// How long anything that must happen "promptly" may take before a case fails.
pub const PROMPT: Duration = Duration::from_secs(10);

/// The largest message the cap cases build: with a larger `max_message_bytes`, the at-the-cap case
/// sends a message of this size instead, and the over-the-cap cases are skipped (too costly).
pub const LARGEST_TESTED_MESSAGE: usize = 32 * 1024 * 1024;

/// Makes the transports of a case's peers: one per call.
pub trait TransportFactory {
    /// A new transport, for one new peer.
    fn make(&self) -> impl Future<Output = Arc<dyn Transport>>;

    /// An endpoint of the transport's scheme that nobody serves, if the backend can name one;
    /// without it, the never-served case dials the endpoint of a peer that served, shut down and
    /// was dropped.
    fn unserved_endpoint(&self) -> Option<String> {
        None
    }
}

impl<F, Fut> TransportFactory for F
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    fn make(&self) -> impl Future<Output = Arc<dyn Transport>> {
        self()
    }
}

/// A factory that also names an endpoint nobody serves (see
/// [`TransportFactory::unserved_endpoint`]).
#[derive(Debug, Clone)]
pub struct WithUnservedEndpoint<F> {
    factory: F,
    endpoint: String,
}

impl<F> WithUnservedEndpoint<F> {
    /// `factory`, with `endpoint` as the never-served endpoint.
    pub fn new(factory: F, endpoint: impl Into<String>) -> Self {
        WithUnservedEndpoint { factory, endpoint: endpoint.into() }
    }
}

impl<F, Fut> TransportFactory for WithUnservedEndpoint<F>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    fn make(&self) -> impl Future<Output = Arc<dyn Transport>> {
        (self.factory)()
    }

    fn unserved_endpoint(&self) -> Option<String> {
        Some(self.endpoint.clone())
    }
}

/// The suite's case list, written once: passes it to `$callback` (the shared test-module and
/// run-all expanders).
#[doc(hidden)]
#[macro_export]
macro_rules! __transport_cases {
    ($callback:ident ! { $($args:tt)* }) => {
        $crate::$callback! { $($args)* [
            join_group_round_trips_every_field,
            aggregate_part_round_trips_every_field,
            download_state_round_trips_every_field,
            download_state_streams_many_messages,
            aggregate_part_is_full_duplex,
            concurrent_calls_reach_their_callers,
            message_at_the_cap_passes,
            oversize_request_is_message_too_large if small_message_cap,
            oversize_response_is_message_too_large if small_message_cap,
            dropping_the_response_stream_cancels_the_handler,
            server_ending_its_stream_stops_the_request_stream,
            handler_error_reaches_the_caller,
            call_to_a_stopped_endpoint_fails_fast,
            call_to_a_never_served_endpoint_fails_fast,
            malformed_endpoint_fails_at_connect,
            authenticated_peer_is_reported if authenticated,
        ] }
    };
}

/// Expands to one `#[test]` per case of the transport suite, in a module named `$name`.
///
/// `$factory` is an expression implementing
/// [`TransportFactory`](crate::transport::TransportFactory), usually a closure
/// `|| async { Arc::new(MyTransport::new()) as Arc<dyn Transport> }`; names in scope where the
/// macro is called are visible to it. Add `unserved_endpoint = "..."` to name an endpoint of the
/// scheme that nobody serves (see
/// [`TransportFactory::unserved_endpoint`](crate::transport::TransportFactory::unserved_endpoint)).
#[macro_export]
///
/// Cases that only some transports can pass name a requirement: `authenticated`
/// (`capabilities().authenticated`) and `small_message_cap` (a `max_message_bytes` of at most
/// [`LARGEST_TESTED_MESSAGE`](crate::transport::LARGEST_TESTED_MESSAGE), so that sending one byte more is affordable). A transport without
/// one adds, after the factory (and after `unserved_endpoint`, if given), `lacks: [authenticated]`;
/// `cargo test` then reports those cases as ignored.
macro_rules! transport_suite {
    ($name:ident, $factory:expr, unserved_endpoint = $endpoint:expr $(, lacks: $lacks:tt)? $(,)?) => {
        $crate::transport_suite!($name, $crate::transport::WithUnservedEndpoint::new($factory, $endpoint) $(, lacks: $lacks)?);
    };
    ($name:ident, $factory:expr $(, lacks: [$($lack:ident),* $(,)?])? $(,)?) => {
        $crate::__transport_cases! { __suite_tests! { transport, $name, $factory, [$($($lack),*)?], } }
    };
}

/// Whether the transport declares `requirement`: `authenticated` or `small_message_cap` (see
/// [`transport_suite!`](crate::transport_suite)).
///
/// # Errors
/// A [`Failure`] for another name.
pub async fn declares(factory: &impl TransportFactory, requirement: &str) -> Result<bool, Failure> {
    let capabilities = factory.make().await.capabilities();
    match requirement {
        "authenticated" => Ok(capabilities.authenticated),
        "small_message_cap" => Ok(capabilities.max_message_bytes <= LARGEST_TESTED_MESSAGE),
        other => Err(crate::unknown_requirement("transport", other, &["authenticated", "small_message_cap"])),
    }
}

/// Runs every case in turn on the current runtime, returning each case's name and outcome.
pub async fn run_all(factory: &impl TransportFactory) -> Vec<(&'static str, Outcome)> {
    crate::__transport_cases! { __suite_run_all! { transport, factory, } }
}

// ---------------------------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------------------------

/// `rpc_join_group` carries its request and every reply with every field intact, and the reply
/// stream ends when the handler's does.
pub async fn join_group_round_trips_every_field(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;
    let replies = vec![full_leader_message(1), full_leader_message(2)];
    peers.service.script().join = JoinScript::Replies(replies.clone());
    let request = full_join_request(7);
    let (got, end) = collect(peers.client.rpc_join_group(request.clone())).await?;
    ensure!(end.is_none(), "rpc_join_group ended with an error: {end:?}");
    ensure!(got == replies, "rpc_join_group replies arrived changed: sent {replies:?}, got {got:?}");
    let seen = peers.service.log().join_requests.clone();
    ensure!(seen == vec![request.clone()], "the handler saw {seen:?} instead of the request {request:?}");
    Ok(())
}

/// `rpc_aggregate_part` carries every request and reply with every field intact, and the reply
/// stream ends cleanly after the caller's input ends and the handler finishes.
pub async fn aggregate_part_round_trips_every_field(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;
    let sent: Vec<AveragingData> = (0..5).map(full_part).collect();
    let (got, end) = collect(peers.client.rpc_aggregate_part(request_stream(sent.clone()))).await?;
    ensure!(end.is_none(), "rpc_aggregate_part ended with an error: {end:?}");
    ensure!(got == sent, "rpc_aggregate_part echoes arrived changed: sent {sent:?}, got {got:?}");
    let seen = peers.service.log().parts.clone();
    ensure!(seen == sent, "the handler saw {seen:?} instead of the requests {sent:?}");
    Ok(())
}

/// `rpc_download_state` carries its request and every reply with every field intact.
pub async fn download_state_round_trips_every_field(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;
    let replies = vec![full_download(1), full_download(2), full_download(3)];
    peers.service.script().download = DownloadScript::Replies(replies.clone());
    let (got, end) = collect(peers.client.rpc_download_state(DownloadRequest {})).await?;
    ensure!(end.is_none(), "rpc_download_state ended with an error: {end:?}");
    ensure!(got == replies, "rpc_download_state replies arrived changed: sent {replies:?}, got {got:?}");
    ensure!(peers.service.log().downloads == 1, "the handler did not see exactly one download request");
    Ok(())
}

/// A server stream of many large messages (200 of 64 KiB) arrives complete and in order.
pub async fn download_state_streams_many_messages(factory: &impl TransportFactory) -> Outcome {
    const COUNT: usize = 200;
    const SIZE: usize = 64 * 1024;
    let peers = Peers::start(factory).await?;
    let replies: Vec<DownloadData> = (0..COUNT).map(|i| numbered_download(i, SIZE)).collect();
    peers.service.script().download = DownloadScript::Replies(replies.clone());
    let (got, end) = collect(peers.client.rpc_download_state(DownloadRequest {})).await?;
    ensure!(end.is_none(), "the stream of {COUNT} messages ended with an error: {end:?}");
    ensure!(got.len() == COUNT, "{} of {COUNT} streamed messages arrived", got.len());
    for (i, (got, sent)) in got.iter().zip(&replies).enumerate() {
        ensure!(got == sent, "streamed message {i} arrived changed or out of order");
    }
    Ok(())
}

/// `rpc_aggregate_part` streams both ways at once: the caller sends request k+1 only after it
/// received the reply to request k, which works only if neither side waits for the other's end.
pub async fn aggregate_part_is_full_duplex(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;
    let (tx, requests) = channel_requests();
    let mut replies =
        within("rpc_aggregate_part to start", peers.client.rpc_aggregate_part(requests)).await??;
    for k in 0..10 {
        let part = full_part(k);
        ensure!(tx.send(part.clone()).is_ok(), "the transport dropped the request stream after {k} messages");
        match next_within(&mut replies, &format!("the reply to request {k} (before request {})", k + 1))
            .await?
        {
            Some(Ok(reply)) => ensure!(reply == part, "reply {k} arrived changed"),
            other => return Err(Failure::new(format!("reply {k}: expected a message, got {other:?}"))),
        }
    }
    drop(tx);
    match next_within(&mut replies, "the end of the reply stream after the input ended").await? {
        None => Ok(()),
        other => Err(Failure::new(format!("expected the reply stream to end, got {other:?}"))),
    }
}

/// Many calls at once (16 `rpc_aggregate_part` calls over one client) each get their own replies.
pub async fn concurrent_calls_reach_their_callers(factory: &impl TransportFactory) -> Outcome {
    const CALLS: usize = 16;
    const MESSAGES: usize = 8;
    let peers = Peers::start(factory).await?;
    let calls = (0..CALLS).map(|caller| {
        let client = peers.client.clone();
        async move {
            let sent: Vec<AveragingData> = (0..MESSAGES).map(|k| tagged_part(caller, k)).collect();
            let (got, end) = collect(client.rpc_aggregate_part(request_stream(sent.clone()))).await?;
            ensure!(end.is_none(), "concurrent call {caller} ended with an error: {end:?}");
            ensure!(got == sent, "concurrent call {caller} got replies that are not its own: {got:?}");
            Ok(())
        }
    });
    futures::future::join_all(calls).await.into_iter().collect()
}

/// A message of exactly `capabilities().max_message_bytes` (or [`LARGEST_TESTED_MESSAGE`], if
/// smaller) crosses in both directions.
pub async fn message_at_the_cap_passes(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;
    let size = peers.cap().min(LARGEST_TESTED_MESSAGE);
    let part = sized_part(size)?;
    let (got, end) = collect(peers.client.rpc_aggregate_part(request_stream(vec![part.clone()]))).await?;
    ensure!(end.is_none(), "a message of {size} bytes (the cap) failed: {end:?}");
    ensure!(got.len() == 1, "a message of {size} bytes (the cap) was not echoed: {} replies", got.len());
    ensure!(got[0] == part, "a message of {size} bytes (the cap) arrived changed");
    Ok(())
}

/// A request over the cap fails the call with [`Error::MessageTooLarge`] (from the call or as an
/// item of the reply stream) without reaching the handler, and the server still serves.
/// Needs `small_message_cap`: a cap of at most
/// [`LARGEST_TESTED_MESSAGE`].
pub async fn oversize_request_is_message_too_large(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;
    let cap = peers.cap();
    if cap > LARGEST_TESTED_MESSAGE {
        return Ok(());
    }
    let part = sized_part(cap + 1)?;
    let oversize_buffer = part.tensor_part.as_ref().map_or(0, |t| t.buffer.len());
    let (_, end) = collect(peers.client.rpc_aggregate_part(request_stream(vec![part]))).await?;
    ensure!(
        matches!(end, Some(Error::MessageTooLarge { .. })),
        "an rpc_aggregate_part request of {} bytes (cap {cap}) gave {end:?}, not MessageTooLarge",
        cap + 1
    );
    let oversize_seen = peers.service.log().part_buffer_lens.contains(&oversize_buffer);
    ensure!(!oversize_seen, "the handler received a request over the cap");

    let request = JoinRequest { gather: filler(join_gather_len(cap + 1)), ..Default::default() };
    let (_, end) = collect(peers.client.rpc_join_group(request)).await?;
    ensure!(
        matches!(end, Some(Error::MessageTooLarge { .. })),
        "an rpc_join_group request over the cap gave {end:?}, not MessageTooLarge"
    );
    ensure!(peers.service.log().join_requests.is_empty(), "the handler received a join request over the cap");
    server_still_serves(&peers).await
}

/// A reply over the cap gives the caller an [`Error::MessageTooLarge`] item and ends the call, and
/// the server still serves. Needs `small_message_cap`: a cap of at most [`LARGEST_TESTED_MESSAGE`].
pub async fn oversize_response_is_message_too_large(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;
    let cap = peers.cap();
    if cap > LARGEST_TESTED_MESSAGE {
        return Ok(());
    }
    let big = DownloadData { metadata: filler(download_metadata_len(cap + 1)), tensor_part: None };
    peers.service.script().download = DownloadScript::Replies(vec![full_download(0), big]);
    let (got, end) = collect(peers.client.rpc_download_state(DownloadRequest {})).await?;
    ensure!(
        matches!(end, Some(Error::MessageTooLarge { .. })),
        "a reply of {} bytes (cap {cap}) gave {end:?}, not MessageTooLarge",
        cap + 1
    );
    ensure!(got.len() <= 1, "the caller received a reply over the cap");
    server_still_serves(&peers).await
}

/// Dropping the caller's reply stream cancels the call on the server promptly: the handler's
/// reply stream is dropped (for `rpc_download_state` and `rpc_aggregate_part`).
pub async fn dropping_the_response_stream_cancels_the_handler(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;

    let (guard, dropped) = DropSignal::new();
    peers.service.script().download = DownloadScript::Endless { size: 1024, guard: Some(guard) };
    let mut replies =
        within("rpc_download_state to start", peers.client.rpc_download_state(DownloadRequest {})).await??;
    match next_within(&mut replies, "the first message of an endless download").await? {
        Some(Ok(_)) => {}
        other => return Err(Failure::new(format!("expected a message, got {other:?}"))),
    }
    drop(replies);
    ensure!(
        tokio::time::timeout(PROMPT, dropped).await.is_ok(),
        "the handler's rpc_download_state stream was not dropped within {PROMPT:?} of the caller dropping its stream"
    );

    let (guard, dropped) = DropSignal::new();
    peers.service.script().aggregate = AggregateScript::Echo { guard: Some(guard) };
    let (tx, requests) = channel_requests();
    let mut replies =
        within("rpc_aggregate_part to start", peers.client.rpc_aggregate_part(requests)).await??;
    ensure!(tx.send(full_part(0)).is_ok(), "the transport dropped the request stream at once");
    match next_within(&mut replies, "the echo of the first request").await? {
        Some(Ok(_)) => {}
        other => return Err(Failure::new(format!("expected a message, got {other:?}"))),
    }
    drop(replies);
    ensure!(
        tokio::time::timeout(PROMPT, dropped).await.is_ok(),
        "the handler's rpc_aggregate_part stream was not dropped within {PROMPT:?} of the caller dropping its stream"
    );
    Ok(())
}

/// When the handler's reply stream ends, the call ends for the caller: its reply stream ends
/// cleanly and its request stream (still open) is dropped promptly.
pub async fn server_ending_its_stream_stops_the_request_stream(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;
    peers.service.script().aggregate = AggregateScript::ReplyOnce;
    let (guard, dropped) = DropSignal::new();
    let requests: RequestStream<AveragingData> =
        Box::pin(stream::iter(vec![full_part(0)]).chain(stream::pending()).map(move |part| {
            let _keep = &guard;
            part
        }));
    let mut replies =
        within("rpc_aggregate_part to start", peers.client.rpc_aggregate_part(requests)).await??;
    match next_within(&mut replies, "the one reply").await? {
        Some(Ok(reply)) => ensure!(reply == full_part(0), "the one reply arrived changed"),
        other => return Err(Failure::new(format!("expected the one reply, got {other:?}"))),
    }
    match next_within(&mut replies, "the end of the reply stream after the handler ended").await? {
        None => {}
        other => return Err(Failure::new(format!("expected the reply stream to end, got {other:?}"))),
    }
    ensure!(
        tokio::time::timeout(PROMPT, dropped).await.is_ok(),
        "the caller's request stream was not dropped within {PROMPT:?} of the handler ending the call"
    );
    Ok(())
}

/// A handler that returns an error reaches the caller as an error (from the call or as an item),
/// for each RPC.
pub async fn handler_error_reaches_the_caller(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;
    let refusal = || Error::Internal("refused by the conformance service".into());
    {
        let mut script = peers.service.script();
        script.join = JoinScript::Fail(refusal());
        script.aggregate = AggregateScript::Fail(refusal());
        script.download = DownloadScript::Fail(refusal());
    }
    let (_, end) = collect(peers.client.rpc_join_group(full_join_request(0))).await?;
    ensure!(end.is_some(), "a failing rpc_join_group handler did not reach the caller as an error");
    let (_, end) = collect(peers.client.rpc_aggregate_part(request_stream(vec![full_part(0)]))).await?;
    ensure!(end.is_some(), "a failing rpc_aggregate_part handler did not reach the caller as an error");
    let (_, end) = collect(peers.client.rpc_download_state(DownloadRequest {})).await?;
    ensure!(end.is_some(), "a failing rpc_download_state handler did not reach the caller as an error");
    Ok(())
}

/// A call to an endpoint that was served and then shut down fails with an error within
/// [`PROMPT`] (at connect or at the call), never hangs.
pub async fn call_to_a_stopped_endpoint_fails_fast(factory: &impl TransportFactory) -> Outcome {
    let server = factory.make().await;
    let client_transport = factory.make().await;
    let handle = within("serve", server.serve(TestService::new())).await??;
    let endpoint = handle.endpoint().to_string();
    handle.shutdown();
    dial_fails(&*client_transport, &endpoint).await
}

/// A call to an endpoint nobody ever served fails with an error within [`PROMPT`] (at connect or
/// at the call). Without [`TransportFactory::unserved_endpoint`], the endpoint is that of a peer
/// that served, shut down and was dropped.
pub async fn call_to_a_never_served_endpoint_fails_fast(factory: &impl TransportFactory) -> Outcome {
    let endpoint = match factory.unserved_endpoint() {
        Some(endpoint) => endpoint,
        None => {
            let gone = factory.make().await;
            let handle = within("serve", gone.serve(TestService::new())).await??;
            let endpoint = handle.endpoint().to_string();
            handle.shutdown();
            drop(gone);
            endpoint
        }
    };
    let client_transport = factory.make().await;
    dial_fails(&*client_transport, &endpoint).await
}

/// `connect` refuses at once (within [`PROMPT`]) an endpoint with no scheme, one of another
/// scheme, and an empty one.
pub async fn malformed_endpoint_fails_at_connect(factory: &impl TransportFactory) -> Outcome {
    let transport = factory.make().await;
    let other_scheme = format!("not{}://somewhere", transport.scheme());
    for endpoint in ["no-scheme-here", "", "://nowhere", other_scheme.as_str()] {
        let result = within(&format!("connect({endpoint:?})"), transport.connect(endpoint)).await?;
        ensure!(
            result.is_err(),
            "connect({endpoint:?}) succeeded; a malformed endpoint must be an error at connect"
        );
    }
    Ok(())
}

/// When `capabilities().authenticated`, served calls carry `CallContext::authenticated_peer`
/// (needs `authenticated`).
pub async fn authenticated_peer_is_reported(factory: &impl TransportFactory) -> Outcome {
    let peers = Peers::start(factory).await?;
    if !peers.client_transport.capabilities().authenticated {
        return Ok(());
    }
    let (_, end) = collect(peers.client.rpc_download_state(DownloadRequest {})).await?;
    ensure!(end.is_none(), "rpc_download_state failed: {end:?}");
    let contexts = peers.service.log().contexts.clone();
    ensure!(!contexts.is_empty(), "the handler saw no call");
    ensure!(
        contexts.iter().all(|c| c.authenticated_peer.is_some()),
        "an authenticated transport served a call without authenticated_peer: {contexts:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// A server peer serving a [`TestService`], and a client peer connected to it.
struct Peers {
    service: Arc<TestService>,
    client_transport: Arc<dyn Transport>,
    client: Arc<dyn AveragingClient>,
    // Kept so the server lives as long as the case.
    _server_transport: Arc<dyn Transport>,
    _handle: ServerHandle,
}

impl Peers {
    async fn start(factory: &impl TransportFactory) -> Result<Peers, Failure> {
        let server_transport = factory.make().await;
        let client_transport = factory.make().await;
        let service = TestService::new();
        let handle = within("serve", server_transport.serve(service.clone())).await??;
        let client = within("connect", client_transport.connect(handle.endpoint())).await??;
        Ok(Peers { service, client_transport, client, _server_transport: server_transport, _handle: handle })
    }

    /// The cap both peers honour.
    fn cap(&self) -> usize {
        self.client_transport.capabilities().max_message_bytes
    }
}

/// A normal call works after a failed one.
async fn server_still_serves(peers: &Peers) -> Outcome {
    peers.service.script().aggregate = AggregateScript::Echo { guard: None };
    let sent = vec![full_part(9)];
    let (got, end) = collect(peers.client.rpc_aggregate_part(request_stream(sent.clone()))).await?;
    ensure!(end.is_none() && got == sent, "a normal call after an oversize one failed: {end:?}");
    Ok(())
}

/// Connecting to `endpoint` or calling it fails within [`PROMPT`].
async fn dial_fails(transport: &dyn Transport, endpoint: &str) -> Outcome {
    let attempt = async {
        let client = match transport.connect(endpoint).await {
            Ok(client) => client,
            Err(_) => return Ok(()),
        };
        match collect_unbounded(client.rpc_join_group(full_join_request(0))).await {
            (_, Some(_)) => Ok(()),
            (got, None) => {
                Err(Failure::new(format!("a call to {endpoint} succeeded with {} replies", got.len())))
            }
        }
    };
    match tokio::time::timeout(PROMPT, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Failure::new(format!("a call to {endpoint} did not fail within {PROMPT:?}"))),
    }
}

/// Bounds `fut` by [`PROMPT`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, Failure> {
    tokio::time::timeout(PROMPT, fut)
        .await
        .map_err(|_| Failure::new(format!("{what} did not finish within {PROMPT:?}")))
}

/// The next item of `stream`, bounded by [`PROMPT`].
async fn next_within<T>(
    stream: &mut MessageStream<T>,
    what: &str,
) -> Result<Option<averager_core::Result<T>>, Failure> {
    within(what, stream.next()).await
}

/// Makes a call and reads its replies until the end or the first error (each step bounded by
/// [`PROMPT`]); an error from the call itself counts as the first error.
async fn collect<T>(
    call: impl Future<Output = averager_core::Result<MessageStream<T>>>,
) -> Result<(Vec<T>, Option<Error>), Failure> {
    let mut replies = match within("the call to start", call).await? {
        Ok(replies) => replies,
        Err(e) => return Ok((Vec::new(), Some(e))),
    };
    let mut got = Vec::new();
    loop {
        match next_within(&mut replies, &format!("reply {} (or the end of the stream)", got.len())).await? {
            None => return Ok((got, None)),
            Some(Ok(reply)) => got.push(reply),
            Some(Err(e)) => return Ok((got, Some(e))),
        }
    }
}

/// Like [`collect`], with no bound of its own.
async fn collect_unbounded<T>(
    call: impl Future<Output = averager_core::Result<MessageStream<T>>>,
) -> (Vec<T>, Option<Error>) {
    let mut replies = match call.await {
        Ok(replies) => replies,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut got = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply {
            Ok(reply) => got.push(reply),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

fn request_stream(parts: Vec<AveragingData>) -> RequestStream<AveragingData> {
    Box::pin(stream::iter(parts))
}

/// A request stream fed by the returned sender; it ends when the sender is dropped.
fn channel_requests() -> (mpsc::UnboundedSender<AveragingData>, RequestStream<AveragingData>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let requests = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|part| (part, rx)) });
    (tx, Box::pin(requests))
}
