//! Issue 11: one dead peer must not make the survivors drop each other.
//!
//! Four peers on the fault-injecting transport, in virtual time (tokio's paused clock, so every
//! timeout fires at the same instant on every run). The timeouts are close together
//! (`sender_timeout` 2 s, `reducer_timeout` 2.2 s, which validation allows) and one reducer is
//! slow: its replies take 0.5 s to leave. Before `PART_PENDING`, each survivor took that slow, live
//! reducer for a dead one 2.2 s into the all-reduce (it was still waiting out the dead sender, and
//! its first reply came at 2.5 s), stopped reading it, was banned from its span in turn, and the
//! survivors ended with arbitrary mixes of averaged and local values. Now the only values allowed
//! are those of protocol 4.7, checked part by part.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::compression::{CompressionInfo, NoCompression};
use crate::matchmaking::PeerMode;
use crate::reduce::MeanReducer;
use crate::registry::Registry;
use crate::tensor::Tensor;
use crate::transport::{
    Fault, FaultPlan, FaultyTransport, MemoryNetwork, MemorySettings, MemoryTransport, Rpc, ServerHandle,
    Transport,
};

const PEERS: usize = 4;
/// 256 f32 per part at 1 KiB parts: 4 parts per member's span.
const FLOATS: usize = 4096;
const PART_BYTES: usize = 1024;
const SENDER_TIMEOUT: Duration = Duration::from_secs(2);
const REDUCER_TIMEOUT: Duration = Duration::from_millis(2200);

struct Peers {
    transports: Vec<Arc<dyn Transport>>,
    plans: Vec<FaultPlan>,
    routers: Vec<Arc<RoundRouter>>,
    endpoints: Vec<String>,
    _servers: Vec<ServerHandle>,
}

async fn peers(tag: &str) -> Peers {
    let network = MemoryNetwork::new();
    let mut peers =
        Peers { transports: vec![], plans: vec![], routers: vec![], endpoints: vec![], _servers: vec![] };
    for i in 0..PEERS {
        let settings = MemorySettings { name: Some(format!("{tag}{i}")), ..Default::default() };
        let (transport, plan) =
            FaultyTransport::new(Arc::new(MemoryTransport::with_settings(network.clone(), settings)));
        let transport: Arc<dyn Transport> = Arc::new(transport);
        let router = Arc::new(RoundRouter::new(Duration::from_secs(10)));
        let server = transport.serve(router.clone()).await.unwrap();
        peers.endpoints.push(server.endpoint().to_string());
        peers._servers.push(server);
        peers.transports.push(transport);
        peers.plans.push(plan);
        peers.routers.push(router);
    }
    peers
}

/// Peer `i`'s values: distinct per peer and element, so every mean is told apart from the others.
fn tensors(i: usize) -> Vec<Tensor> {
    let values =
        (0..FLOATS).map(|e| ((i + 1) * 1000 + e % 251) as f32 * if i.is_multiple_of(2) { 1.0 } else { -0.5 });
    vec![Tensor::from_f32(vec![FLOATS], values.collect()).unwrap()]
}

fn runner(peers: &Peers, i: usize, reducer_timeout: Duration) -> AllReduceRound {
    let members = peers
        .endpoints
        .iter()
        .map(|e| GroupMember { endpoint: e.clone(), mode: PeerMode::Node, bandwidth: None })
        .collect();
    let group = AllReduceGroup { group_id: Bytes::from_static(b"cascade-group-000000"), members, me: i };
    let tensors = tensors(i);
    let infos = vec![CompressionInfo::for_tensor(0, &tensors[0].view())];
    let runner = AllReduceRound::with_shares(
        AllReduceInputs {
            group,
            tensors: Arc::new(tensors.into()),
            infos,
            codec: Arc::new(NoCompression),
            reducer: Arc::new(MeanReducer),
            transport: peers.transports[i].clone(),
            registry: Registry::global(),
            settings: AllReduceSettings {
                part_size_bytes: PART_BYTES,
                min_vector_size: 0,
                sender_timeout: Some(SENDER_TIMEOUT),
                reducer_timeout: Some(reducer_timeout),
                weight: 1.0,
            },
        },
        vec![1.0; PEERS],
    )
    .unwrap();
    peers.routers[i].register(runner.span());
    runner
}

/// What protocol 4.7 allows for one part on a survivor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    /// The mean over all four peers (the part reached its reducer from everyone).
    All,
    /// The mean over the survivors.
    Survivors,
    /// The survivor's own value (the dead peer's span).
    Local,
}

/// Runs `survivors`' all-reduce, applies the results, and returns, per survivor and per part, which
/// of the allowed values it holds (panicking on any other value).
async fn run_and_classify(peers: &Peers, survivors: &[usize], reducer_timeout: Duration) -> Vec<Vec<Value>> {
    let runners: Vec<_> = survivors.iter().map(|&i| runner(peers, i, reducer_timeout)).collect();
    let outcomes = futures::future::join_all(runners.into_iter().map(|r| r.run())).await;
    let inputs: Vec<Vec<f32>> = (0..PEERS).map(|i| tensors(i)[0].as_f32().unwrap().to_vec()).collect();
    let mean =
        |who: &[usize], e: usize| who.iter().map(|&p| inputs[p][e] as f64).sum::<f64>() / who.len() as f64;
    let everyone: Vec<usize> = (0..PEERS).collect();
    let mut classes = Vec::new();
    for (outcome, &i) in outcomes.into_iter().zip(survivors) {
        let outcome = outcome.unwrap_or_else(|e| panic!("survivor {i} failed: {e}"));
        let mut out = tensors(i);
        outcome.deltas.apply(&outcome.plan, &mut out, 1.0).unwrap();
        let got = out[0].as_f32().unwrap();
        let per_part = outcome
            .plan
            .parts()
            .iter()
            .map(|part| {
                let close = |x: f64, g: f32| (g as f64 - x).abs() <= 1e-6 * (1.0 + x.abs());
                let fits = |class: Value| {
                    part.range.clone().all(|e| match class {
                        Value::All => close(mean(&everyone, e), got[e]),
                        Value::Survivors => close(mean(survivors, e), got[e]),
                        Value::Local => got[e] == inputs[i][e],
                    })
                };
                [Value::All, Value::Survivors, Value::Local].into_iter().find(|&c| fits(c)).unwrap_or_else(
                    || panic!("survivor {i}, part {:?}: values protocol 4.7 does not allow", part.range),
                )
            })
            .collect();
        classes.push(per_part);
    }
    classes
}

/// The parts of member `owner`'s span, as indices into the plan's parts.
fn span(owner: usize) -> std::ops::Range<usize> {
    let per_member = FLOATS / PEERS / (PART_BYTES / 4);
    owner * per_member..(owner + 1) * per_member
}

/// A peer that never starts (dead before the all-reduce), a slow live reducer, timeouts close
/// together: every survivor averages every span but the dead peer's over the survivors, exactly,
/// and keeps its own values in the dead peer's span.
#[tokio::test(start_paused = true)]
async fn a_sender_that_never_starts_does_not_make_a_slow_reducer_look_dead() {
    for reducer_timeout in [REDUCER_TIMEOUT, SENDER_TIMEOUT + Duration::from_millis(1)] {
        let peers = peers("never").await;
        let dead = 3;
        peers.plans[dead].kill();
        peers.plans[1].add(Fault::Delay(Duration::from_millis(500)).rpc(Rpc::AggregatePart).server_side());
        let began = tokio::time::Instant::now();
        let classes = run_and_classify(&peers, &[0, 1, 2], reducer_timeout).await;
        for (s, per_part) in classes.iter().enumerate() {
            for (p, class) in per_part.iter().enumerate() {
                let expected = if span(dead).contains(&p) { Value::Local } else { Value::Survivors };
                assert_eq!(*class, expected, "reducer timeout {reducer_timeout:?}: survivor {s}, part {p}");
            }
        }
        // The dead sender is banned after sender_timeout; after that only the slow reducer's
        // queue remains: its 4 replies and the few PART_PENDING before them, each leaving 0.5 s
        // after the previous one. Nothing waits out a reducer_timeout.
        let took = began.elapsed();
        assert!(took <= SENDER_TIMEOUT + Duration::from_millis(500) * 8, "took {took:?}");
    }
}

/// A sender that dies after its first two parts to every reducer (its stream stalls, as a killed
/// process's would on a link that sends no reset), with a slow reducer beside it: in every span
/// but its own, parts 0 and 1 hold the mean over all four and the rest the survivors' mean; its own
/// span, which it keeps reducing, holds the mean over all four.
#[tokio::test(start_paused = true)]
async fn a_sender_that_stalls_mid_stream_excludes_only_itself() {
    let peers = peers("stall").await;
    let stalled = 3;
    peers.plans[stalled].add(Fault::StallAfter(2).rpc(Rpc::AggregatePart).client_side());
    peers.plans[1].add(Fault::Delay(Duration::from_millis(500)).rpc(Rpc::AggregatePart).server_side());
    let stalled_runner = runner(&peers, stalled, REDUCER_TIMEOUT);
    let stalled_run = tokio::spawn(async move { stalled_runner.run().await.map(|_| ()) });
    let classes = run_and_classify(&peers, &[0, 1, 2], REDUCER_TIMEOUT).await;
    for (s, per_part) in classes.iter().enumerate() {
        for (p, class) in per_part.iter().enumerate() {
            let expected = if span(stalled).contains(&p) || p - span(p / span(0).len()).start < 2 {
                Value::All
            } else {
                Value::Survivors
            };
            assert_eq!(*class, expected, "survivor {s}, part {p}");
        }
    }
    // The stalled peer's own run ends too: its stalled streams count as failed reducers for it.
    let _ = stalled_run.await.unwrap();
}
