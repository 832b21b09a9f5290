//! Proven identities: a caller whose join request or part stream claims another peer's endpoint
//! is refused with `PROTOCOL_VIOLATION` by a real averager served over libp2p, while a caller
//! that claims its own endpoint is heard.

mod common;

use std::sync::Arc;
use std::time::Duration;

use averager_core::proto::MessageCode;
use averager_core::transport::{AveragingData, JoinRequest, Transport};
use averager_core::{Averager, AveragerConfig, Dht, Tensor};
use averager_dht::{KadDht, PeerId};
use averager_transport_libp2p::{Libp2pTransport, StreamSettings, endpoint_of};
use futures::StreamExt;

/// A bound on each call: generous, for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_caller_claiming_another_peers_endpoint_gets_protocol_violation() {
    let nodes = common::swarm(2).await;
    let dht = Arc::new(KadDht::with_node(nodes[0].clone()));
    let served =
        Arc::new(Libp2pTransport::on_node(nodes[0].clone(), StreamSettings::default()).expect("valid"));
    let tensors = vec![Tensor::from_f32(vec![4], vec![1.0; 4]).expect("a tensor")];
    let averager = Averager::new(tensors, dht, served, AveragerConfig::default()).await.expect("an averager");
    assert_eq!(averager.endpoint(), endpoint_of(&nodes[0].peer_id()));

    let caller = Libp2pTransport::on_node(nodes[1].clone(), StreamSettings::default()).expect("valid");
    let client = caller.connect(averager.endpoint()).await.expect("connects");
    let someone_else = endpoint_of(&PeerId::random());

    // A join request in another's name.
    let forged = JoinRequest { endpoint: someone_else.clone(), ..JoinRequest::default() };
    let replies = client.rpc_join_group(forged).await.expect("the call starts");
    let reply = first(replies).await.expect("a reply").expect("a message");
    assert_eq!(reply.code, MessageCode::ProtocolViolation as i32, "{reply:?}");

    // The same request in the caller's own name passes the identity check (and is answered by
    // matchmaking: this averager is not looking for a group).
    let honest = JoinRequest { endpoint: caller.endpoint(), ..JoinRequest::default() };
    let replies = client.rpc_join_group(honest).await.expect("the call starts");
    let reply = first(replies).await.expect("a reply").expect("a message");
    assert_ne!(reply.code, MessageCode::ProtocolViolation as i32, "{reply:?}");

    // A part stream in another's name.
    let part = AveragingData {
        code: MessageCode::PartForAveraging as i32,
        endpoint: someone_else,
        group_id: bytes::Bytes::from_static(b"no such group"),
        ..AveragingData::default()
    };
    let replies = client.rpc_aggregate_part(Box::pin(futures::stream::iter([part]))).await.expect("starts");
    let reply = first(replies).await.expect("a reply").expect("a message");
    assert_eq!(reply.code, MessageCode::ProtocolViolation as i32, "{reply:?}");
    let _ = averager.shutdown().await;
}

/// The first reply of a call, bounded by [`PATIENCE`].
async fn first<T>(
    mut replies: averager_core::transport::MessageStream<T>,
) -> Option<averager_core::Result<T>> {
    tokio::time::timeout(PATIENCE, replies.next()).await.expect("an answer in time")
}

/// A peer that tries to withdraw or overwrite the honest peers' declarations (and donor records)
/// in their names is refused, and the honest peers still form their group and average.
#[tokio::test]
async fn a_forger_cannot_withdraw_declarations_and_honest_peers_still_average() {
    use averager_core::records::{declare, donors_key, group_key, undeclare};
    use averager_core::time::dht_now;

    let nodes = common::swarm(3).await;
    let config = AveragerConfig { target_group_size: Some(2), ..AveragerConfig::default() };
    let mut peers = Vec::new();
    for (i, node) in nodes[..2].iter().enumerate() {
        let dht = Arc::new(KadDht::with_node(node.clone()));
        let transport =
            Arc::new(Libp2pTransport::on_node(node.clone(), StreamSettings::default()).expect("valid"));
        let tensors = vec![Tensor::from_f32(vec![4], vec![i as f32 * 2.0; 4]).expect("a tensor")];
        peers.push(Averager::new(tensors, dht, transport, config.clone()).await.expect("an averager"));
    }
    let forger = KadDht::with_node(nodes[2].clone());
    let key = group_key(&config.prefix, "");
    let later = dht_now() + 3600.0;
    for peer in &peers {
        let endpoint = peer.endpoint();
        assert!(undeclare(&forger, &key, endpoint, later).await.is_err(), "withdrew {endpoint}");
        assert!(declare(&forger, &key, endpoint, later).await.is_err(), "declared {endpoint}");
        let donors = donors_key(&config.prefix);
        let record = bytes::Bytes::from_static(&[0xc0]);
        assert!(forger.store(&donors, endpoint.as_bytes(), record, later).await.is_err(), "donor record");
    }

    let steps = peers.iter().map(|p| p.step(averager_core::StepOptions::default().timeout(PATIENCE)));
    for (i, result) in futures::future::join_all(steps).await.into_iter().enumerate() {
        let gathered = result.unwrap_or_else(|e| panic!("peer {i} did not average: {e}"));
        assert_eq!(gathered.len(), 2, "peer {i} averaged in a group of {}", gathered.len());
    }
    for peer in &peers {
        let tensors = peer.tensors().await;
        assert_eq!(tensors[0].as_f32().expect("f32"), [1.0f32; 4], "the mean of 0 and 2");
        let _ = peer.shutdown().await;
    }
}
