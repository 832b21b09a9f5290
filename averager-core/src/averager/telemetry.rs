//! What a step or a state download moved over the wire, counted by a thin wrapper around the
//! averager's transport.
//!
//! The all-reduce round does not count bytes itself. Each round gets a [`Tally`]: the transport
//! handed to its all-reduce counts the parts this peer sends and the replies it gets, and the service
//! counts the parts other members stream to this peer and the replies it streams back (found by
//! the group id of their first part, see [`RoundTraffic`]). The all-reduce ends when this peer has its own result, while its
//! reducer may still be streaming the last replies; the round waits for those streams to end
//! ([`Tally::replies_done`]) before it reads the figures.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::bandwidth::{RoundMeter, metered_replies, metered_requests};
use crate::error::Result;
use crate::transport::{
    AveragingClient, AveragingData, AveragingService, DownloadData, DownloadRequest, JoinRequest,
    MessageFromLeader, MessageStream, RequestStream, ServerHandle, Transport, TransportCapabilities,
};

/// Bytes moved, as encoded protobuf messages (what the transport carries, before its framing).
#[derive(Debug)]
pub(super) struct Tally {
    sent: AtomicU64,
    received: AtomicU64,
    /// The endpoint this transport last dialled: for a download, the donor that answered last.
    last_dialled: Mutex<Option<String>>,
    /// Reply streams this peer serves that have not ended yet.
    open_replies: watch::Sender<usize>,
    /// When the transport took the tensor bytes of this round's part and reply streams, for the
    /// bandwidth estimate (used only when no bandwidth is configured).
    meter: Arc<RoundMeter>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_dialled: Mutex::new(None),
            open_replies: watch::channel(0).0,
            meter: Arc::new(RoundMeter::default()),
        }
    }
}

impl Tally {
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub(super) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub(super) fn last_dialled(&self) -> Option<String> {
        self.last_dialled.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn add_sent(&self, message: &impl prost::Message) {
        self.sent.fetch_add(message.encoded_len() as u64, Ordering::Relaxed);
    }

    fn add_received(&self, message: &impl prost::Message) {
        self.received.fetch_add(message.encoded_len() as u64, Ordering::Relaxed);
    }

    /// The meter of this round's streams.
    pub(super) fn meter(&self) -> &Arc<RoundMeter> {
        &self.meter
    }

    /// Resolves once every reply stream counted into this tally has ended.
    pub(super) async fn replies_done(&self) {
        let mut open = self.open_replies.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }
}

/// Tallies by group id, for the service to count served streams into. A member may stream its
/// parts before this peer's own matchmaking has returned the group (the router holds such streams
/// until the round starts), so a stream may create its group's tally before the round does.
#[derive(Default)]
pub(super) struct RoundTraffic {
    /// At most [`MAX_TALLIES`], oldest first: streams naming groups that never become a round
    /// (a hostile peer's made-up ids) only push out old tallies, never grow memory.
    tallies: Mutex<VecDeque<(Bytes, Arc<Tally>)>>,
}

/// Groups tallied at once: the round under way, its predecessors' late replies, early streams.
const MAX_TALLIES: usize = 16;

impl RoundTraffic {
    /// The tally of `group_id`, created if this is the first word of it.
    pub(super) fn tally(&self, group_id: &[u8]) -> Arc<Tally> {
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, tally)) = tallies.iter().find(|(id, _)| id.as_ref() == group_id) {
            return Arc::clone(tally);
        }
        if tallies.len() >= MAX_TALLIES {
            tallies.pop_front();
        }
        let tally = Arc::new(Tally::default());
        tallies.push_back((Bytes::copy_from_slice(group_id), Arc::clone(&tally)));
        tally
    }

    /// Forgets the tally of a round that is over (its holders keep counting into their copy).
    pub(super) fn end(&self, group_id: &[u8]) {
        self.tallies.lock().unwrap_or_else(PoisonError::into_inner).retain(|(id, _)| id.as_ref() != group_id);
    }

    /// `requests`, counted into the tally of their group once its first part names it; the
    /// returned [`Served`] counts the replies (see [`Served::replies`]).
    pub(super) fn count_requests(
        self: &Arc<Self>,
        requests: MessageStream<AveragingData>,
    ) -> (MessageStream<AveragingData>, Arc<Served>) {
        let rounds = Arc::clone(self);
        let served = Arc::new(Served::default());
        let call = Arc::clone(&served);
        let requests = requests.inspect(move |item| {
            let Ok(message) = item else { return };
            if call.tally.get().is_none() {
                let tally = rounds.tally(&message.group_id);
                tally.open_replies.send_modify(|n| *n += 1);
                let _ = call.tally.set(tally);
            }
            if let Some(tally) = call.tally.get() {
                tally.add_received(message);
            }
        });
        (Box::pin(requests), served)
    }
}

/// One served part stream: the tally of its group, once its first part named it. Open (in that
/// tally's count) until both its request and reply streams are gone.
#[derive(Default)]
pub(super) struct Served {
    tally: std::sync::OnceLock<Arc<Tally>>,
}

impl Served {
    /// `replies`, counted as sent into the call's tally, and metered into its meter when the
    /// first part already named the tally (routing reads it before it returns the replies).
    pub(super) fn replies(
        self: Arc<Self>,
        mut replies: MessageStream<AveragingData>,
    ) -> MessageStream<AveragingData> {
        if let Some(tally) = self.tally.get() {
            replies = Box::pin(metered_replies(replies, Arc::clone(&tally.meter)));
        }
        Box::pin(replies.inspect(move |item| {
            if let (Ok(message), Some(tally)) = (item, self.tally.get()) {
                tally.add_sent(message);
            }
        }))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tally) = self.tally.get() {
            tally.open_replies.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

/// A transport that counts the part and state messages its clients send and receive into a
/// [`Tally`], and, given a [`RoundMeter`], times its part streams for the bandwidth estimate;
/// joins are not counted (matchmaking's few bytes are not the data path).
pub(super) struct CountingTransport {
    inner: Arc<dyn Transport>,
    traffic: Arc<Tally>,
    meter: Option<Arc<RoundMeter>>,
}

impl CountingTransport {
    pub(super) fn new(inner: Arc<dyn Transport>, traffic: Arc<Tally>) -> Self {
        CountingTransport { inner, traffic, meter: None }
    }

    /// Also times the part streams into `meter`.
    pub(super) fn metered(mut self, meter: Option<Arc<RoundMeter>>) -> Self {
        self.meter = meter;
        self
    }
}

#[async_trait]
impl Transport for CountingTransport {
    fn scheme(&self) -> &str {
        self.inner.scheme()
    }

    fn capabilities(&self) -> TransportCapabilities {
        self.inner.capabilities()
    }

    fn set_stream_rate_limit(&self, bytes_per_second: Option<u64>) {
        self.inner.set_stream_rate_limit(bytes_per_second);
    }

    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle> {
        self.inner.serve(service).await
    }

    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>> {
        *self.traffic.last_dialled.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(endpoint.to_string());
        let inner = self.inner.connect(endpoint).await?;
        Ok(Arc::new(CountingClient { inner, traffic: Arc::clone(&self.traffic), meter: self.meter.clone() }))
    }
}

struct CountingClient {
    inner: Arc<dyn AveragingClient>,
    traffic: Arc<Tally>,
    meter: Option<Arc<RoundMeter>>,
}

#[async_trait]
impl AveragingClient for CountingClient {
    async fn rpc_join_group(&self, request: JoinRequest) -> Result<MessageStream<MessageFromLeader>> {
        self.inner.rpc_join_group(request).await
    }

    async fn rpc_aggregate_part(
        &self,
        requests: RequestStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let traffic = Arc::clone(&self.traffic);
        let mut requests: RequestStream<AveragingData> =
            Box::pin(requests.inspect(move |message| traffic.add_sent(message)));
        if let Some(meter) = &self.meter {
            requests = Box::pin(metered_requests(requests, Arc::clone(meter)));
        }
        let replies = self.inner.rpc_aggregate_part(requests).await?;
        let traffic = Arc::clone(&self.traffic);
        Ok(Box::pin(replies.inspect(move |item| {
            if let Ok(message) = item {
                traffic.add_received(message);
            }
        })))
    }

    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>> {
        let chunks = self.inner.rpc_download_state(request).await?;
        let traffic = Arc::clone(&self.traffic);
        Ok(Box::pin(chunks.inspect(move |item| {
            if let Ok(message) = item {
                traffic.add_received(message);
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::transport::{MemoryNetwork, MemoryTransport};

    struct Echo;

    #[async_trait]
    impl AveragingService for Echo {
        async fn rpc_join_group(
            &self,
            _: crate::transport::CallContext,
            _: JoinRequest,
        ) -> Result<MessageStream<MessageFromLeader>> {
            Ok(Box::pin(futures::stream::empty()))
        }

        async fn rpc_aggregate_part(
            &self,
            _: crate::transport::CallContext,
            requests: MessageStream<AveragingData>,
        ) -> Result<MessageStream<AveragingData>> {
            Ok(requests)
        }

        async fn rpc_download_state(
            &self,
            _: crate::transport::CallContext,
            _: DownloadRequest,
        ) -> Result<MessageStream<DownloadData>> {
            let chunk = DownloadData { metadata: vec![7u8; 100].into(), ..Default::default() };
            Ok(Box::pin(futures::stream::iter([Ok(chunk)])))
        }
    }

    #[tokio::test]
    async fn a_stream_that_comes_before_its_round_counts_into_it() {
        let rounds = Arc::new(RoundTraffic::default());
        let part = AveragingData { group_id: vec![7u8; 20].into(), ..Default::default() };
        let size = prost::Message::encoded_len(&part) as u64;
        let (requests, served) = rounds.count_requests(Box::pin(futures::stream::iter([Ok(part.clone())])));
        let replies = served.replies(Box::pin(futures::stream::iter([Ok(part.clone())])));
        // The member's part arrives first; the round starts after it.
        let mut requests = requests;
        assert!(requests.next().await.is_some());
        let tally = rounds.tally(&part.group_id);
        let replies: Vec<_> = replies.collect().await;
        assert_eq!(replies.len(), 1);
        assert_eq!((tally.sent(), tally.received()), (size, size));
        // The call is open until both of its streams are gone (collect dropped the replies).
        assert!(tally.replies_done().now_or_never().is_none());
        drop(requests);
        assert!(tally.replies_done().now_or_never().is_some());
        rounds.end(&part.group_id);
        assert!(!Arc::ptr_eq(&rounds.tally(&part.group_id), &tally));
    }

    #[tokio::test]
    async fn served_replies_are_metered_into_their_round() {
        let rounds = Arc::new(RoundTraffic::default());
        let part = AveragingData { group_id: vec![8u8; 20].into(), ..Default::default() };
        let (mut requests, served) =
            rounds.count_requests(Box::pin(futures::stream::iter([Ok(part.clone())])));
        // Routing reads the first part (which names the round) before it returns the replies.
        assert!(requests.next().await.is_some());
        let reply = AveragingData {
            tensor_part: Some(crate::compression::WireTensor {
                buffer: vec![0u8; 300].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let replies: Vec<_> = served.replies(Box::pin(futures::stream::iter([Ok(reply)]))).collect().await;
        assert_eq!(replies.len(), 1);
        assert_eq!(rounds.tally(&part.group_id).meter().bytes_taken(), 300);
    }

    #[tokio::test]
    async fn counts_the_encoded_messages_both_ways_and_the_donor() {
        let network = MemoryNetwork::new();
        let server = MemoryTransport::new(network.clone());
        let handle = server.serve(Arc::new(Echo)).await.unwrap();
        let traffic = Arc::new(Tally::default());
        let counting = CountingTransport::new(Arc::new(MemoryTransport::new(network)), Arc::clone(&traffic));
        let client = counting.connect(handle.endpoint()).await.unwrap();
        let part = AveragingData { endpoint: "me".into(), ..Default::default() };
        let size = prost::Message::encoded_len(&part) as u64;
        let replies = client.rpc_aggregate_part(Box::pin(futures::stream::iter([part.clone(), part]))).await;
        let replies: Vec<_> = replies.unwrap().collect().await;
        assert_eq!(replies.len(), 2);
        assert_eq!((traffic.sent(), traffic.received()), (2 * size, 2 * size));
        let chunks: Vec<_> =
            client.rpc_download_state(DownloadRequest::default()).await.unwrap().collect().await;
        assert_eq!(chunks.len(), 1);
        assert!(traffic.received() > 2 * size + 100);
        assert_eq!(traffic.last_dialled().as_deref(), Some(handle.endpoint()));
    }
}
