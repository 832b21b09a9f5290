//! protocol 10.2 scenario 11 through the averager: donors chosen by state-sharing priority. Scenario
//! 10 (downloads from a custom state provider) lives in the conformance crate's scenario suite
//! (`averager_conformance::scenarios`), which runs it on every transport and DHT backend.

mod common;

use std::sync::Arc;
use std::time::Duration;

use averager_core::averager::{Averager, AveragerConfig};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::state::decode_priority;
use averager_core::transport::{MemoryNetwork, MemorySettings, MemoryTransport, Transport};
use common::*;

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
