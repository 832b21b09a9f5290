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
//! one `request_timeout` now (the entry expires on its own anyway).

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

/// The in-process DHT, with every read taking `delay` (network latency, not synchronisation).
struct SlowDht {
    inner: MemoryDht,
    delay: Duration,
}

#[async_trait]
impl Dht for SlowDht {
    fn name(&self) -> &str {
        "slow-memory"
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
        self.inner.store(key, subkey, value, expiration).await
    }

    async fn get(&self, key: &str, latest: bool) -> averager_core::Result<DhtDictionary> {
        tokio::time::sleep(self.delay).await;
        self.inner.get(key, latest).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_form_groups_when_dht_reads_are_slower_than_the_refresh_interval() {
    let dht: Arc<dyn Dht> = Arc::new(SlowDht { inner: MemoryDht::new(), delay: Duration::from_millis(120) });
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

/// The in-process DHT, where reading declarations never completes (a Kademlia read waiting out
/// its query timeout while the swarm leaves), and the first read is told.
struct StuckReads {
    inner: MemoryDht,
    reading: tokio::sync::Notify,
}

#[async_trait]
impl Dht for StuckReads {
    fn name(&self) -> &str {
        "stuck-reads"
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
        self.inner.store(key, subkey, value, expiration).await
    }

    async fn get(&self, _key: &str, _latest: bool) -> averager_core::Result<DhtDictionary> {
        self.reading.notify_one();
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_matchmaking_ends_even_when_a_read_never_completes() {
    let dht = Arc::new(StuckReads { inner: MemoryDht::new(), reading: tokio::sync::Notify::new() });
    let config = AveragerConfig {
        prefix: "stuck-reads".into(),
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
    tokio::time::timeout(SCENARIO_TIMEOUT, dht.reading.notified()).await.expect("no read");
    let shutdown = tokio::time::timeout(SCENARIO_TIMEOUT, alone.shutdown()).await.expect("shutdown hung");
    shutdown.expect("shutdown waits for the step, which must end");
    let step = tokio::time::timeout(SCENARIO_TIMEOUT, stepping).await.expect("step hung").expect("step task");
    assert!(step.is_err(), "a lone peer cannot have averaged: {step:?}");
}

/// The in-process DHT, where withdrawing a declaration never completes (a Kademlia store waiting
/// out its query timeout for replicas that do not answer), and the first declaration is told.
struct StuckWithdrawals {
    inner: MemoryDht,
    declared: tokio::sync::Notify,
}

#[async_trait]
impl Dht for StuckWithdrawals {
    fn name(&self) -> &str {
        "stuck-withdrawals"
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
        // A declaration's value is msgpack `true` (0xc3); a withdrawal's is `false` (0xc2).
        if value.as_ref() == [0xc2] {
            return std::future::pending().await;
        }
        let stored = self.inner.store(key, subkey, value, expiration).await;
        self.declared.notify_one();
        stored
    }

    async fn get(&self, key: &str, latest: bool) -> averager_core::Result<DhtDictionary> {
        self.inner.get(key, latest).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_matchmaking_ends_even_when_the_withdrawal_never_completes() {
    let dht = Arc::new(StuckWithdrawals { inner: MemoryDht::new(), declared: tokio::sync::Notify::new() });
    let config = AveragerConfig {
        prefix: "stuck".into(),
        target_group_size: Some(2),
        min_matchmaking_time: Duration::from_secs(2),
        request_timeout: Duration::from_millis(500),
        // Far longer than the withdrawal may take once bounded; it used to wait forever.
        shutdown_timeout: Duration::from_secs(20),
        ..AveragerConfig::default()
    };
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new(MemoryNetwork::new()));
    let tensors = vec![f32s(&[4], [1.0; 4])];
    let shared: Arc<dyn Dht> = dht.clone();
    let alone = Arc::new(Averager::new(tensors, shared, transport, config).await.unwrap());
    let stepping = {
        let alone = Arc::clone(&alone);
        tokio::spawn(async move { alone.step(StepOptions::default()).await })
    };
    // The step is in matchmaking once its declaration is in the DHT.
    tokio::time::timeout(SCENARIO_TIMEOUT, dht.declared.notified()).await.expect("no declaration");
    let shutdown = tokio::time::timeout(SCENARIO_TIMEOUT, alone.shutdown()).await.expect("shutdown hung");
    shutdown.expect("shutdown waits for the step, which must end");
    let step = tokio::time::timeout(SCENARIO_TIMEOUT, stepping).await.expect("step hung").expect("step task");
    assert!(step.is_err(), "a lone peer cannot have averaged: {step:?}");
}
