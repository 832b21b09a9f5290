//! The core's own all-reduce throughput: N full averagers in one process on the in-process
//! backends, one group of N, no compression. It measures what the protocol code costs (parts,
//! codec calls, the part reducer, deltas) without any socket, so a real transport's figure can be
//! read against it.
//!
//! ```sh
//! cargo bench -p averager-core --bench allreduce -- --peers 4 --floats 16777216 --rounds 5
//! ```
//!
//! algbw is the bytes of one peer's tensor over the seconds its all-reduce took (from the group
//! forming to the result), MB = 10^6 bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use averager_core::averager::{Averager, AveragerConfig, Stage, StepOptions};
use averager_core::dht::{Dht, MemoryDht};
use averager_core::tensor::Tensor;
use averager_core::transport::{MemoryNetwork, MemorySettings, MemoryTransport, Transport};

struct Args {
    peers: usize,
    floats: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { peers: 4, floats: 16 << 20, rounds: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to every bench binary.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: usize = value.parse().map_err(|_| format!("{flag}: {value:?} is not a whole number"))?;
        match flag.as_str() {
            "--peers" if n >= 2 => args.peers = n,
            "--floats" if n >= 1 => args.floats = n,
            "--rounds" if n >= 1 => args.rounds = n,
            _ => {
                return Err(format!(
                    "bad flag or value: {flag} {value} (--peers N>=2, --floats N, --rounds N)"
                ));
            }
        }
    }
    Ok(args)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let network = MemoryNetwork::new();
    let dht: Arc<dyn Dht> = Arc::new(MemoryDht::new());
    let mut peers = Vec::new();
    for i in 0..args.peers {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let config = AveragerConfig {
            prefix: "bench".into(),
            target_group_size: Some(args.peers),
            min_matchmaking_time: Duration::from_secs(5),
            ..AveragerConfig::default()
        };
        let values: Vec<f32> = (0..args.floats).map(|e| (e % 1000) as f32 + i as f32).collect();
        let tensors = vec![Tensor::from_f32(vec![args.floats], values)?];
        peers.push(Averager::new(tensors, dht.clone(), transport, config).await?);
    }
    let bytes = args.floats as f64 * 4.0;
    println!("{} peers x {:.1} MB f32, in-process backends, no compression", args.peers, bytes / 1e6);
    let mut seconds = Vec::new();
    // Round 0 warms up allocators and connections and is not counted.
    for round in 0..=args.rounds {
        let mut controls = Vec::new();
        for peer in &peers {
            controls
                .push(peer.step_background(StepOptions::default().timeout(Duration::from_secs(120))).await?);
        }
        let timed = controls.iter().map(|control| async move {
            control.wait_for_stage(Stage::RunningAllreduce).await;
            let start = Instant::now();
            control.result().await.map(|_| start.elapsed().as_secs_f64())
        });
        let mut times = Vec::new();
        for t in futures::future::join_all(timed).await {
            times.push(t?);
        }
        let slowest = times.iter().copied().fold(0.0, f64::max);
        if round > 0 {
            seconds.push(slowest);
        }
        println!(
            "round {round}: all-reduce {slowest:.3} s, algbw {:.0} MB/s per peer",
            bytes / slowest / 1e6
        );
    }
    let m = median(&mut seconds);
    println!("median over {} rounds: {m:.3} s, algbw {:.0} MB/s per peer", args.rounds, bytes / m / 1e6);
    for peer in &peers {
        peer.shutdown().await?;
    }
    Ok(())
}
