//! protocol 10.2 scenarios 10 and 11, and state downloads of unusual sizes, over the memory transport
//! and the memory DHT. Also the shared test swarm of this module's other test files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rand::Rng;

use super::*;
use crate::compression::{Compression, NoCompression, STREAM_CHUNK_BYTES, combine_from_streaming};
use crate::dht::{Dht, MemoryDht};
use crate::error::{Error, Result};
use crate::matchmaking::donors_key;
use crate::registry::Registry;
use crate::tensor::Tensor;
use crate::transport::{
    AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest, JoinRequest, MemoryNetwork,
    MemorySettings, MemoryTransport, MessageFromLeader, MessageStream, ServerHandle, Transport,
};

pub(super) const PREFIX: &str = "demo";

/// A [`FixedState`] that counts how often a download took a snapshot.
#[derive(Debug, Default)]
pub(super) struct CountingState {
    pub(super) state: FixedState,
    calls: AtomicUsize,
}

impl CountingState {
    pub(super) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl StateProvider for CountingState {
    async fn current_state(&self) -> Result<StateSnapshot> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.state.current_state().await
    }
}

/// A peer that only shares state: downloads go through [`serve_download`], the other RPCs fail.
pub(super) struct StateService {
    pub(super) sharing: Arc<StateSharing>,
    pub(super) provider: Arc<dyn StateProvider>,
}

#[async_trait]
impl AveragingService for StateService {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        _: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        Err(Error::Internal("this test peer only shares state".into()))
    }

    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        _: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        Err(Error::Internal("this test peer only shares state".into()))
    }

    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        serve_download(&self.sharing, self.provider.as_ref(), Arc::new(NoCompression)).await
    }
}

pub(super) struct Peer {
    pub(super) endpoint: String,
    pub(super) sharing: Arc<StateSharing>,
    pub(super) state: Arc<CountingState>,
    _server: ServerHandle,
    _donor: DonorLoop,
}

/// Peers on a fresh memory network and DHT.
pub(super) struct Swarm {
    pub(super) dht: MemoryDht,
    pub(super) network: Arc<MemoryNetwork>,
    pub(super) transport: Arc<dyn Transport>,
}

impl Swarm {
    pub(super) fn new() -> Swarm {
        let network = MemoryNetwork::new();
        let transport = Arc::new(MemoryTransport::new(network.clone()));
        Swarm { dht: MemoryDht::new(), network, transport }
    }

    /// Serves `service` at `mem://<name>`.
    pub(super) async fn serve(&self, name: &str, service: Arc<dyn AveragingService>) -> ServerHandle {
        let settings = MemorySettings { name: Some(name.into()), ..Default::default() };
        MemoryTransport::with_settings(self.network.clone(), settings).serve(service).await.unwrap()
    }

    /// A sharing peer with a running donor loop, once its record is in the DHT.
    pub(super) async fn peer(&self, name: &str, allow: bool, priority: f64, snapshot: StateSnapshot) -> Peer {
        let sharing = Arc::new(StateSharing::new(allow, priority).unwrap());
        let state = Arc::new(CountingState { state: FixedState::new(snapshot), ..Default::default() });
        let service = StateService { sharing: sharing.clone(), provider: state.clone() };
        let server = self.serve(name, Arc::new(service)).await;
        let endpoint = server.endpoint().to_string();
        let dht: Arc<dyn Dht> = Arc::new(self.dht.clone());
        let donor = spawn_donor_loop(dht, sharing.clone(), PREFIX, endpoint.clone(), Duration::from_secs(30));
        if allow {
            self.wait_for_record(&endpoint, Some(priority)).await;
        }
        Peer { endpoint, sharing, state, _server: server, _donor: donor }
    }

    /// Polls the DHT (bounded) until `endpoint`'s donor record says `expected`.
    pub(super) async fn wait_for_record(&self, endpoint: &str, expected: Option<f64>) {
        let key = donors_key(PREFIX);
        for _ in 0..1000 {
            let records = self.dht.get(&key, true).await.unwrap();
            let value = records.get(endpoint.as_bytes()).map(|e| decode_priority(&e.value).unwrap());
            if value == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the DHT never said {expected:?} for {endpoint}");
    }

    /// Stores a donor record directly, as a hostile or a foreign peer could.
    pub(super) async fn declare(&self, endpoint: &[u8], value: &[u8]) {
        let expiration = crate::time::dht_now() + 60.0;
        assert!(
            self.dht.store(&donors_key(PREFIX), endpoint, value.to_vec().into(), expiration).await.unwrap()
        );
    }

    pub(super) async fn load_with(
        &self,
        me: &str,
        chunk_timeout: Duration,
        overall: Option<Duration>,
        max_state_bytes: usize,
    ) -> Result<Option<(Vec<u8>, Vec<Tensor>)>> {
        let (dht, transport) = (&self.dht, self.transport.as_ref());
        load_state_from_peers(
            dht,
            transport,
            Registry::global(),
            PREFIX,
            me,
            chunk_timeout,
            overall,
            max_state_bytes,
        )
        .await
    }

    pub(super) async fn load(&self, me: &str) -> Option<(Vec<u8>, Vec<Tensor>)> {
        self.load_with(me, Duration::from_secs(5), Some(Duration::from_secs(20)), 1 << 26).await.unwrap()
    }
}

pub(super) fn randn(n: usize) -> Tensor {
    let mut rng = rand::rng();
    // Box-Muller: the core has no rand_distr.
    let values = (0..n)
        .map(|_| {
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect();
    Tensor::from_f32(vec![n], values).unwrap()
}

fn randint(n: usize) -> Tensor {
    let mut rng = rand::rng();
    Tensor::from_i64(vec![n], (0..n).map(|_| rng.random_range(0..5)).collect()).unwrap()
}

pub(super) fn x_state(x: i64, tensors: Vec<Tensor>) -> StateSnapshot {
    StateSnapshot::with_metadata(&BTreeMap::from([("x", x)]), tensors).unwrap()
}

fn x_of(metadata: &[u8]) -> i64 {
    rmp_serde::from_slice::<BTreeMap<String, i64>>(metadata).unwrap()["x"]
}

#[tokio::test]
async fn scenario_10_load_state_from_peers() {
    let swarm = Swarm::new();
    let tensors = vec![randn(3), randint(3)];
    let donor = swarm.peer("donor", true, 0.0, x_state(123, tensors.clone())).await;
    let me = swarm.peer("newcomer", true, 0.0, x_state(-1, vec![randn(3)])).await;

    let (metadata, got) = swarm.load(&me.endpoint).await.unwrap();
    assert_eq!((x_of(&metadata), &got), (123, &tensors));
    assert_eq!(donor.state.calls(), 1);

    let tensors = vec![randn(3), randint(3)];
    donor.state.state.replace(x_state(321, tensors.clone()));
    let (metadata, got) = swarm.load(&me.endpoint).await.unwrap();
    assert_eq!((x_of(&metadata), &got), (321, &tensors));
    assert_eq!(donor.state.calls(), 2);

    donor.sharing.set_allow_state_sharing(false).unwrap();
    swarm.wait_for_record(&donor.endpoint, None).await;
    assert_eq!(swarm.load(&me.endpoint).await, None);

    donor.sharing.set_allow_state_sharing(true).unwrap();
    swarm.wait_for_record(&donor.endpoint, Some(0.0)).await;
    let (metadata, got) = swarm.load(&me.endpoint).await.unwrap();
    assert_eq!((x_of(&metadata), &got), (321, &tensors));
    assert_eq!(donor.state.calls(), 3);
    assert_eq!(me.state.calls(), 0, "a peer never downloads from itself");
}

#[tokio::test]
async fn scenario_11_load_state_priority() {
    let swarm = Swarm::new();
    let mut peers = Vec::new();
    for i in 0..4 {
        let priority = 5.0 - (2.0 - i as f64).abs();
        let tensors = vec![randn(3), Tensor::from_f32(vec![], vec![i as f32]).unwrap()];
        peers.push(swarm.peer(&format!("peer{i}"), i != 1, priority, x_state(i, tensors)).await);
    }
    let source = |state: Option<(Vec<u8>, Vec<Tensor>)>| {
        let (_, tensors) = state.expect("a donor");
        tensors.last().unwrap().as_f32().unwrap()[0] as usize
    };
    assert_eq!(source(swarm.load(&peers[0].endpoint).await), 2);
    assert_eq!(source(swarm.load(&peers[2].endpoint).await), 3);

    peers[0].sharing.set_state_sharing_priority(10.0).unwrap();
    swarm.wait_for_record(&peers[0].endpoint, Some(10.0)).await;
    assert_eq!(source(swarm.load(&peers[2].endpoint).await), 0);

    peers[1].sharing.set_allow_state_sharing(false).unwrap();
    peers[2].sharing.set_allow_state_sharing(false).unwrap();
    swarm.wait_for_record(&peers[2].endpoint, None).await;
    assert_eq!(source(swarm.load(&peers[0].endpoint).await), 3);
    assert_eq!(peers[1].state.calls(), 0);
}

#[tokio::test]
async fn a_zero_tensor_state_downloads() {
    let swarm = Swarm::new();
    let _donor = swarm.peer("donor", true, 0.0, x_state(7, Vec::new())).await;
    let (metadata, tensors) = swarm.load("mem://me").await.unwrap();
    assert_eq!((x_of(&metadata), tensors.len()), (7, 0));
}

#[tokio::test]
async fn a_big_state_round_trips_through_many_chunks() {
    let swarm = Swarm::new();
    // About 3 MB: 48 chunks, tensors ending mid-chunk, an empty tensor and a 0-d one.
    let tensors = vec![
        randn(400_000),
        randint(100_001),
        Tensor::from_f32(vec![0], vec![]).unwrap(),
        randn(300_000).reshape(vec![1000, 300]).unwrap().with_requires_grad(true),
        Tensor::from_f64(vec![], vec![2.5]).unwrap(),
    ];
    let _donor = swarm.peer("donor", true, 0.0, x_state(1, tensors.clone())).await;
    let (_, got) = swarm.load("mem://me").await.unwrap();
    assert_eq!(got, tensors);
}

#[tokio::test]
async fn serving_sends_metadata_alone_then_chunked_tensors() {
    let sharing = StateSharing::new(true, 0.0).unwrap();
    let tensors = vec![randn(40_000), Tensor::from_f32(vec![0], vec![]).unwrap(), randint(3)];
    let provider = FixedState::new(StateSnapshot::new(Vec::new(), tensors.clone()));
    let codec: Arc<dyn Compression> = Arc::new(NoCompression);
    let messages: Vec<DownloadData> =
        serve_download(&sharing, &provider, codec.clone()).await.unwrap().map(|m| m.unwrap()).collect().await;

    // Empty metadata goes out as msgpack nil, alone.
    assert_eq!((&messages[0].metadata[..], messages[0].tensor_part.is_none()), (&[0xc0u8][..], true));
    let parts: Vec<_> = messages[1..].iter().map(|m| m.tensor_part.clone().unwrap()).collect();
    assert!(messages[1..].iter().all(|m| m.metadata.is_empty()));
    let expected_chunks = [160_000usize.div_ceil(STREAM_CHUNK_BYTES), 1, 1];
    assert_eq!(parts.len(), expected_chunks.iter().sum::<usize>());
    let mut rest = &parts[..];
    for (tensor, n) in tensors.iter().zip(expected_chunks) {
        let (mine, others) = rest.split_at(n);
        rest = others;
        assert!(!mine[0].dtype.is_empty() && mine[1..].iter().all(|p| p.dtype.is_empty()));
        assert_eq!(
            &codec.extract(&combine_from_streaming(mine.to_vec(), usize::MAX).unwrap()).unwrap(),
            tensor
        );
    }

    sharing.set_allow_state_sharing(false).unwrap();
    let none = serve_download(&sharing, &provider, codec).await.unwrap().count().await;
    assert_eq!(none, 0, "a peer that does not share sends nothing");
}
