//! protocol 10.2 scenario 11 through the averager: donors chosen by state-sharing priority. Scenario
//! 10 (downloads from a custom state provider) lives in the conformance crate's scenario suite
//! (`averager_conformance::scenarios`), which runs it on every transport and DHT backend.

mod common;

use std::sync::Arc;
use std::time::Duration;

use averager_core::averager::{Averager, AveragerConfig};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::records::decode_priority;
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

/// Issue 11 (and 16, item 4): a donor in the middle of an all-reduce serves at once, the state it
/// had when the round began, instead of making the download wait for its round. The round here
/// lasts at least 2 s (the partner's parts and replies are held 2 s), and the downloader's chunk timeout is
/// 0.5 s: before, the download waited for the tensor lock, ran out of time, and came back `None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_serves_its_state_while_it_averages() {
    use averager_core::averager::StepOptions;
    use averager_core::transport::{Fault, FaultyTransport, Rpc};
    let network = MemoryNetwork::new();
    let dht = Arc::new(MemoryDht::new());
    let config = |share: bool| AveragerConfig {
        prefix: "demo-run".into(),
        target_group_size: Some(2),
        min_matchmaking_time: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        allow_state_sharing: Some(share),
        state_sharing_priority: if share { 1.0 } else { 0.0 },
        client_mode: Some(false),
        ..AveragerConfig::default()
    };
    let mut peers = Vec::new();
    for i in 0..3 {
        let settings = MemorySettings { name: Some(format!("busy{i}")), ..Default::default() };
        let (transport, plan) =
            FaultyTransport::new(Arc::new(MemoryTransport::with_settings(network.clone(), settings)));
        if i == 1 {
            // Both directions: whoever of the two reduces the one part, the round waits for it.
            plan.add(Fault::Delay(Duration::from_secs(2)).rpc(Rpc::AggregatePart));
        }
        let tensors = vec![f32s(&[4], [i as f32; 4])];
        let peer =
            Averager::new(tensors, dht.clone() as Arc<dyn Dht>, Arc::new(transport), config(i == 0)).await;
        peers.push(peer.unwrap());
    }
    donor_record_is(&dht, &peers[0], Some(1.0)).await;
    let control = peers[0].step_background(StepOptions::default()).await.unwrap();
    let partner = peers[1].step_background(StepOptions::default()).await.unwrap();
    // Download once the donor's all-reduce runs.
    let running = control.wait_for_stage(averager_core::averager::Stage::RunningAllreduce);
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the donor never began its all-reduce");
    let began = tokio::time::Instant::now();
    let state = peers[2].load_state_from_peers(Some(Duration::from_secs(10))).await.unwrap();
    let state = state.expect("the averaging donor served its state");
    assert_eq!(state.tensors[0].as_f32().unwrap(), &[0.0; 4], "the state the round began with");
    assert!(!control.is_done(), "the download finished after the donor's round ({:?})", began.elapsed());
    control.result().await.unwrap();
    partner.result().await.unwrap();
    assert_eq!(values(&peers[0]).await[0], vec![0.5; 4]);
    for p in &peers {
        p.shutdown().await.unwrap();
    }
}
