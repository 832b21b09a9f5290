//! protocol 10.4 scenario 22: faulty peers cannot stop the honest ones, which finish with the exact
//! mean wherever the faults allow it and their own values elsewhere.
//!
//! Faults are injected with `FaultyTransport` (deterministic, no timing luck): FAIL_BEFORE fails
//! every part stream of the peer at once; FAIL_SENDING / SLOW_SENDING fail / stall its stream to
//! the last reducer after the first part; FAIL_REDUCING / SLOW_REDUCING stall its replies after
//! three; CANCEL cancels its step after the group formed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use averager_core::averager::{Averager, AveragerConfig, Stage, StepOptions};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::tensor::Tensor;
use averager_core::transport::{
    Fault, FaultPlan, FaultyTransport, MemoryNetwork, MemorySettings, MemoryTransport, Rpc, Transport,
};
use common::*;
use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    None,
    FailBefore,
    FailSending,
    SlowSending,
    FailReducing,
    SlowReducing,
    Cancel,
}

impl Kind {
    fn sending(self) -> bool {
        matches!(self, Kind::FailSending | Kind::SlowSending)
    }
    fn reducing(self) -> bool {
        matches!(self, Kind::FailReducing | Kind::SlowReducing)
    }
    /// Faults that need the group (the last reducer) or a formed group to cancel.
    fn needs_group(self) -> bool {
        self.sending() || self == Kind::Cancel
    }
}

fn tensors(rng: &mut impl Rng) -> Vec<Tensor> {
    vec![
        f32s(&[16, 1024], (0..16 * 1024).map(|_| rng.random::<f32>())),
        f32s(&[3, 8192], (0..3 * 8192).map(|_| -rng.random::<f32>())),
        f32s(&[4, 4, 4], (0..64).map(|_| 2.0 * randn(rng))),
        f32s(&[1024, 1024], (0..1024 * 1024).map(|_| randn(rng))),
    ]
}

fn flat(tensors: &[Vec<f32>]) -> Vec<f32> {
    tensors.concat()
}

async fn scenario(fault0: Kind, fault1: Kind) {
    let faults = [fault0, fault1, Kind::None, Kind::None, Kind::None];
    let mut rng = rng(22);
    let inputs: Vec<Vec<Tensor>> = (0..5).map(|_| tensors(&mut rng)).collect();
    let network = MemoryNetwork::new();
    let dht = Arc::new(MemoryDht::new());
    let mut peers: Vec<Averager> = Vec::new();
    let mut plans: Vec<FaultPlan> = Vec::new();
    for i in 0..5 {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let inner: Arc<dyn Transport> = Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let (faulty, plan) = FaultyTransport::new(inner);
        let config = AveragerConfig {
            prefix: "mygroup".into(),
            client_mode: Some(i == 1),
            request_timeout: Duration::from_millis(300),
            min_matchmaking_time: Duration::from_secs(1),
            next_chunk_timeout: Some(Duration::from_millis(500)),
            allreduce_timeout: Some(Duration::from_secs(5)),
            part_size_bytes: 1 << 16,
            ..AveragerConfig::default()
        };
        let peer = Averager::new(inputs[i].clone(), dht.clone() as Arc<dyn Dht>, Arc::new(faulty), config);
        peers.push(peer.await.unwrap());
        match faults[i] {
            Kind::FailBefore => {
                plan.add(Fault::FailAfter(0).rpc(Rpc::AggregatePart));
            }
            Kind::FailReducing | Kind::SlowReducing => {
                plan.add(Fault::StallAfter(3).rpc(Rpc::AggregatePart).server_side());
            }
            _ => {}
        }
        plans.push(plan);
    }

    let options = |i: usize| {
        StepOptions::default()
            .timeout(Duration::from_secs(5))
            .allow_retries(false)
            .require_trigger(faults[i].needs_group())
    };
    let mut controls = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        controls.push(peer.step_background(options(i)).await.unwrap());
    }
    for i in 0..2 {
        if !faults[i].needs_group() {
            continue;
        }
        tokio::time::timeout(Duration::from_secs(10), controls[i].wait_for_stage(Stage::AwaitingTrigger))
            .await
            .expect("the faulty peer found no group");
        if faults[i] == Kind::Cancel {
            controls[i].cancel();
            continue;
        }
        // The last member in group order that reduces (CLIENTs reduce nothing).
        let group = controls[i].group().unwrap();
        let last = group.iter().rev().find(|e| !e.starts_with("client://")).unwrap().clone();
        let fault = if faults[i] == Kind::FailSending { Fault::FailAfter(1) } else { Fault::StallAfter(1) };
        plans[i].add(fault.rpc(Rpc::AggregatePart).client_side().calls_to(last));
        controls[i].allow_allreduce();
    }
    for (i, c) in controls.iter().enumerate().skip(2) {
        let result = tokio::time::timeout(SCENARIO_TIMEOUT, c.result()).await.expect("an honest peer hung");
        result.unwrap_or_else(|e| panic!("({fault0:?}, {fault1:?}) honest peer {i} failed: {e}"));
    }
    for c in &controls[..2] {
        let _ = tokio::time::timeout(SCENARIO_TIMEOUT, c.result()).await.expect("a faulty peer hung");
    }

    // The reference: the mean over peers that took part (not FAIL_BEFORE, not CANCEL).
    let included: Vec<usize> =
        (0..5).filter(|&i| !matches!(faults[i], Kind::FailBefore | Kind::Cancel)).collect();
    let flat_inputs: Vec<Vec<f32>> = inputs
        .iter()
        .map(|ts| flat(&ts.iter().map(|t| t.as_f32().unwrap().to_vec()).collect::<Vec<_>>()))
        .collect();
    let n = flat_inputs[0].len();
    let reference: Vec<f64> = (0..n)
        .map(|e| included.iter().map(|&i| flat_inputs[i][e] as f64).sum::<f64>() / included.len() as f64)
        .collect();
    if faults.contains(&Kind::Cancel) {
        return;
    }
    for i in 2..5 {
        let got = flat(&values(&peers[i]).await);
        let exact: Vec<bool> = (0..n).map(|e| (got[e] as f64 - reference[e]).abs() <= 1e-5).collect();
        let share_exact = exact.iter().filter(|x| **x).count() as f64 / n as f64;
        let what = format!("({fault0:?}, {fault1:?}) peer {i}");
        if fault0.sending() && fault1.sending() {
            // Only the last reducer's span is affected: the first half is exact.
            assert!(exact[..n / 2].iter().all(|x| *x), "{what}: the first half is not exact");
        } else if fault0.reducing() && fault1.reducing() {
            assert!(share_exact > 0.5, "{what}: only {share_exact:.2} exact");
            for e in 0..n {
                let local = (got[e] - flat_inputs[i][e]).abs() <= 1e-5;
                assert!(exact[e] || local, "{what}[{e}]: neither the mean nor the local value");
            }
        } else if fault0 == Kind::None {
            assert!(exact.iter().all(|x| *x), "{what}: not exact everywhere ({share_exact:.4})");
        } else {
            assert!(share_exact > 0.5, "{what}: only {share_exact:.2} exact");
        }
    }
}

macro_rules! pair {
    ($name:ident, $a:ident, $b:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            scenario(Kind::$a, Kind::$b).await;
        }
    };
}

pair!(none_and_fail_before, None, FailBefore);
pair!(fail_before_twice, FailBefore, FailBefore);
pair!(slow_sending_and_fail_sending, SlowSending, FailSending);
pair!(fail_sending_and_fail_before, FailSending, FailBefore);
pair!(slow_reducing_and_fail_sending, SlowReducing, FailSending);
pair!(fail_reducing_twice, FailReducing, FailReducing);
pair!(none_and_cancel, None, Cancel);
