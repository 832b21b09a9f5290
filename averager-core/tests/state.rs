//! SPEC 10.2 scenarios 10 and 11 through the averager: state sharing between averagers, with a
//! custom state provider (the seed's overridable `get_current_state`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use averager_core::Result;
use averager_core::averager::{Averager, AveragerConfig};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::registry::Registry;
use averager_core::state::{StateProvider, StateSnapshot, decode_priority};
use averager_core::tensor::Tensor;
use averager_core::transport::{MemoryNetwork, MemorySettings, MemoryTransport, Transport};
use common::*;

/// A provider whose state can be replaced, counting how often it is asked.
#[derive(Default)]
struct Counting {
    state: std::sync::Mutex<StateSnapshot>,
    calls: AtomicUsize,
}

#[async_trait]
impl StateProvider for Counting {
    async fn current_state(&self) -> Result<StateSnapshot> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.state.lock().unwrap().clone())
    }
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Meta {
    x: i64,
}

async fn averagers(n: usize, providers: &[Arc<Counting>]) -> (Vec<Averager>, Arc<MemoryDht>) {
    let network = MemoryNetwork::new();
    let dht = Arc::new(MemoryDht::new());
    let mut peers = Vec::new();
    for i in 0..n {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let config = AveragerConfig {
            prefix: "demo-run".into(),
            declare_state_period: Duration::from_secs(30),
            ..AveragerConfig::default()
        };
        let provider = providers.get(i).map(|p| p.clone() as Arc<dyn StateProvider>);
        let peer = Averager::with_provider(
            vec![f32s(&[3], [0.0; 3])],
            dht.clone() as Arc<dyn Dht>,
            transport,
            config,
            provider,
            Registry::global(),
        )
        .await
        .unwrap();
        peers.push(peer);
    }
    (peers, dht)
}

/// Waits until `peer`'s donor record says `priority` (None: not sharing, whether the record says
/// nil or was never written); polls the DHT, which has no change notifications.
async fn donor_record_is(dht: &MemoryDht, peer: &Averager, priority: Option<f64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = dht.get("demo-run.all_averagers", true).await.unwrap();
        let now = records.get(peer.endpoint().as_bytes()).and_then(|e| decode_priority(&e.value).unwrap());
        if now == priority {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "donor record stayed {now:?}, wanted {priority:?}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_10_load_state_from_peers() {
    let donor = Arc::new(Counting::default());
    let mut rng = rng(10);
    let tensors =
        vec![f32s(&[3], (0..3).map(|_| randn(&mut rng))), Tensor::from_i64(vec![3], vec![1, 4, 2]).unwrap()];
    *donor.state.lock().unwrap() = StateSnapshot::with_metadata(&Meta { x: 123 }, tensors.clone()).unwrap();
    let (peers, dht) = averagers(2, std::slice::from_ref(&donor)).await;
    peers[1].set_allow_state_sharing(false).unwrap();
    donor_record_is(&dht, &peers[0], Some(0.0)).await;

    let state = peers[1].load_state_from_peers(Some(Duration::from_secs(10))).await.unwrap().unwrap();
    assert_eq!(state.metadata_as::<Meta>().unwrap(), Meta { x: 123 });
    assert_eq!(state.tensors, tensors);
    assert_eq!(donor.calls.load(Ordering::SeqCst), 1);

    let changed = vec![f32s(&[3], [7.0, 8.0, 9.0]), tensors[1].clone()];
    *donor.state.lock().unwrap() = StateSnapshot::with_metadata(&Meta { x: 321 }, changed.clone()).unwrap();
    let state = peers[1].load_state_from_peers(None).await.unwrap().unwrap();
    assert_eq!((state.metadata_as::<Meta>().unwrap(), state.tensors), (Meta { x: 321 }, changed));
    assert_eq!(donor.calls.load(Ordering::SeqCst), 2);

    peers[0].set_allow_state_sharing(false).unwrap();
    donor_record_is(&dht, &peers[0], None).await;
    assert_eq!(peers[1].load_state_from_peers(None).await.unwrap(), None);

    peers[0].set_allow_state_sharing(true).unwrap();
    donor_record_is(&dht, &peers[0], Some(0.0)).await;
    assert!(peers[1].load_state_from_peers(None).await.unwrap().is_some());
    assert_eq!(donor.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_11_load_state_priority() {
    // The default provider: {"group_key": bits} and the averaged tensors; the tensor holds i.
    let network = MemoryNetwork::new();
    let dht = Arc::new(MemoryDht::new());
    let mut peers = Vec::new();
    for i in 0..4 {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let config = AveragerConfig {
            prefix: "demo-run".into(),
            allow_state_sharing: Some(i != 1),
            state_sharing_priority: 5.0 - (2.0 - i as f64).abs(),
            ..AveragerConfig::default()
        };
        let tensors = vec![f32s(&[2], [i as f32; 2])];
        peers.push(Averager::new(tensors, dht.clone() as Arc<dyn Dht>, transport, config).await.unwrap());
    }
    for (i, p) in peers.iter().enumerate() {
        donor_record_is(&dht, p, (i != 1).then(|| 5.0 - (2.0 - i as f64).abs())).await;
    }
    let source = |state: Option<averager_core::averager::AveragerState>| {
        state.unwrap().tensors[0].as_f32().unwrap()[0]
    };
    assert_eq!(source(peers[0].load_state_from_peers(None).await.unwrap()), 2.0);
    assert_eq!(source(peers[2].load_state_from_peers(None).await.unwrap()), 3.0);

    peers[0].set_state_sharing_priority(10.0).unwrap();
    donor_record_is(&dht, &peers[0], Some(10.0)).await;
    assert_eq!(source(peers[2].load_state_from_peers(None).await.unwrap()), 0.0);

    peers[1].set_allow_state_sharing(false).unwrap();
    peers[2].set_allow_state_sharing(false).unwrap();
    donor_record_is(&dht, &peers[2], None).await;
    assert_eq!(source(peers[0].load_state_from_peers(None).await.unwrap()), 3.0);
    // The default metadata names the donor's group bits.
    let state = peers[0].load_state_from_peers(None).await.unwrap().unwrap();
    let meta: std::collections::BTreeMap<String, String> = state.metadata_as().unwrap();
    assert_eq!(meta.get("group_key").map(String::as_str), Some(""));
}
