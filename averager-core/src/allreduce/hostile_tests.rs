//! Hostile senders cannot hang or crash a reducer (protocol 4.5, 4.7): each gets its `MessageCode`
//! or is dropped after `sender_timeout`, and the honest peers finish.

use std::sync::Arc;
use std::time::Duration;

use averager_proto::MessageCode;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::tests::{Swarm, infos, settings};
use super::*;
use crate::compression::{Compression, CompressionInfo, NoCompression};
use crate::matchmaking::PeerMode;
use crate::reduce::MeanReducer;
use crate::registry::Registry;
use crate::tensor::Tensor;
use crate::transport::{AveragingData, MessageStream};

const GROUP: &[u8] = b"group-of-the-test-00";

/// Two honest NODEs (0, 1) and an attacker (2, a NODE with share 0, so nobody sends to it) in one
/// group; the tensor is 8 f32 in parts of 4 (16 bytes), so peer 0 reduces elements 0..4 and peer
/// 1 elements 4..8.
struct Setup {
    swarm: Swarm,
    honest: Vec<AllReduceRound>,
    inputs: Vec<Vec<Tensor>>,
}

async fn setup(sender_timeout: Option<Duration>) -> Setup {
    let swarm = Swarm::with_wait(3, Duration::from_millis(500)).await;
    let modes = [PeerMode::Node; 3];
    let inputs: Vec<Vec<Tensor>> = (0..2)
        .map(|i| vec![Tensor::from_f32(vec![8], (0..8).map(|e| (10 * i + e) as f32).collect()).unwrap()])
        .collect();
    let mut settings = settings(16, 1.0);
    settings.sender_timeout = sender_timeout;
    let honest = (0..2)
        .map(|i| {
            let runner = AllReduceRound::with_shares(
                AllReduceInputs {
                    group: swarm.group(&modes, i),
                    tensors: Arc::new(inputs[i].clone().into()),
                    infos: infos(&inputs[i]),
                    codec: Arc::new(NoCompression),
                    reducer: Arc::new(MeanReducer),
                    transport: swarm.transports[i].clone(),
                    registry: Registry::global(),
                    settings: settings.clone(),
                },
                vec![1.0, 1.0, 0.0],
            )
            .unwrap();
            swarm.routers[i].register(runner.span());
            runner
        })
        .collect();
    Setup { swarm, honest, inputs }
}

fn part(values: &[f32]) -> crate::compression::WireTensor {
    let t = Tensor::from_f32(vec![values.len()], values.to_vec()).unwrap();
    NoCompression.compress(&t.view(), &CompressionInfo::default()).unwrap()
}

fn first_message(endpoint: &str, group_id: &[u8], values: &[f32]) -> AveragingData {
    AveragingData {
        code: MessageCode::PartForAveraging as i32,
        group_id: Bytes::copy_from_slice(group_id),
        endpoint: endpoint.to_string(),
        tensor_part: Some(part(values)),
        weight: 1.0,
        ..Default::default()
    }
}

/// Opens a stream from the attacker to `target`, sending `messages` and then, if `hold`, keeping
/// the input open; returns the reply stream and the input's sender (drop it to end the input).
async fn attack(
    setup: &Setup,
    target: usize,
    messages: Vec<AveragingData>,
    hold: bool,
) -> (MessageStream<AveragingData>, Option<mpsc::Sender<AveragingData>>) {
    let client = setup.swarm.transports[2].connect(&setup.swarm.endpoints[target]).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    for m in messages {
        tx.send(m).await.unwrap();
    }
    let requests = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let replies = client.rpc_aggregate_part(Box::pin(requests)).await.unwrap();
    (replies, if hold { Some(tx) } else { None })
}

/// The codes of a stream's replies, leaving out the reducer's `PART_PENDING` (see `progress.rs`),
/// which come as often as time passes.
async fn codes(mut replies: MessageStream<AveragingData>) -> Vec<i32> {
    let mut codes = Vec::new();
    while let Some(reply) =
        tokio::time::timeout(Duration::from_secs(10), replies.next()).await.expect("reply stalled")
    {
        let reply = reply.unwrap();
        if !super::progress::is_pending(&reply) {
            codes.push(reply.code);
        }
    }
    codes
}

/// Runs the honest peers to completion (bounded) and returns their tensors after the update.
async fn finish_honest(setup: &mut Setup) -> Vec<Vec<f32>> {
    let runs = futures::future::join_all(std::mem::take(&mut setup.honest).into_iter().map(|r| r.run()));
    let outcomes = tokio::time::timeout(Duration::from_secs(20), runs).await.expect("honest peers hung");
    outcomes
        .into_iter()
        .zip(&setup.inputs)
        .map(|(outcome, input)| {
            let outcome = outcome.unwrap();
            let mut tensors = input.clone();
            outcome.deltas.apply(&outcome.plan, &mut tensors, 1.0).unwrap();
            tensors[0].as_f32().unwrap().to_vec()
        })
        .collect()
}

fn honest_mean() -> Vec<f32> {
    (0..8).map(|e| ((e) as f32 + (10 + e) as f32) / 2.0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_group_id_gets_bad_group_id() {
    let mut s = setup(Some(Duration::from_millis(500))).await;
    let me = s.swarm.endpoints[2].clone();
    let (replies, _) = attack(&s, 0, vec![first_message(&me, b"not-this-group", &[0.0; 4])], false).await;
    assert_eq!(codes(replies).await, [MessageCode::BadGroupId as i32]);
    // The attacker never joined the reduction, so it is excluded after sender_timeout.
    for values in finish_honest(&mut s).await {
        assert_eq!(values, honest_mean());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_sender_endpoint_gets_protocol_violation() {
    let mut s = setup(Some(Duration::from_millis(500))).await;
    let (replies, _) = attack(&s, 0, vec![first_message("mem://stranger", GROUP, &[0.0; 4])], false).await;
    assert_eq!(codes(replies).await, [MessageCode::ProtocolViolation as i32]);
    for values in finish_honest(&mut s).await {
        assert_eq!(values, honest_mean());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_of_the_wrong_length_gets_protocol_violation() {
    // The ban on the bad part unblocks reducer 0; reducer 1, which the attacker never contacts,
    // excludes it after sender_timeout.
    let mut s = setup(Some(Duration::from_millis(500))).await;
    let me = s.swarm.endpoints[2].clone();
    let (replies, _) = attack(&s, 0, vec![first_message(&me, GROUP, &[0.0; 3])], false).await;
    assert_eq!(codes(replies).await, [MessageCode::ProtocolViolation as i32]);
    for values in finish_honest(&mut s).await {
        assert_eq!(values, honest_mean());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_beyond_the_plan_gets_protocol_violation_after_the_honest_replies() {
    let mut s = setup(None).await;
    let me = s.swarm.endpoints[2].clone();
    let attacker = [100.0f32; 8];
    let extra = AveragingData { tensor_part: Some(part(&[1.0; 4])), weight: 1.0, ..Default::default() };
    let (to_0, _) = attack(&s, 0, vec![first_message(&me, GROUP, &attacker[..4]), extra], false).await;
    let (to_1, _) = attack(&s, 1, vec![first_message(&me, GROUP, &attacker[4..])], false).await;
    // Joined in one task: the swarm (and its servers) must outlive the attacker's reads.
    let (honest, codes_0, codes_1) = tokio::join!(finish_honest(&mut s), codes(to_0), codes(to_1));
    assert_eq!(codes_0, [MessageCode::AveragedPart as i32, MessageCode::ProtocolViolation as i32]);
    assert_eq!(codes_1, [MessageCode::AveragedPart as i32]);
    // The attacker's one planned part counts: the mean is over three senders.
    let expected: Vec<f32> = (0..8).map(|e| (e as f32 + (10 + e) as f32 + 100.0) / 3.0).collect();
    for values in honest {
        for (v, x) in values.iter().zip(&expected) {
            assert!((v - x).abs() < 1e-4, "{values:?} vs {expected:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_forever_is_dropped_after_sender_timeout() {
    let mut s = setup(Some(Duration::from_millis(500))).await;
    let me = s.swarm.endpoints[2].clone();
    // To peer 1: one part, then the input stays open forever. To peer 0: a stream that never
    // sends its first message; the router refuses it after its wait.
    let (to_1, _hold_1) = attack(&s, 1, vec![first_message(&me, GROUP, &[100.0; 4])], true).await;
    let client = s.swarm.transports[2].connect(&s.swarm.endpoints[0]).await.unwrap();
    let (_hold_0, rx) = mpsc::channel::<AveragingData>(1);
    let requests = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let silent = tokio::spawn(async move { client.rpc_aggregate_part(Box::pin(requests)).await.map(|_| ()) });
    let values = finish_honest(&mut s).await;
    // Reducer 0 never saw the attacker (excluded by the watchdog); reducer 1 got its one part.
    let mut expected = honest_mean();
    for (e, x) in expected.iter_mut().enumerate().skip(4) {
        *x = (e as f32 + (10 + e) as f32 + 100.0) / 3.0;
    }
    for v in values {
        for (a, b) in v.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-4, "{v:?} vs {expected:?}");
        }
    }
    // Peer 1 answered the part it got, then dropped the stalled stream with INTERNAL_ERROR.
    assert_eq!(codes(to_1).await, [MessageCode::AveragedPart as i32, MessageCode::InternalError as i32]);
    let refused = tokio::time::timeout(Duration::from_secs(10), silent).await.expect("silent stream hung");
    assert!(matches!(refused.unwrap(), Err(crate::Error::Timeout { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goodbye_that_arrives_before_the_group_registers_still_excludes_the_sender() {
    // Rounds exist but are not registered yet; no timeouts at all, so only the goodbye can
    // release the reducers from waiting for the attacker (who leaves instead of sending).
    let swarm = Swarm::with_wait(3, Duration::from_millis(200)).await;
    let modes = [PeerMode::Node; 3];
    let inputs: Vec<Vec<Tensor>> = (0..2)
        .map(|i| vec![Tensor::from_f32(vec![8], (0..8).map(|e| (10 * i + e) as f32).collect()).unwrap()])
        .collect();
    let runners: Vec<AllReduceRound> = (0..2)
        .map(|i| {
            AllReduceRound::with_shares(
                AllReduceInputs {
                    group: swarm.group(&modes, i),
                    tensors: Arc::new(inputs[i].clone().into()),
                    infos: infos(&inputs[i]),
                    codec: Arc::new(NoCompression),
                    reducer: Arc::new(MeanReducer),
                    transport: swarm.transports[i].clone(),
                    registry: Registry::global(),
                    settings: settings(16, 1.0),
                },
                vec![1.0, 1.0, 0.0],
            )
            .unwrap()
        })
        .collect();
    let leaver = swarm.endpoints[2].clone();
    for target in 0..2 {
        let goodbye = AveragingData {
            code: MessageCode::Cancelled as i32,
            group_id: Bytes::from_static(GROUP),
            endpoint: leaver.clone(),
            ..Default::default()
        };
        let client = swarm.transports[2].connect(&swarm.endpoints[target]).await.unwrap();
        let replies = client.rpc_aggregate_part(Box::pin(futures::stream::iter([goodbye]))).await.unwrap();
        assert!(codes(replies).await.is_empty(), "a goodbye gets no reply");
    }
    for (router, runner) in swarm.routers.iter().zip(&runners) {
        router.register(runner.span());
    }
    let runs = futures::future::join_all(runners.into_iter().map(|r| r.run()));
    let outcomes =
        tokio::time::timeout(Duration::from_secs(20), runs).await.expect("a reducer waited for the leaver");
    for (outcome, input) in outcomes.into_iter().zip(&inputs) {
        let outcome = outcome.unwrap();
        let mut tensors = input.clone();
        outcome.deltas.apply(&outcome.plan, &mut tensors, 1.0).unwrap();
        assert_eq!(tensors[0].as_f32().unwrap(), honest_mean().as_slice());
    }
}

/// A sender that had every reply and closed its stream before its end frame (its transport's
/// task lagging behind) sent everything: it is not excluded, and hears no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_closed_after_its_last_part_is_a_normal_end() {
    let mut s = setup(None).await;
    let me = s.swarm.endpoints[2].clone();
    let attacker = [100.0f32; 8];
    let (to_0, _) = attack(&s, 0, vec![first_message(&me, GROUP, &attacker[..4])], false).await;
    let span = Arc::clone(s.honest[1].span());
    let closed = futures::stream::iter([Err(crate::Error::Cancelled(format!("{me} went away")))]);
    let to_1 = span.serve(first_message(&me, GROUP, &attacker[4..]), Box::pin(closed));
    let (honest, codes_0, codes_1) = tokio::join!(finish_honest(&mut s), codes(to_0), codes(to_1));
    assert_eq!(codes_0, [MessageCode::AveragedPart as i32]);
    assert_eq!(codes_1, [MessageCode::AveragedPart as i32], "no INTERNAL_ERROR after the last reply");
    let sender = span.part_reducer().unwrap().num_senders() - 1;
    assert!(!span.part_reducer().unwrap().is_banned(sender), "the sender was excluded");
    let expected: Vec<f32> = (0..8).map(|e| (e as f32 + (10 + e) as f32 + 100.0) / 3.0).collect();
    for values in honest {
        for (v, x) in values.iter().zip(&expected) {
            assert!((v - x).abs() < 1e-4, "{values:?} vs {expected:?}");
        }
    }
}
