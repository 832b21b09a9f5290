//! What the conformance suite does not cover: kill, names, reconnects, the cap choice,
//! back-pressure, and what the handler observes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, stream};
use tokio::sync::{mpsc, oneshot};

use super::*;

const PROMPT: Duration = Duration::from_secs(10);

/// Fires when dropped.
struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

fn drop_signal() -> (DropSignal, oneshot::Receiver<()>) {
    let (tx, rx) = oneshot::channel();
    (DropSignal(Some(tx)), rx)
}

/// A service whose download stream is endless (counting what it produced), whose aggregate handler
/// hands its request stream to the test and replies nothing, and whose join reply names `tag`.
struct Probe {
    tag: String,
    produced: Arc<AtomicUsize>,
    download_dropped: std::sync::Mutex<Option<DropSignal>>,
    handler_requests: mpsc::UnboundedSender<MessageStream<AveragingData>>,
}

impl Probe {
    fn new(tag: &str) -> (Arc<Probe>, mpsc::UnboundedReceiver<MessageStream<AveragingData>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let probe = Probe {
            tag: tag.into(),
            produced: Arc::default(),
            download_dropped: std::sync::Mutex::new(None),
            handler_requests: tx,
        };
        (Arc::new(probe), rx)
    }
}

#[async_trait]
impl AveragingService for Probe {
    async fn rpc_join_group(
        &self,
        _call: CallContext,
        _request: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        let reply = MessageFromLeader { suggested_leader: self.tag.clone(), ..Default::default() };
        Ok(Box::pin(stream::iter([Ok(reply)])))
    }

    async fn rpc_aggregate_part(
        &self,
        _call: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let _ = self.handler_requests.send(requests);
        Ok(Box::pin(stream::pending()))
    }

    async fn rpc_download_state(
        &self,
        _call: CallContext,
        _request: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        let produced = self.produced.clone();
        let guard = self.download_dropped.lock().unwrap().take();
        Ok(Box::pin(stream::iter(0..).map(move |i: u64| {
            let _keep = &guard;
            produced.fetch_add(1, Ordering::SeqCst);
            Ok(DownloadData { metadata: i.to_le_bytes().to_vec().into(), tensor_part: None })
        })))
    }
}

fn named(network: &Arc<MemoryNetwork>, name: &str) -> MemoryTransport {
    let settings = MemorySettings { name: Some(name.into()), ..MemorySettings::default() };
    MemoryTransport::with_settings(network.clone(), settings)
}

async fn leader_tag(client: &Arc<dyn AveragingClient>) -> Result<String> {
    let mut replies = client.rpc_join_group(JoinRequest::default()).await?;
    match replies.next().await {
        Some(Ok(reply)) => Ok(reply.suggested_leader),
        other => Err(Error::Internal(format!("unexpected {other:?}"))),
    }
}

#[tokio::test]
async fn a_named_peer_serves_at_its_name_and_a_second_server_of_that_name_is_refused() {
    let network = MemoryNetwork::new();
    let (probe, _) = Probe::new("a");
    let handle = named(&network, "alice").serve(probe.clone()).await.unwrap();
    assert_eq!(handle.endpoint(), "mem://alice");
    assert!(network.is_served("mem://alice"));
    let again = named(&network, "alice").serve(probe.clone()).await;
    assert!(matches!(again, Err(Error::Config(_))), "{again:?}");
    // Another network is another namespace.
    let other = named(&MemoryNetwork::new(), "alice").serve(probe).await.unwrap();
    assert_eq!(other.endpoint(), "mem://alice");
}

#[tokio::test]
async fn generated_names_are_unique_and_skip_taken_ones() {
    let network = MemoryNetwork::new();
    let (probe, _) = Probe::new("a");
    let taken = named(&network, "peer-0").serve(probe.clone()).await.unwrap();
    let transport = MemoryTransport::new(network.clone());
    let a = transport.serve(probe.clone()).await.unwrap();
    let b = transport.serve(probe).await.unwrap();
    assert_ne!(a.endpoint(), b.endpoint());
    assert_ne!(a.endpoint(), taken.endpoint());
}

#[tokio::test]
async fn connect_refuses_bad_endpoints_and_unserved_names() {
    let network = MemoryNetwork::new();
    let transport = MemoryTransport::new(network);
    for bad in ["alice", "grpc://alice", "mem://", "mem://a/b", "://alice"] {
        let result = transport.connect(bad).await;
        assert!(matches!(result, Err(Error::Config(_))), "{bad}: {:?}", result.err());
    }
    let result = transport.connect("mem://nobody").await;
    assert!(matches!(result, Err(Error::Unreachable { .. })), "{:?}", result.err());
}

#[tokio::test]
async fn kill_cuts_calls_in_flight_and_makes_the_peer_unreachable() {
    let network = MemoryNetwork::new();
    let (probe, mut handler_requests) = Probe::new("a");
    let (guard, download_dropped) = drop_signal();
    *probe.download_dropped.lock().unwrap() = Some(guard);
    let handle = named(&network, "victim").serve(probe).await.unwrap();
    let client = MemoryTransport::new(network.clone()).connect(handle.endpoint()).await.unwrap();

    let mut download = client.rpc_download_state(DownloadRequest {}).await.unwrap();
    assert!(matches!(download.next().await, Some(Ok(_))));
    let (request_dropped_guard, request_dropped) = drop_signal();
    let requests: RequestStream<AveragingData> = Box::pin(stream::pending().map(move |part| {
        let _keep = &request_dropped_guard;
        part
    }));
    let mut aggregate = client.rpc_aggregate_part(requests).await.unwrap();
    let mut handler_side = handler_requests.recv().await.unwrap();

    assert!(network.kill("mem://victim"));
    assert!(!network.kill("mem://victim"), "a second kill finds nobody");

    // The caller's streams end with an error (after any messages already buffered).
    let end = tokio::time::timeout(PROMPT, async {
        loop {
            match download.next().await {
                Some(Ok(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(end, Some(Err(Error::Unreachable { .. }))), "{end:?}");
    let end = tokio::time::timeout(PROMPT, aggregate.next()).await.unwrap();
    assert!(matches!(end, Some(Err(Error::Unreachable { .. }))), "{end:?}");
    // The handler's streams are dropped, so its input ends with an error, and the caller's
    // request stream is dropped.
    tokio::time::timeout(PROMPT, download_dropped).await.unwrap().unwrap();
    let handler_end = tokio::time::timeout(PROMPT, handler_side.next()).await.unwrap();
    assert!(matches!(handler_end, Some(Err(_))), "{handler_end:?}");
    tokio::time::timeout(PROMPT, request_dropped).await.unwrap().unwrap();

    // Later calls over the old client, and new connects, are refused.
    let later = client.rpc_download_state(DownloadRequest {}).await;
    assert!(matches!(later, Err(Error::Unreachable { .. })), "{:?}", later.err());
    let connect = MemoryTransport::new(network).connect("mem://victim").await;
    assert!(matches!(connect, Err(Error::Unreachable { .. })), "{:?}", connect.err());
    // Dropping the stale handle afterwards is harmless.
    drop(handle);
}

#[tokio::test]
async fn a_stopped_name_can_be_served_again_and_old_clients_reach_the_new_server() {
    let network = MemoryNetwork::new();
    let (first, _) = Probe::new("first");
    let handle = named(&network, "bob").serve(first).await.unwrap();
    let client = MemoryTransport::new(network.clone()).connect("mem://bob").await.unwrap();
    assert_eq!(leader_tag(&client).await.unwrap(), "first");
    handle.shutdown();
    assert!(matches!(leader_tag(&client).await, Err(Error::Unreachable { .. })));
    let (second, _) = Probe::new("second");
    let handle = named(&network, "bob").serve(second).await.unwrap();
    assert_eq!(leader_tag(&client).await.unwrap(), "second");
    drop(handle);
}

#[tokio::test]
async fn stopping_an_old_handle_does_not_stop_a_newer_server_of_the_same_name() {
    let network = MemoryNetwork::new();
    let (probe, _) = Probe::new("new");
    let old = named(&network, "carol").serve(probe.clone()).await.unwrap();
    network.kill("carol");
    let _new = named(&network, "carol").serve(probe).await.unwrap();
    drop(old);
    assert!(network.is_served("mem://carol"));
}

#[tokio::test]
async fn the_smaller_of_the_two_caps_applies() {
    let network = MemoryNetwork::new();
    let (probe, mut handler_requests) = Probe::new("a");
    let small =
        MemorySettings { name: Some("small".into()), max_message_bytes: 1000, ..MemorySettings::default() };
    let _handle = MemoryTransport::with_settings(network.clone(), small).serve(probe).await.unwrap();
    let client = MemoryTransport::new(network).connect("mem://small").await.unwrap();

    let request = JoinRequest { gather: vec![0; 2000].into(), ..Default::default() };
    let result = client.rpc_join_group(request).await;
    assert!(matches!(result, Err(Error::MessageTooLarge { limit: 1000, .. })), "{:?}", result.err());

    // An oversize aggregate request fails the caller's stream and ends the handler's input
    // with the same error.
    let part = AveragingData { metadata: vec![0; 2000].into(), ..Default::default() };
    let mut replies = client.rpc_aggregate_part(Box::pin(stream::iter([part]))).await.unwrap();
    let mut handler_side = handler_requests.recv().await.unwrap();
    let end = tokio::time::timeout(PROMPT, replies.next()).await.unwrap();
    assert!(matches!(end, Some(Err(Error::MessageTooLarge { limit: 1000, .. }))), "{end:?}");
    let handler_end = tokio::time::timeout(PROMPT, handler_side.next()).await.unwrap();
    assert!(matches!(handler_end, Some(Err(Error::MessageTooLarge { .. }))), "{handler_end:?}");
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_does_not_read_stalls_the_writer() {
    let network = MemoryNetwork::new();
    let (probe, _) = Probe::new("a");
    let settings = MemorySettings { channel_capacity: 3, ..MemorySettings::default() };
    let transport = MemoryTransport::with_settings(network, settings);
    let handle = transport.serve(probe.clone()).await.unwrap();
    let client = transport.connect(handle.endpoint()).await.unwrap();
    let _download = client.rpc_download_state(DownloadRequest {}).await.unwrap();
    // With the clock paused, this sleep returns only once every task is idle: the producer is
    // blocked, not merely slow.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let produced = probe.produced.load(Ordering::SeqCst);
    // The channel's capacity, plus one message held by the blocked sender, plus one in hand.
    assert!(produced <= 3 + 2, "an unread stream produced {produced} messages");
    assert!(produced >= 3, "the handler's stream was not polled ({produced} messages)");
}

#[tokio::test]
async fn the_caller_cancelling_ends_the_handlers_input_with_an_error() {
    let network = MemoryNetwork::new();
    let (probe, mut handler_requests) = Probe::new("a");
    let transport = MemoryTransport::new(network);
    let handle = transport.serve(probe).await.unwrap();
    let client = transport.connect(handle.endpoint()).await.unwrap();
    let part = AveragingData { weight: 1.0, ..Default::default() };
    let requests = Box::pin(stream::iter([part.clone()]).chain(stream::pending()));
    let replies = client.rpc_aggregate_part(requests).await.unwrap();
    let mut handler_side = handler_requests.recv().await.unwrap();
    assert_eq!(handler_side.next().await.unwrap().unwrap(), part);
    drop(replies);
    let end = tokio::time::timeout(PROMPT, handler_side.next()).await.unwrap();
    assert!(matches!(end, Some(Err(Error::Cancelled(_)))), "{end:?}");
}

#[tokio::test]
async fn a_clean_end_of_input_is_a_clean_end_for_the_handler() {
    let network = MemoryNetwork::new();
    let (probe, mut handler_requests) = Probe::new("a");
    let transport = MemoryTransport::new(network);
    let handle = transport.serve(probe).await.unwrap();
    let client = transport.connect(handle.endpoint()).await.unwrap();
    let parts = vec![AveragingData { weight: 1.0, ..Default::default() }; 2];
    let _replies = client.rpc_aggregate_part(Box::pin(stream::iter(parts.clone()))).await.unwrap();
    let handler_side = handler_requests.recv().await.unwrap();
    let got: Vec<_> = handler_side.collect().await;
    assert_eq!(got.into_iter().collect::<Result<Vec<_>>>().unwrap(), parts);
}

/// A handler whose stream panics.
struct Panicking;

#[async_trait]
impl AveragingService for Panicking {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        _: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        Ok(Box::pin(stream::poll_fn(|_| panic!("handler bug (expected by the test)"))))
    }

    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        _: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        Err(Error::Internal("unused".into()))
    }

    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        Err(Error::Internal("unused".into()))
    }
}

#[tokio::test]
async fn a_panicking_handler_is_an_error_not_a_clean_end() {
    let transport = MemoryTransport::new(MemoryNetwork::new());
    let handle = transport.serve(Arc::new(Panicking)).await.unwrap();
    let client = transport.connect(handle.endpoint()).await.unwrap();
    let mut replies = client.rpc_join_group(JoinRequest::default()).await.unwrap();
    let end = tokio::time::timeout(PROMPT, replies.next()).await.unwrap();
    assert!(matches!(end, Some(Err(Error::Transport(_)))), "{end:?}");
}

#[test]
fn settings_parse_with_defaults_for_missing_fields() {
    let settings: MemorySettings = serde_json::from_str(r#"{"name": "x"}"#).unwrap();
    assert_eq!(settings.name.as_deref(), Some("x"));
    assert_eq!(settings.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!(settings.channel_capacity, MemorySettings::default().channel_capacity);
    let transport = MemoryTransport::default();
    assert_eq!(transport.capabilities().max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    assert!(!transport.capabilities().authenticated);
    assert_eq!(transport.scheme(), "mem");
}
