//! **\[averager\]** automatic bandwidth: peers configured without `bandwidth` declare what they
//! measured in their previous all-reduce, so a slow peer gets a smaller span from its second
//! round on.
//!
//! One of three in-process peers sends every `rpc_aggregate_part` message (its parts as a sender
//! and its replies as a reducer) through one link of [`SLOW_LINK`] bytes per second
//! ([`Fault::Bandwidth`]), as over a slow uplink; the others' in-process links are hundreds of
//! times faster on any machine. The slow peer's estimate is its link's rate; the others' are held
//! down by the slow one (every reducer waits for its parts), and came out at 2.0-2.2 times it:
//! with replies counted that ratio is the model's, whatever the buffers (channel capacities of
//! 4, 16 and 64 gave the same). The slow peer's estimate must be its link's rate (within 30%),
//! and the others' at least 1.5 times it: links that far apart are never treated as equal by
//! load balancing (`MAX_CLUSTER_RATIO`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use averager_core::averager::{Averager, AveragerConfig, StepOptions};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::plan::load_balance;
use averager_core::transport::{
    Fault, FaultyTransport, MemoryNetwork, MemorySettings, MemoryTransport, Rpc, Transport,
};
use common::*;

/// The slow peer's uplink, in bytes per second: its 0.5 MB of parts and replies per round take
/// about half a second.
const SLOW_LINK: u64 = 1_000_000;

const FLOATS: usize = 96 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_peer_declares_less_and_gets_a_smaller_share_from_the_second_round() {
    let network = MemoryNetwork::new();
    let dht = Arc::new(MemoryDht::new());
    let mut rng = rng(14);
    let mut peers = Vec::new();
    let mut plans = Vec::new();
    for i in 0..3 {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let inner: Arc<dyn Transport> = Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let (faulty, plan) = FaultyTransport::new(inner);
        let config = AveragerConfig {
            prefix: "auto-bandwidth".into(),
            target_group_size: Some(3),
            min_group_size: 3,
            request_timeout: Duration::from_secs(2),
            min_matchmaking_time: Duration::from_secs(1),
            part_size_bytes: 1 << 14,
            ..AveragerConfig::default()
        };
        let tensors = vec![f32s(&[FLOATS], (0..FLOATS).map(|_| randn(&mut rng)))];
        peers.push(
            Averager::new(tensors, dht.clone() as Arc<dyn Dht>, Arc::new(faulty), config).await.unwrap(),
        );
        plans.push(plan);
    }
    plans[0].add(Fault::Bandwidth(SLOW_LINK).rpc(Rpc::AggregatePart));
    let slow = peers[0].endpoint().to_string();

    // Round 1: nobody has measured anything, so nobody declares a bandwidth.
    let first = step_every_peer(&peers).await;
    assert!(peers.iter().all(|p| first.bandwidth(p.endpoint()).is_none()), "{first:?}");
    let estimates: Vec<f64> =
        peers.iter().map(|p| p.estimated_bandwidth().expect("measured in round 1")).collect();
    // The slow peer measures its link (what its transport carried of parts and replies alike).
    let slow_link = SLOW_LINK as f64 / 1e6;
    assert!((estimates[0] - slow_link).abs() < 0.3 * slow_link, "estimates {estimates:?}");
    assert!(estimates[0] * 1.5 < estimates[1].min(estimates[2]), "estimates {estimates:?}");
    eprintln!("estimates after round 1 (MB/s): {estimates:?}");

    // Round 2: the measured rates are declared, and load balancing follows them.
    let second = step_every_peer(&peers).await;
    let endpoints: Vec<String> = second.endpoints().map(str::to_string).collect();
    let declared: Vec<Option<f64>> = endpoints.iter().map(|e| second.bandwidth(e)).collect();
    assert!(declared.iter().all(Option::is_some), "{declared:?}");
    let shares = load_balance(FLOATS, &declared, 0).unwrap();
    let slow_index = endpoints.iter().position(|e| *e == slow).unwrap();
    let fast_min = (0..3).filter(|&i| i != slow_index).map(|i| shares[i]).min().unwrap();
    assert!(
        shares[slow_index] < fast_min,
        "shares {shares:?} (slow peer at {slow_index}), declared {declared:?}"
    );
    for p in peers {
        p.shutdown().await.unwrap();
    }
}

/// One step on every peer at once; the slow peer's result (the group is the same for all).
async fn step_every_peer(peers: &[Averager]) -> averager_core::averager::Gathered {
    let steps = peers.iter().map(|p| p.step(StepOptions::default().timeout(Duration::from_secs(60))));
    let results = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(steps))
        .await
        .expect("the round finished");
    let mut gathered = results.into_iter().map(|r| r.expect("every peer averaged"));
    gathered.next().unwrap()
}
