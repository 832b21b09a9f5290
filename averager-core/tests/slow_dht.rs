//! Matchmaking over a DHT whose reads take longer than matchmaking's shortest refresh interval
//! (50 ms), as a debug-build Kademlia DHT of 8 or 9 nodes on a loaded machine does (reads of
//! 70-350 ms measured in the 8-node soak).
//!
//! The pick loop once stamped the refresh time *before* the read, so a read slower than the
//! interval made the next refresh due at once and the loop re-read forever without ever asking
//! the best leader to take it; every step then failed with "could not find a group" (the soak's
//! 8 nodes averaged 12-35 times a minute instead of ~370). It stamps it after the read now.
//!
//! And over a DHT whose stores can take longer than a shutdown waits: a Kademlia store waits up
//! to its query timeout (10 s) for replicas, longer than the default `shutdown_timeout` (5 s). A
//! node stopped in the middle of matchmaking withdrew its declaration with such a store, its step
//! outlived the shutdown, and `averager node` exited with status 1. The withdrawal is bounded by
//! one `request_timeout` now (the entry expires on its own anyway). Likewise a read of the
//! declarations that never completes: the search now stops waiting for it when cancelled.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use averager_core::averager::{Averager, AveragerConfig, StepOptions};
use averager_core::dht::{Dht, DhtCapabilities, DhtDictionary, MemoryDht};
use averager_core::time::DhtTime;
use averager_core::transport::{MemoryNetwork, MemorySettings, MemoryTransport, Transport};
use bytes::Bytes;
use common::*;

/// What [`FaultyDht`] does wrong.
#[derive(Clone, Copy)]
enum Fault {
    /// Every read takes this long (network latency, not synchronisation).
    SlowReads(Duration),
    /// Reads never complete: a Kademlia read waiting out its query timeout while the swarm
    /// leaves.
    StuckReads,
    /// Withdrawing a declaration never completes: a Kademlia store waiting out its query timeout
    /// for replicas that do not answer.
    StuckWithdrawals,
}

/// The in-process DHT with one [`Fault`]; `reached` is told when matchmaking reaches the
/// faulty call's neighbourhood (the first read for stuck reads, the first declaration for stuck
/// withdrawals).
struct FaultyDht {
    inner: MemoryDht,
    fault: Fault,
    reached: tokio::sync::Notify,
}

impl FaultyDht {
    fn new(fault: Fault) -> Arc<FaultyDht> {
        Arc::new(FaultyDht { inner: MemoryDht::new(), fault, reached: tokio::sync::Notify::new() })
    }
}

#[async_trait]
impl Dht for FaultyDht {
    fn name(&self) -> &str {
        "faulty-memory"
    }

    fn capabilities(&self) -> DhtCapabilities {
        self.inner.capabilities()
    }

    async fn store(
        &self,
        key: &str,
        subkey: &[u8],
        value: Bytes,
        expiration: DhtTime,
    ) -> averager_core::Result<bool> {
        if let Fault::StuckWithdrawals = self.fault {
            // A declaration's value is msgpack `true` (0xc3); a withdrawal's is `false` (0xc2).
            if value.as_ref() == [0xc2] {
                return std::future::pending().await;
            }
            let stored = self.inner.store(key, subkey, value, expiration).await;
            self.reached.notify_one();
            return stored;
        }
        self.inner.store(key, subkey, value, expiration).await
    }

    async fn get(&self, key: &str, latest: bool) -> averager_core::Result<DhtDictionary> {
        match self.fault {
            Fault::SlowReads(delay) => tokio::time::sleep(delay).await,
            Fault::StuckReads => {
                self.reached.notify_one();
                return std::future::pending().await;
            }
            Fault::StuckWithdrawals => {}
        }
        self.inner.get(key, latest).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_form_groups_when_dht_reads_are_slower_than_the_refresh_interval() {
    let dht: Arc<dyn Dht> = FaultyDht::new(Fault::SlowReads(Duration::from_millis(120)));
    let network = MemoryNetwork::new();
    let config = AveragerConfig {
        prefix: "slow".into(),
        target_group_size: Some(4),
        min_matchmaking_time: Duration::from_secs(3),
        ..AveragerConfig::default()
    };
    let mut peers = Vec::new();
    for i in 0..4 {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let tensors = vec![f32s(&[4], [i as f32; 4])];
        peers.push(Averager::new(tensors, Arc::clone(&dht), transport, config.clone()).await.unwrap());
    }
    // Far more than the 3 s a round takes; without the fix every step runs out of it.
    let results = step_all(&peers, |_| StepOptions::default().timeout(Duration::from_secs(30))).await;
    for (i, result) in results.into_iter().enumerate() {
        let gathered = result.unwrap_or_else(|e| panic!("peer {i} found no group: {e}"));
        assert!(gathered.len() >= 2, "peer {i} averaged alone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_matchmaking_ends_even_when_a_read_never_completes() {
    shutdown_during_matchmaking_ends(Fault::StuckReads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_matchmaking_ends_even_when_the_withdrawal_never_completes() {
    shutdown_during_matchmaking_ends(Fault::StuckWithdrawals).await;
}

/// A lone peer steps; once matchmaking reaches the stuck call, the averager shuts down, and must
/// end its step within `shutdown_timeout` (it used to wait for the stuck call forever).
async fn shutdown_during_matchmaking_ends(fault: Fault) {
    let dht = FaultyDht::new(fault);
    let config = AveragerConfig {
        prefix: "stuck".into(),
        target_group_size: Some(2),
        min_matchmaking_time: Duration::from_secs(2),
        request_timeout: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(20),
        ..AveragerConfig::default()
    };
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new(MemoryNetwork::new()));
    let shared: Arc<dyn Dht> = dht.clone();
    let alone = Arc::new(Averager::new(vec![f32s(&[4], [1.0; 4])], shared, transport, config).await.unwrap());
    let stepping = {
        let alone = Arc::clone(&alone);
        tokio::spawn(async move { alone.step(StepOptions::default()).await })
    };
    tokio::time::timeout(SCENARIO_TIMEOUT, dht.reached.notified())
        .await
        .expect("matchmaking never got there");
    let shutdown = tokio::time::timeout(SCENARIO_TIMEOUT, alone.shutdown()).await.expect("shutdown hung");
    shutdown.expect("shutdown waits for the step, which must end");
    let step = tokio::time::timeout(SCENARIO_TIMEOUT, stepping).await.expect("step hung").expect("step task");
    assert!(step.is_err(), "a lone peer cannot have averaged: {step:?}");
}
