//! A user's own codec, from its own crate (`examples/custom-codec`, package `acme-codecs`):
//! registered there with one `register_codec!` line, found here by its name, and used to average
//! tensors between two peers on the in-process backends.
//!
//! ```sh
//! cargo run --example custom_codec
//! ```

use std::sync::Arc;
use std::time::Duration;

// Linking the crate is what makes its registration visible; nothing else of it is named here.
use acme_codecs as _;
use averager::memory::{MemoryDht, MemoryNetwork, MemorySettings, MemoryTransport};
use averager::{Averager, AveragerConfig, Dht, Registry, StepOptions, Tensor, Transport};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Found by name, like any built-in codec.
    let codec = Registry::global().codec("acme-int8")?;
    let info =
        Registry::global().codecs().into_iter().find(|i| i.name == "acme-int8").ok_or("not registered")?;
    println!("codec {:?} from {}: {}", codec.name(), info.origin, info.description);

    // Two peers average with it: parts travel as `acme-int8` and are decoded by that name.
    let dht: Arc<dyn Dht> = Arc::new(MemoryDht::new());
    let network = MemoryNetwork::new();
    let config = AveragerConfig {
        prefix: "custom-codec".into(),
        target_group_size: Some(2),
        compression: "acme-int8".into(),
        min_matchmaking_time: Duration::from_secs(1),
        request_timeout: Duration::from_millis(500),
        ..AveragerConfig::default()
    };
    let inputs = [vec![1.0f32, -2.0, 0.5, 3.0], vec![3.0f32, 2.0, -0.5, 1.0]];
    let mut peers = Vec::new();
    for (i, values) in inputs.iter().enumerate() {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let tensors = vec![Tensor::from_f32(vec![4], values.clone())?];
        peers.push(Averager::new(tensors, dht.clone(), transport, config.clone()).await?);
    }
    let steps = peers.iter().map(|p| p.step(StepOptions::default().timeout(Duration::from_secs(30))));
    for result in futures::future::join_all(steps).await {
        result?;
    }
    let mean: Vec<f32> = (0..4).map(|e| (inputs[0][e] + inputs[1][e]) / 2.0).collect();
    let mut worst = 0f32;
    for (i, peer) in peers.iter().enumerate() {
        let tensors = peer.tensors().await;
        let values = tensors[0].as_f32()?;
        worst = values.iter().zip(&mean).fold(worst, |w, (v, m)| w.max((v - m).abs()));
        println!("peer {i}: {values:?}");
    }
    println!("exact mean {mean:?}; largest deviation {worst:.4} (int8 steps of absmax/127)");
    for peer in &peers {
        peer.shutdown().await?;
    }
    if worst > 0.05 { Err("the codec lost too much precision".into()) } else { Ok(()) }
}
