//! A peer that shuts down as soon as its step returned must not take its groupmates' last
//! replies with it: its step returns only once the replies it owes as a reducer are handed to
//! the transport. (Seen with three Python processes that each ran one step and exited: now and
//! then one of them kept its own values for the last part, whose reducer had already gone.)
//!
//! Deterministic: the reducer's replies are delayed by the fault-injecting transport, so its own
//! round ends well before its groupmate has read them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use averager_core::averager::{Averager, AveragerConfig, StepOptions};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::transport::{
    Fault, FaultyTransport, MemoryNetwork, MemorySettings, MemoryTransport, Rpc, Transport,
};
use common::*;

const LEN: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reducer_that_shuts_down_right_after_its_step_still_delivers_its_replies() {
    let network = MemoryNetwork::new();
    let dht: Arc<dyn Dht> = Arc::new(MemoryDht::new());
    let config = AveragerConfig {
        prefix: "shutdown-after-step".into(),
        target_group_size: Some(2),
        min_matchmaking_time: Duration::from_secs(1),
        request_timeout: Duration::from_millis(500),
        part_size_bytes: 16 * 1024,
        ..AveragerConfig::default()
    };
    let mut peers = Vec::new();
    let mut plans = Vec::new();
    for i in 0..2 {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let memory: Arc<dyn Transport> = Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let (transport, plan) = FaultyTransport::new(memory);
        let tensors = vec![f32s(&[LEN], (0..LEN).map(|j| (i * LEN + j) as f32))];
        peers.push(
            Averager::new(tensors, Arc::clone(&dht), Arc::new(transport), config.clone()).await.unwrap(),
        );
        plans.push(plan);
    }
    // Peer 0's replies as a reducer reach peer 1 a while after peer 0 is done with its own round.
    plans[0].add(Fault::Delay(Duration::from_millis(300)).rpc(Rpc::AggregatePart).server_side());
    let [first, second] = [&peers[0], &peers[1]];
    let leaving = async {
        let result = first.step(StepOptions::default()).await;
        first.shutdown().await.unwrap();
        result
    };
    let staying = second.step(StepOptions::default());
    let (left, stayed) = tokio::time::timeout(SCENARIO_TIMEOUT, futures::future::join(leaving, staying))
        .await
        .expect("steps hung");
    left.unwrap();
    stayed.unwrap();
    let mean: Vec<f64> = (0..LEN).map(|j| (j as f64 + (LEN + j) as f64) / 2.0).collect();
    assert_close(&values(second).await[0], &mean, 0.0, "the peer that stayed");
    assert_close(&values(first).await[0], &mean, 0.0, "the peer that left");
    second.shutdown().await.unwrap();
}
