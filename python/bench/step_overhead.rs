//! The Rust side of the Python step-overhead measurement (`python/bench/README.md`): two peers in
//! one process share one Kademlia node and one two-worker runtime, each averaging `--floats`
//! f32 (default 16 M = 64 MB) over gRPC on 127.0.0.1; prints each timed round as one JSON line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use averager::grpc::GrpcTransport;
use averager::kad::{KadDht, KadSettings};
use averager::{Averager, AveragerConfig, Dht, StepOptions, Tensor, Transport};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> averager::Result<()> {
    let floats = arg("--floats", 16 << 20);
    let rounds = arg("--rounds", 5);
    let listen = "/ip4/127.0.0.1/tcp/0".parse().map_err(|e| averager::Error::Config(format!("{e}")))?;
    let dht: Arc<dyn Dht> =
        Arc::new(KadDht::start(KadSettings { listen: vec![listen], ..Default::default() }).await?);
    let config = AveragerConfig {
        prefix: "overhead".into(),
        target_group_size: Some(2),
        min_matchmaking_time: Duration::from_secs(1),
        request_timeout: Duration::from_millis(500),
        ..AveragerConfig::default()
    };
    let mut peers = Vec::new();
    for i in 0..2 {
        let transport: Arc<dyn Transport> = Arc::new(GrpcTransport::bind(([127, 0, 0, 1], 0).into()));
        let tensors = vec![Tensor::from_f32(vec![floats], vec![i as f32; floats])?];
        peers.push(Averager::new(tensors, Arc::clone(&dht), transport, config.clone()).await?);
    }
    // Round 0 warms up connections and is not reported.
    for round in 0..=rounds {
        let steps = peers.iter().map(|p| async move {
            let start = Instant::now();
            let ok = p.step(StepOptions::default().timeout(Duration::from_secs(120))).await.is_ok();
            (start.elapsed().as_secs_f64(), ok)
        });
        let times = futures::future::join_all(steps).await;
        if round > 0 {
            let secs: Vec<f64> = times.iter().map(|t| t.0).collect();
            let ok = times.iter().all(|t| t.1);
            println!("{{\"api\":\"rust\",\"round\":{round},\"step_secs\":{secs:?},\"ok\":{ok}}}");
        }
    }
    for p in &peers {
        p.shutdown().await?;
    }
    Ok(())
}
