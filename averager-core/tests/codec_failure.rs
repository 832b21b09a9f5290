//! A codec that fails while a step runs (a plugin's bug, a codec that refuses some data): the peer
//! whose encoding failed ends its step with an error instead of reporting an average it did not
//! take part in, and nobody waits for it: the others exclude it and end within the test's bound
//! (no step timeouts are configured, so nothing but the failure itself can end their wait).

mod common;

use std::sync::Arc;
use std::time::Duration;

use averager_core::Result;
use averager_core::averager::{AveragerConfig, CodecSpec, StepOptions};
use averager_core::compression::{Compression, CompressionInfo, ErrorBound, NoCompression, WireTensor};
use averager_core::error::Error;
use averager_core::registry::{CodecPlugin, PluginConfig, Registry};
use averager_core::tensor::{DType, Tensor, TensorView};
use common::*;

/// NoCompression, or (with the setting `fail: true`) a codec whose every encoding fails.
#[derive(Debug)]
struct FailingCodec {
    fail: bool,
}

const NAME: &str = "test-failing";

impl Compression for FailingCodec {
    fn name(&self) -> &str {
        NAME
    }

    fn accepts(&self, dtype: DType, ndim: usize) -> bool {
        NoCompression.accepts(dtype, ndim)
    }

    fn compress(&self, tensor: &TensorView<'_>, info: &CompressionInfo) -> Result<WireTensor> {
        if self.fail {
            return Err(Error::codec(NAME, "this instance fails every encoding"));
        }
        NoCompression.compress(tensor, info)
    }

    fn extract(&self, message: &WireTensor) -> Result<Tensor> {
        NoCompression.extract(message)
    }

    fn estimate_compression_ratio(&self, info: &CompressionInfo) -> f64 {
        NoCompression.estimate_compression_ratio(info)
    }

    fn error_bound(&self, dtype: DType) -> ErrorBound {
        NoCompression.error_bound(dtype)
    }
}

fn build(config: &PluginConfig) -> Result<Arc<dyn Compression>> {
    let fail = config.value().get("fail").and_then(serde_json::Value::as_bool).unwrap_or(false);
    Ok(Arc::new(FailingCodec { fail }))
}

const PEERS: usize = 3;
const LEN: usize = 30_000;

fn config(prefix: &str, fail: bool) -> AveragerConfig {
    AveragerConfig {
        prefix: prefix.into(),
        target_group_size: Some(PEERS),
        min_group_size: PEERS,
        min_matchmaking_time: Duration::from_secs(1),
        request_timeout: Duration::from_millis(500),
        // Several parts per reducer, so a stream ends in the middle.
        part_size_bytes: 16 * 1024,
        compression: CodecSpec::Configured {
            name: NAME.into(),
            settings: serde_json::json!({ "fail": fail }),
        },
        ..AveragerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_encoding_fails_gets_an_error_and_the_others_end_without_it() {
    Registry::global().register_codec(CodecPlugin::new(NAME, "a codec that can fail", module_path!(), build));
    let setup = (0..PEERS)
        .map(|i| (vec![f32s(&[LEN], (0..LEN).map(|j| (i * LEN + j) as f32))], config("codec-fails", i == 0)))
        .collect();
    let swarm = swarm(setup).await;
    // No retries: a retry would look for a new group, which the others (done) never join.
    let results = step_all(&swarm.peers, |_| {
        StepOptions::default().allow_retries(false).timeout(Duration::from_secs(30))
    })
    .await;
    assert!(results[0].is_err(), "the peer that could not encode reported success: {:?}", results[0]);
    let mean_of_others = |j: usize| ((LEN + j) as f32 + (2 * LEN + j) as f32) / 2.0;
    // Its own span needs no encoding: that one it reduced with everyone's parts, its own included.
    let mean_of_all = |j: usize| (j as f32 + (LEN + j) as f32 + (2 * LEN + j) as f32) / 3.0;
    let mut averaged_without_it = 0;
    for (i, peer) in swarm.peers.iter().enumerate().skip(1) {
        let got = &values(peer).await[0];
        for (j, &v) in got.iter().enumerate() {
            let own = (i * LEN + j) as f32;
            assert!(
                v == own || v == mean_of_others(j) || v == mean_of_all(j),
                "peer {i}[{j}] = {v}: not its own value, nor a mean"
            );
            averaged_without_it += usize::from(v == mean_of_others(j));
        }
        if let Err(e) = &results[i] {
            panic!("peer {i} failed: {e}");
        }
    }
    assert!(averaged_without_it > 0, "the others averaged nothing among themselves");
    assert_eq!(values(&swarm.peers[0]).await[0], (0..LEN).map(|j| j as f32).collect::<Vec<_>>());
    for p in &swarm.peers {
        p.shutdown().await.unwrap();
    }
}
