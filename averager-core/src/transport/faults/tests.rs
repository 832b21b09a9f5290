//! Each fault does what it says. Waits that must not end use tokio's paused clock (a timeout then
//! fires as soon as every task is idle), so nothing here sleeps to synchronise.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, stream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::*;
use crate::error::Result;
use crate::transport::{
    AveragingClient, AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest,
    JoinRequest, MemoryNetwork, MemoryTransport, MessageFromLeader, MessageStream, RequestStream, Transport,
};

/// Longer than any test waits for something that must happen.
const LONG: Duration = Duration::from_secs(3600);

/// Echoes aggregate parts (and hands each call's input end to the test), streams numbered state
/// messages forever, and answers a join with one message.
struct Echo {
    input_ends: mpsc::UnboundedSender<Option<Result<AveragingData>>>,
}

impl Echo {
    fn new() -> (Arc<Echo>, mpsc::UnboundedReceiver<Option<Result<AveragingData>>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Echo { input_ends: tx }), rx)
    }
}

#[async_trait]
impl AveragingService for Echo {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        _: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        Ok(Box::pin(stream::iter([Ok(MessageFromLeader::default())])))
    }

    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        // The input is read by its own task, as a handler that consumes requests apart from its
        // replies would, so it observes how its input ends even after the call is torn down.
        let report = self.input_ends.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut requests = requests;
            loop {
                let next = requests.next().await;
                let _ = report.send(next.clone());
                let Some(Ok(part)) = next else { return };
                if tx.send(Ok(part)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })))
    }

    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        Ok(Box::pin(
            stream::iter(0u64..)
                .map(|i| Ok(DownloadData { metadata: i.to_le_bytes().to_vec().into(), tensor_part: None })),
        ))
    }
}

/// A faulty server peer and a faulty client peer on a fresh network.
struct Setup {
    server_plan: FaultPlan,
    client_plan: FaultPlan,
    client_transport: FaultyTransport,
    client: Arc<dyn AveragingClient>,
    endpoint: String,
    input_ends: mpsc::UnboundedReceiver<Option<Result<AveragingData>>>,
    network: Arc<MemoryNetwork>,
    _handle: crate::transport::ServerHandle,
}

async fn setup() -> Setup {
    let network = MemoryNetwork::new();
    let (server, server_plan) = FaultyTransport::new(Arc::new(MemoryTransport::new(network.clone())));
    let (client_transport, client_plan) =
        FaultyTransport::new(Arc::new(MemoryTransport::new(network.clone())));
    let (echo, input_ends) = Echo::new();
    let handle = server.serve(echo).await.unwrap();
    let endpoint = handle.endpoint().to_string();
    let client = client_transport.connect(&endpoint).await.unwrap();
    Setup {
        server_plan,
        client_plan,
        client_transport,
        client,
        endpoint,
        input_ends,
        network,
        _handle: handle,
    }
}

/// A request stream fed by the returned sender.
fn channel_requests() -> (mpsc::UnboundedSender<AveragingData>, RequestStream<AveragingData>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let requests = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|part| (part, rx)) });
    (tx, Box::pin(requests))
}

fn part(i: u64) -> AveragingData {
    AveragingData { weight: i as f64, ..Default::default() }
}

async fn download(client: &Arc<dyn AveragingClient>) -> MessageStream<DownloadData> {
    client.rpc_download_state(DownloadRequest {}).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn delay_holds_every_message_in_both_roles() {
    let s = setup().await;
    s.client_plan.add(Fault::Delay(Duration::from_millis(100)).rpc(Rpc::AggregatePart));
    let started = Instant::now();
    let replies = s.client.rpc_aggregate_part(Box::pin(stream::iter((0..3).map(part)))).await.unwrap();
    let got: Vec<_> = replies.collect().await;
    assert_eq!(got.len(), 3);
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());

    s.server_plan.add(Fault::Delay(Duration::from_millis(50)).server_side());
    let started = Instant::now();
    let got: Vec<_> = download(&s.client).await.take(4).collect().await;
    assert!(got.iter().all(|r| r.is_ok()));
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
}

/// A part of `bytes` encoded bytes.
fn sized_part(bytes: usize) -> AveragingData {
    let mut message = AveragingData { endpoint: "x".repeat(bytes), ..Default::default() };
    let over = prost::Message::encoded_len(&message) - bytes;
    message.endpoint.truncate(bytes - over);
    assert_eq!(prost::Message::encoded_len(&message), bytes);
    message
}

#[tokio::test(start_paused = true)]
async fn bandwidth_makes_concurrent_calls_share_one_link() {
    let s = setup().await;
    s.client_plan.add(Fault::Bandwidth(1000).rpc(Rpc::AggregatePart).client_side());
    // Two calls at once, two parts of 500 bytes each: 2000 bytes on a link of 1000 per second.
    let started = Instant::now();
    let call = |client: Arc<dyn AveragingClient>| async move {
        let replies =
            client.rpc_aggregate_part(Box::pin(stream::iter([sized_part(500), sized_part(500)]))).await;
        replies.unwrap().collect::<Vec<_>>().await.len()
    };
    let (a, b) = tokio::join!(call(s.client.clone()), call(s.client.clone()));
    assert_eq!((a, b), (2, 2));
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_millis(2100), "{took:?}");

    // A link of 0 carries nothing.
    s.client_plan.add(Fault::Bandwidth(0).rpc(Rpc::DownloadState));
    let mut chunks = download(&s.client).await;
    assert!(timeout(LONG, chunks.next()).await.is_err(), "a unary request on a link of 0 is never sent");
}

#[tokio::test]
async fn fail_after_as_client_aborts_the_call_on_both_sides() {
    let mut s = setup().await;
    s.client_plan.add(Fault::FailAfter(2).rpc(Rpc::AggregatePart).client_side());
    let (tx, requests) = channel_requests();
    let mut replies = s.client.rpc_aggregate_part(requests).await.unwrap();
    tx.send(part(0)).unwrap();
    assert_eq!(replies.next().await.unwrap().unwrap(), part(0));
    // The call fails as soon as its second message is sent; the third is never asked for.
    tx.send(part(1)).unwrap();
    let mut echoed = 1;
    let end = loop {
        match timeout(LONG, replies.next()).await.unwrap() {
            Some(Ok(reply)) => {
                assert_eq!(reply, part(1));
                echoed += 1;
            }
            other => break other,
        }
    };
    assert!(echoed <= 2);
    assert!(matches!(end, Some(Err(Error::Transport(_)))), "{end:?}");
    assert!(replies.next().await.is_none());
    // The server saw at most those two messages, then its input ended with an error, not a
    // clean end.
    let mut received = Vec::new();
    let server_end = loop {
        match timeout(LONG, s.input_ends.recv()).await.unwrap().unwrap() {
            Some(Ok(got)) => received.push(got),
            other => break other,
        }
    };
    assert!(received == [part(0)] || received == [part(0), part(1)], "{received:?}");
    assert!(matches!(server_end, Some(Err(_))), "{server_end:?}");
}

#[tokio::test]
async fn fail_after_zero_fails_a_unary_call_at_once() {
    let s = setup().await;
    s.client_plan.add(Fault::FailAfter(0).client_side());
    let result = s.client.rpc_join_group(JoinRequest::default()).await;
    assert!(matches!(result, Err(Error::Transport(_))), "{:?}", result.err());
}

#[tokio::test]
async fn fail_after_as_server_fails_the_callers_stream() {
    let s = setup().await;
    s.server_plan.add(Fault::FailAfter(3).rpc(Rpc::DownloadState));
    let got: Vec<_> = download(&s.client).await.collect().await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[..3].iter().all(|r| r.is_ok()));
    assert!(matches!(got[3], Err(Error::Transport(_))), "{:?}", got[3]);
}

#[tokio::test(start_paused = true)]
async fn stall_after_as_server_sends_nothing_more_and_never_ends() {
    let s = setup().await;
    s.server_plan.add(Fault::StallAfter(2).server_side());
    let mut replies = download(&s.client).await;
    assert!(replies.next().await.unwrap().is_ok());
    assert!(replies.next().await.unwrap().is_ok());
    assert!(timeout(LONG, replies.next()).await.is_err(), "a stalled stream yielded or ended");
}

#[tokio::test(start_paused = true)]
async fn stall_after_as_client_starves_the_server_without_ending_its_input() {
    let mut s = setup().await;
    s.client_plan.add(Fault::StallAfter(1).calls_to(s.endpoint.clone()));
    let requests = Box::pin(stream::iter((0..5).map(part)));
    let mut replies = s.client.rpc_aggregate_part(requests).await.unwrap();
    assert_eq!(replies.next().await.unwrap().unwrap(), part(0));
    assert_eq!(s.input_ends.recv().await.unwrap().unwrap().unwrap(), part(0));
    assert!(timeout(LONG, s.input_ends.recv()).await.is_err(), "the server's input moved after a stall");
    assert!(timeout(LONG, replies.next()).await.is_err(), "the call ended after a stall");
    // A unary request is message 0: a stall after one message lets it through, a stall after
    // none gives a stream that never yields.
    let mut passing = download(&s.client).await;
    assert!(passing.next().await.unwrap().is_ok());
    s.client_plan.add(Fault::StallAfter(0).rpc(Rpc::DownloadState));
    let mut stalled = download(&s.client).await;
    assert!(timeout(LONG, stalled.next()).await.is_err());
}

#[tokio::test]
async fn rules_select_by_rpc_role_and_endpoint() {
    let s = setup().await;
    s.client_plan.add(Fault::FailAfter(0).rpc(Rpc::JoinGroup));
    s.client_plan.add(Fault::FailAfter(0).calls_to("mem://someone-else"));
    s.client_plan.add(Fault::FailAfter(0).server_side());
    // Only join calls fail; the rest pass (the client serves nothing, the other endpoint is not
    // this one).
    assert!(s.client.rpc_join_group(JoinRequest::default()).await.is_err());
    let got: Vec<_> = download(&s.client).await.take(3).collect().await;
    assert!(got.iter().all(|r| r.is_ok()), "{got:?}");
    let echo: Vec<_> =
        s.client.rpc_aggregate_part(Box::pin(stream::iter([part(1)]))).await.unwrap().collect().await;
    assert_eq!(echo.len(), 1);
    assert!(echo[0].is_ok());
}

#[tokio::test]
async fn rules_change_while_calls_run() {
    let s = setup().await;
    let mut replies = download(&s.client).await;
    assert!(replies.next().await.unwrap().is_ok());
    // Added mid-call: the call has sent more than 0 messages, so its next one fails.
    let rule = s.server_plan.add(Fault::FailAfter(0).server_side());
    let end = loop {
        match replies.next().await {
            Some(Ok(_)) => continue,
            other => break other,
        }
    };
    assert!(matches!(end, Some(Err(Error::Transport(_)))), "{end:?}");
    assert!(s.server_plan.remove(rule));
    assert!(!s.server_plan.remove(rule));
    assert!(s.server_plan.rules().is_empty());
    let got: Vec<_> = download(&s.client).await.take(2).collect().await;
    assert!(got.iter().all(|r| r.is_ok()), "{got:?}");
}

#[tokio::test]
async fn kill_drops_the_peer_in_both_roles() {
    let s = setup().await;
    // A third peer serves, so the client's outgoing calls to it can be cut.
    let (echo, _) = Echo::new();
    let third = MemoryTransport::new(s.network.clone()).serve(echo).await.unwrap();
    let to_third = s.client_transport.connect(third.endpoint()).await.unwrap();
    let mut outgoing = download(&to_third).await;
    assert!(outgoing.next().await.unwrap().is_ok());

    // Incoming: the killed server's in-flight call is cut and its endpoint is gone.
    let mut incoming = download(&s.client).await;
    assert!(incoming.next().await.unwrap().is_ok());
    s.server_plan.add(Fault::Kill);
    assert!(s.server_plan.is_killed());
    let end = loop {
        match incoming.next().await {
            Some(Ok(_)) => continue,
            other => break other,
        }
    };
    assert!(matches!(end, Some(Err(_))), "{end:?}");
    let later = s.client.rpc_join_group(JoinRequest::default()).await;
    assert!(matches!(later, Err(Error::Unreachable { .. })), "{:?}", later.err());
    assert!(!s.network.is_served(&s.endpoint));

    // Outgoing: the killed client's calls in flight and later fail, and it cannot serve again.
    s.client_plan.kill();
    let end = loop {
        match outgoing.next().await {
            Some(Ok(_)) => continue,
            other => break other,
        }
    };
    assert!(matches!(end, Some(Err(Error::Transport(_)))), "{end:?}");
    assert!(to_third.rpc_join_group(JoinRequest::default()).await.is_err());
    assert!(s.client_transport.connect(third.endpoint()).await.is_err());
    let (echo, _) = Echo::new();
    assert!(s.client_transport.serve(echo).await.is_err());
}

#[tokio::test]
async fn stopping_a_faulty_server_stops_the_inner_one() {
    let network = MemoryNetwork::new();
    let (transport, plan) = FaultyTransport::new(Arc::new(MemoryTransport::new(network.clone())));
    let (echo, _) = Echo::new();
    let handle = transport.serve(echo).await.unwrap();
    let endpoint = handle.endpoint().to_string();
    assert!(network.is_served(&endpoint));
    handle.shutdown();
    assert!(!network.is_served(&endpoint));
    assert!(!plan.is_killed());
    assert!(format!("{plan:?}").contains("killed: false"));
}
