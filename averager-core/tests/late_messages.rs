//! Messages that arrive late but do arrive must not leave a step running forever, with the
//! default configuration (no `sender_timeout`, no `allreduce_timeout`).
//!
//! Both were found by the scenario suite under heavy load over QUIC, and are reproduced here
//! deterministically with `FaultyTransport` delays.

mod common;

use std::sync::Arc;
use std::time::Duration;

use averager_core::averager::{Averager, AveragerConfig, StepOptions};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::tensor::Tensor;
use averager_core::transport::{
    Fault, FaultRule, FaultyTransport, MemoryNetwork, MemorySettings, MemoryTransport, Rpc,
};
use common::*;

/// Two NODE peers on a shared in-process network, each behind its own fault plan.
async fn two_peers(config: AveragerConfig, fault: FaultRule, values: [f32; 2]) -> Vec<Averager> {
    let network = MemoryNetwork::new();
    let dht = Arc::new(MemoryDht::new());
    let mut peers = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let settings = MemorySettings { name: Some(format!("late{i}")), ..Default::default() };
        let (transport, plan) =
            FaultyTransport::new(Arc::new(MemoryTransport::with_settings(network.clone(), settings)));
        plan.add(fault.clone());
        let tensors = vec![Tensor::from_f32(vec![1 << 14], vec![value; 1 << 14]).unwrap()];
        let peer =
            Averager::new(tensors, dht.clone() as Arc<dyn Dht>, Arc::new(transport), config.clone()).await;
        peers.push(peer.unwrap());
    }
    peers
}

/// A first part that reaches its reducer after `request_timeout` is still reduced: the stream is
/// not cut (it carries no group id yet, so its runner could never learn the sender is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_first_part_is_awaited_not_cut() {
    let config = AveragerConfig {
        prefix: "late-part".into(),
        target_group_size: Some(2),
        request_timeout: Duration::from_millis(300),
        min_matchmaking_time: Duration::from_millis(500),
        client_mode: Some(false),
        ..AveragerConfig::default()
    };
    let fault = Fault::Delay(Duration::from_secs(1)).rpc(Rpc::AggregatePart).client_side();
    let peers = two_peers(config, fault, [1.0, 3.0]).await;
    let results = step_all(&peers, |_| StepOptions::default()).await;
    for (i, result) in results.iter().enumerate() {
        let gathered = result.as_ref().unwrap_or_else(|e| panic!("peer {i}: {e}"));
        assert_eq!(gathered.len(), 2, "peer {i}");
    }
    for peer in &peers {
        // Nothing was cut, so both hold the exact mean.
        assert!(values(peer).await[0].iter().all(|&v| v == 2.0));
        peer.shutdown().await.unwrap();
    }
}

/// A leader that assembles its group the moment a follower joins, but whose acceptance reaches the
/// follower after the follower's `request_timeout`, has a member that is averaging elsewhere. The
/// leader learns it when that member answers its parts with `BAD_GROUP_ID`, stops counting on it,
/// and its step ends (here by retrying, since nobody else was in the group) within its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_got_the_group_does_not_hang_the_leader() {
    let config = AveragerConfig {
        prefix: "late-accept".into(),
        target_group_size: Some(2),
        request_timeout: Duration::from_secs(1),
        min_matchmaking_time: Duration::from_secs(2),
        client_mode: Some(false),
        ..AveragerConfig::default()
    };
    let fault = Fault::Delay(Duration::from_millis(1500)).rpc(Rpc::JoinGroup).server_side();
    let peers = two_peers(config, fault, [0.0, 1.0]).await;
    let step_timeout = Duration::from_secs(8);
    let steps = peers.iter().map(|p| p.step(StepOptions::default().timeout(step_timeout)));
    // Every join reply is late, so no group can form for good; what matters is that both steps
    // end. Matchmaking respects the step timeout, and the leader's all-reduce ends at the first
    // BAD_GROUP_ID, so twice the step timeout is a generous bound.
    let ended = tokio::time::timeout(2 * step_timeout, futures::future::join_all(steps)).await;
    let results = ended.expect("a step was still running at twice its timeout");
    for (i, result) in results.iter().enumerate() {
        if let Ok(gathered) = result {
            // A step that did succeed averaged with its partner.
            assert_eq!(gathered.len(), 2, "peer {i}");
        }
    }
    for peer in &peers {
        peer.shutdown().await.unwrap();
    }
}
