//! protocol 6.3 against stalled and hostile donors and hostile DHT records: each costs at most a
//! timeout or a bounded amount of memory, and the next donor is used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use averager_proto::MessageCode;
use bytes::Bytes;

use super::donor::encode_priority;
use super::download::{download_from, list_donors};
use super::tests::{PREFIX, StateService, Swarm, randn, x_state};
use super::*;
use crate::compression::{Compression, CompressionInfo, NoCompression, WireTensor, split_for_streaming};
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::tensor::Tensor;
use crate::transport::{
    AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest, JoinRequest,
    MessageFromLeader, MessageStream, ServerHandle,
};

/// A donor that sends `messages` and then ends, or stalls forever when `stall`.
struct Scripted {
    messages: Vec<Result<DownloadData>>,
    stall: bool,
}

#[async_trait]
impl AveragingService for Scripted {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        _: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        Err(Error::Internal("a scripted donor".into()))
    }

    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        _: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        Err(Error::Internal("a scripted donor".into()))
    }

    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        let sent = futures::stream::iter(self.messages.clone());
        Ok(if self.stall {
            Box::pin(futures::StreamExt::chain(sent, futures::stream::pending()))
        } else {
            Box::pin(sent)
        })
    }
}

fn metadata() -> DownloadData {
    DownloadData { metadata: Bytes::from_static(&[0xc0]), tensor_part: None }
}

fn chunk(part: WireTensor) -> DownloadData {
    DownloadData { metadata: Bytes::new(), tensor_part: Some(part) }
}

/// The chunks of a 1000-element f32 tensor, split 1000 bytes at a time (4 chunks).
fn chunks() -> Vec<WireTensor> {
    let tensor = randn(1000);
    let wire =
        NoCompression.compress(&tensor.view(), &CompressionInfo::for_tensor(0, &tensor.view())).unwrap();
    split_for_streaming(wire, 1000)
}

/// Serves a scripted donor at `mem://<name>` and declares it with `priority`.
async fn scripted(
    swarm: &Swarm,
    name: &str,
    priority: f64,
    messages: Vec<Result<DownloadData>>,
    stall: bool,
) -> ServerHandle {
    let server = swarm.serve(name, Arc::new(Scripted { messages, stall })).await;
    swarm.declare(server.endpoint().as_bytes(), &encode_priority(Some(priority))).await;
    server
}

/// The good donor every test falls back to: `{x: 42}` and one tensor.
async fn good_donor(swarm: &Swarm) -> (super::tests::Peer, Vec<Tensor>) {
    let tensors = vec![randn(10)];
    (swarm.peer("good", true, 0.0, x_state(42, tensors.clone())).await, tensors)
}

#[tokio::test]
async fn a_donor_stalling_mid_stream_is_abandoned_after_the_chunk_timeout() {
    let swarm = Swarm::new();
    let (_good, tensors) = good_donor(&swarm).await;
    let first = chunks().remove(0);
    let _stalling = scripted(&swarm, "stalling", 5.0, vec![Ok(metadata()), Ok(chunk(first))], true).await;
    let chunk_timeout = Duration::from_millis(200);
    let started = Instant::now();
    let (_, got) = swarm.load_with("mem://me", chunk_timeout, None, 1 << 20).await.unwrap().unwrap();
    assert_eq!(got, tensors);
    let elapsed = started.elapsed();
    assert!(elapsed >= chunk_timeout && elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn the_overall_timeout_bounds_the_whole_call() {
    let swarm = Swarm::new();
    let _stalling = scripted(&swarm, "stalling", 5.0, vec![Ok(metadata())], true).await;
    let result =
        swarm.load_with("mem://me", Duration::from_secs(60), Some(Duration::from_millis(100)), 1 << 20).await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
}

#[tokio::test]
async fn garbage_and_metadata_less_donors_are_skipped() {
    let swarm = Swarm::new();
    let parts = chunks();
    let undecodable = WireTensor { buffer: Bytes::from_static(&[1, 2, 3]), ..parts[0].clone() };
    let unknown_codec = WireTensor { codec: "acme-nothing".into(), chunks: 0, ..parts[0].clone() };
    type Script = (Vec<Result<DownloadData>>, fn(&Error) -> bool);
    let violation = |e: &Error| matches!(e, Error::Protocol { code: MessageCode::ProtocolViolation, .. });
    let scripts: Vec<Script> = vec![
        // No metadata: a tensor chunk first, or nothing at all.
        (vec![Ok(chunk(parts[0].clone()))], violation),
        (vec![], violation),
        // A continuation chunk before any tensor started.
        (vec![Ok(metadata()), Ok(chunk(parts[1].clone()))], violation),
        // A tensor short of its announced chunks, and one with too many.
        (vec![Ok(metadata()), Ok(chunk(parts[0].clone())), Ok(chunk(parts[1].clone()))], violation),
        (
            [vec![Ok(metadata())], parts.iter().chain(&parts[1..2]).cloned().map(|p| Ok(chunk(p))).collect()]
                .concat(),
            violation,
        ),
        // Buffers that do not match the shape, and a codec nobody registered.
        (vec![Ok(metadata()), Ok(chunk(WireTensor { chunks: 0, ..undecodable }))], |e| {
            matches!(e, Error::Codec { .. })
        }),
        (vec![Ok(metadata()), Ok(chunk(unknown_codec))], |e| matches!(e, Error::UnknownPlugin { .. })),
        // Metadata twice, a message with no tensor part, a failing stream.
        (vec![Ok(metadata()), Ok(metadata())], violation),
        (vec![Ok(metadata()), Ok(DownloadData::default())], violation),
        (vec![Ok(metadata()), Err(Error::Transport("reset".into()))], |e| matches!(e, Error::Transport(_))),
    ];
    let mut servers = Vec::new();
    for (i, (script, expected)) in scripts.into_iter().enumerate() {
        let server = scripted(&swarm, &format!("hostile{i}"), 10.0 + i as f64, script, false).await;
        let registry = Registry::global();
        let alone = download_from(
            swarm.transport.as_ref(),
            registry,
            server.endpoint(),
            Duration::from_secs(2),
            1 << 20,
        );
        let error = alone.await.expect_err("a hostile donor");
        assert!(expected(&error), "script {i}: {error}");
        servers.push(server);
    }
    let fast = Duration::from_secs(2);
    assert_eq!(swarm.load_with("mem://me", fast, None, 1 << 20).await.unwrap(), None);

    let (_good, tensors) = good_donor(&swarm).await;
    let (metadata, got) = swarm.load_with("mem://me", fast, None, 1 << 20).await.unwrap().unwrap();
    assert_eq!((metadata, got), (x_state(42, Vec::new()).metadata, tensors));
}

#[tokio::test]
async fn a_state_over_max_state_bytes_is_refused() {
    let swarm = Swarm::new();
    let tensors = vec![randn(100_000), randn(100_000)];
    let _donor = swarm.peer("big", true, 0.0, x_state(1, tensors.clone())).await;
    let timeout = Duration::from_secs(5);
    assert_eq!(swarm.load_with("mem://me", timeout, None, 500_000).await.unwrap(), None);
    let (_, got) = swarm.load_with("mem://me", timeout, None, 1_000_000).await.unwrap().unwrap();
    assert_eq!(got, tensors);
}

#[tokio::test]
async fn hostile_dht_values_are_ignored() {
    let swarm = Swarm::new();
    let (good, _) = good_donor(&swarm).await;
    let float_nan = encode_priority(Some(f64::NAN));
    let values: [&[u8]; 7] = [
        &[0xc1],             // never-used msgpack marker
        b"\xa2hi",           // a string
        &[0xc3],             // true
        &[],                 // nothing
        &[0x07, 0x07],       // an int with trailing bytes
        &float_nan,          // not orderable
        &[0x92, 0x01, 0x02], // an array
    ];
    for (i, value) in values.iter().enumerate() {
        swarm.declare(format!("mem://hostile{i}").as_bytes(), value).await;
    }
    swarm.declare(&[0xff, 0xfe], &encode_priority(Some(100.0))).await;
    // A foreign peer may write a msgpack int: it counts as a priority.
    swarm.declare(b"mem://int-donor", &[0x07]).await;
    swarm.declare(b"mem://withdrawn", &[0xc0]).await;

    let donors = list_donors(&swarm.dht, PREFIX, "mem://me").await.unwrap();
    assert_eq!(donors, vec![("mem://int-donor".to_string(), 7.0), (good.endpoint.clone(), 0.0)]);
    // The int donor is unreachable, so the good donor serves.
    assert!(swarm.load("mem://me").await.is_some());
}

#[test]
fn priorities_round_trip_through_msgpack() {
    for p in [0.0, -3.5, 10.0, 1e300] {
        assert_eq!(decode_priority(&encode_priority(Some(p))).unwrap(), Some(p));
    }
    assert_eq!(decode_priority(&encode_priority(None)).unwrap(), None);
    // hivemind writes Python ints as msgpack ints and floats as float64; both are priorities.
    assert_eq!(decode_priority(&[0xd0, 0xfb]).unwrap(), Some(-5.0));
    assert_eq!(decode_priority(&[0xca, 0x40, 0x20, 0, 0]).unwrap(), Some(2.5));
    assert!(decode_priority(&[0xcb, 0, 0]).is_err(), "truncated float");
}

#[tokio::test]
async fn a_failing_provider_refuses_the_download_and_the_next_donor_serves() {
    struct Failing;
    #[async_trait]
    impl StateProvider for Failing {
        async fn current_state(&self) -> Result<StateSnapshot> {
            Err(Error::Internal("the state is being rebuilt".into()))
        }
    }
    let swarm = Swarm::new();
    let (_good, tensors) = good_donor(&swarm).await;
    let sharing = Arc::new(StateSharing::new(true, 9.0).unwrap());
    let service = StateService { sharing, provider: Arc::new(Failing) };
    let server = swarm.serve("failing", Arc::new(service)).await;
    swarm.declare(server.endpoint().as_bytes(), &encode_priority(Some(9.0))).await;
    let (_, got) = swarm.load("mem://me").await.unwrap();
    assert_eq!(got, tensors);
}
