//! protocol 10.3 scenario 18 (ordering part): replies come back while parts are still being sent, so
//! reading the output starts before writing the input ends (the timing half of the scenario is a
//! benchmark, not a test); also for a sender with no share (protocol 4.2), whose reducer must
//! not stall it when it reads only after sending everything, as hivemind's do.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;

use super::tests::{infos, settings};
use super::*;
use crate::compression::NoCompression;
use crate::error::Result;
use crate::matchmaking::PeerMode;
use crate::reduce::MeanReducer;
use crate::registry::Registry;
use crate::tensor::Tensor;
use crate::transport::{
    AveragingClient, AveragingData, AveragingService, DownloadData, DownloadRequest, JoinRequest,
    MemoryNetwork, MemorySettings, MemoryTransport, MessageFromLeader, MessageStream, RequestStream,
    ServerHandle, Transport, TransportCapabilities,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    Sent,
    Received,
}

/// Wraps a transport and records, in order, every part a client sends and every reply it reads;
/// with `send_first`, its clients read no reply before they have sent every part.
struct Recording {
    inner: Arc<dyn Transport>,
    log: Arc<Mutex<Vec<(usize, Event)>>>,
    /// The peer whose events these are.
    peer: usize,
    send_first: bool,
}

struct RecordingClient {
    inner: Arc<dyn AveragingClient>,
    log: Arc<Mutex<Vec<(usize, Event)>>>,
    peer: usize,
    send_first: bool,
}

#[async_trait]
impl Transport for Recording {
    fn scheme(&self) -> &str {
        self.inner.scheme()
    }
    fn capabilities(&self) -> TransportCapabilities {
        self.inner.capabilities()
    }
    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle> {
        self.inner.serve(service).await
    }
    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>> {
        let inner = self.inner.connect(endpoint).await?;
        let (log, peer, send_first) = (self.log.clone(), self.peer, self.send_first);
        Ok(Arc::new(RecordingClient { inner, log, peer, send_first }))
    }
}

#[async_trait]
impl AveragingClient for RecordingClient {
    async fn rpc_join_group(&self, request: JoinRequest) -> Result<MessageStream<MessageFromLeader>> {
        self.inner.rpc_join_group(request).await
    }
    async fn rpc_aggregate_part(
        &self,
        requests: RequestStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let (sent, received, peer) = (self.log.clone(), self.log.clone(), self.peer);
        // Dropped once the last part is taken: the replies wait for that when `send_first`.
        let (all_sent, sending) = tokio::sync::oneshot::channel::<()>();
        let end = futures::stream::once(async move {
            drop(all_sent);
            None
        });
        let requests = requests
            .inspect(move |_| sent.lock().unwrap().push((peer, Event::Sent)))
            .map(Some)
            .chain(end)
            .filter_map(futures::future::ready);
        let replies = self.inner.rpc_aggregate_part(Box::pin(requests)).await?;
        let sending = self.send_first.then_some(sending);
        let replies = futures::stream::unfold((sending, replies), |(sending, mut replies)| async move {
            if let Some(sending) = sending {
                let _ = sending.await;
            }
            Some((replies.next().await?, (None, replies)))
        });
        Ok(Box::pin(replies.inspect(move |_| received.lock().unwrap().push((peer, Event::Received)))))
    }
    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>> {
        self.inner.rpc_download_state(request).await
    }
}

/// Two peers with these `shares` average 64 parts of 1 KiB per share (far more than the channels
/// between them can buffer); returns the log of what each peer sent and read, in order.
async fn average_pair(shares: [f64; 2], send_first: bool) -> Vec<(usize, Event)> {
    let network = MemoryNetwork::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut transports: Vec<Arc<dyn Transport>> = Vec::new();
    let mut routers = Vec::new();
    let mut servers = Vec::new();
    for i in 0..2 {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let memory: Arc<dyn Transport> = Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let transport: Arc<dyn Transport> =
            Arc::new(Recording { inner: memory, log: log.clone(), peer: i, send_first });
        let router = Arc::new(RoundRouter::default());
        servers.push(transport.serve(router.clone()).await.unwrap());
        transports.push(transport);
        routers.push(router);
    }
    let members: Vec<GroupMember> = servers
        .iter()
        .map(|s| GroupMember { endpoint: s.endpoint().to_string(), mode: PeerMode::Node, bandwidth: None })
        .collect();
    // 64 parts of 1 KiB for each reducer: far more than the channels between them can buffer.
    let tensors: Vec<Vec<Tensor>> = (0..2)
        .map(|i| vec![Tensor::from_f32(vec![2 * 64 * 256], vec![i as f32; 2 * 64 * 256]).unwrap()])
        .collect();
    let mut runners = Vec::new();
    for i in 0..2 {
        let group = AllReduceGroup {
            group_id: bytes::Bytes::from_static(b"pipeline"),
            members: members.clone(),
            me: i,
        };
        let runner = AllReduceRound::with_shares(
            AllReduceInputs {
                group,
                tensors: Arc::new(tensors[i].clone().into()),
                infos: infos(&tensors[i]),
                codec: Arc::new(NoCompression),
                reducer: Arc::new(MeanReducer),
                transport: transports[i].clone(),
                registry: Registry::global(),
                settings: settings(1024, 1.0),
            },
            shares.to_vec(),
        )
        .unwrap();
        routers[i].register(runner.span());
        runners.push(runner);
    }
    let outcomes = futures::future::join_all(runners.into_iter().map(|r| r.run())).await;
    assert!(outcomes.iter().all(|o| o.as_ref().is_ok_and(|o| o.failed_reducers.is_empty())));
    log.lock().unwrap().clone()
}

/// The events of `peer`, or of both peers with `None`.
fn events(log: &[(usize, Event)], peer: Option<usize>) -> Vec<Event> {
    log.iter().filter(|(p, _)| peer.is_none_or(|peer| *p == peer)).map(|(_, e)| *e).collect()
}

fn first_received_and_last_sent(log: &[Event]) -> (usize, usize) {
    let first_received = log.iter().position(|e| *e == Event::Received).unwrap();
    let last_sent = log.iter().rposition(|e| *e == Event::Sent).unwrap();
    (first_received, last_sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_18_output_reading_starts_before_input_writing_ends() {
    let log = events(&average_pair([1.0, 1.0], false).await, None);
    let (first_received, last_sent) = first_received_and_last_sent(&log);
    assert_eq!(log.iter().filter(|e| **e == Event::Sent).count(), 128);
    assert!(first_received < last_sent, "every part was sent before any reply was read");
}

/// **\[averager\]** a member with no share reads its replies while it sends (protocol 4.2 has
/// them delayed to the end), so a slow link carries both directions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_no_share_reads_replies_while_it_sends() {
    // Peer 0 reduces everything: peer 1 sends it all 128 parts.
    let log = events(&average_pair([1.0, 0.0], false).await, Some(1));
    assert_eq!(log.iter().filter(|e| **e == Event::Sent).count(), 128);
    let (first_received, last_sent) = first_received_and_last_sent(&log);
    assert!(first_received < last_sent, "every part was sent before any reply was read");
}

/// A member with no share that reads its replies only once it has sent everything (hivemind's)
/// is not stalled by the replies it does not read yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_no_share_may_read_only_after_sending() {
    let log = events(&average_pair([1.0, 0.0], true).await, Some(1));
    assert_eq!(log.iter().filter(|e| **e == Event::Received).count(), 128);
    let (first_received, last_sent) = first_received_and_last_sent(&log);
    assert!(first_received > last_sent);
}
