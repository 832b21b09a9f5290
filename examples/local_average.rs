//! A local swarm averaging real tensors with Moshpit rounds: 8 peers, groups of 2, 2 group bits,
//! so every peer holds the exact global mean after 3 rounds (protocol 3.9).
//!
//! Every peer is a full `Averager` (matchmaking in a DHT, then a butterfly all-reduce in its
//! group); they run in this process on the in-process backends (`MemoryDht`, `mem://peer<i>`),
//! through the same traits a networked peer uses.
//!
//! ```sh
//! cargo run --release --example local_average -- --peers 8 --floats 4000000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use averager::memory::{MemoryDht, MemoryNetwork, MemorySettings, MemoryTransport};
use averager::{Averager, AveragerConfig, Dht, StepOptions, Tensor, Transport};
use rand::{Rng, SeedableRng};

struct Args {
    peers: usize,
    floats: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { peers: 8, floats: 4_000_000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: usize = value.parse().map_err(|_| format!("{flag}: {value:?} is not a whole number"))?;
        match flag.as_str() {
            "--peers" if n >= 2 && n.is_power_of_two() => args.peers = n,
            "--floats" if n >= 1 => args.floats = n,
            _ => {
                return Err(format!(
                    "bad flag or value: {flag} {value} (--peers: a power of two >= 2; --floats N)"
                ));
            }
        }
    }
    Ok(args)
}

/// Largest difference between two peers on any element.
async fn spread(peers: &[Averager]) -> f32 {
    let mut lo: Vec<f32> = Vec::new();
    let mut hi: Vec<f32> = Vec::new();
    for peer in peers {
        let tensors = peer.tensors().await;
        let values = tensors[0].as_f32().unwrap_or(&[]);
        if lo.is_empty() {
            lo = values.to_vec();
            hi = values.to_vec();
        }
        for (e, &v) in values.iter().enumerate() {
            lo[e] = lo[e].min(v);
            hi[e] = hi[e].max(v);
        }
    }
    lo.iter().zip(&hi).map(|(l, h)| h - l).fold(0.0, f32::max)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    // Groups of 2 and log2(peers) - 1 bits: exact convergence after log2(peers) rounds.
    let bits = args.peers.trailing_zeros() as usize - 1;
    let rounds = bits + 1;
    println!(
        "{} peers, {} f32 each ({:.1} MB), groups of 2, {bits} group bits, {rounds} rounds, in-process backends",
        args.peers,
        args.floats,
        args.floats as f64 * 4e-6
    );

    let network = MemoryNetwork::new();
    let dht: Arc<dyn Dht> = Arc::new(MemoryDht::new());
    let mut peers = Vec::new();
    let mut mean = vec![0f64; args.floats];
    for i in 0..args.peers {
        let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
        let values: Vec<f32> = (0..args.floats).map(|_| rng.random_range(-1.0..1.0) + i as f32).collect();
        for (m, v) in mean.iter_mut().zip(&values) {
            *m += *v as f64 / args.peers as f64;
        }
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let config = AveragerConfig {
            prefix: "local-average".into(),
            target_group_size: Some(2),
            initial_group_bits: format!("{:0bits$b}", i / 2),
            min_matchmaking_time: Duration::from_secs(1),
            request_timeout: Duration::from_millis(500),
            ..AveragerConfig::default()
        };
        let tensors = vec![Tensor::from_f32(vec![args.floats], values)?];
        peers.push(Averager::new(tensors, dht.clone(), transport, config).await?);
    }
    println!("round 0: spread across peers {:.4}", spread(&peers).await);

    for round in 1..=rounds {
        let start = Instant::now();
        let steps = peers.iter().map(|p| p.step(StepOptions::default().timeout(Duration::from_secs(60))));
        let results = futures::future::join_all(steps).await;
        let seconds = start.elapsed().as_secs_f64();
        let mut groups = std::collections::BTreeSet::new();
        for result in results {
            let gathered = result?;
            groups.insert(gathered.endpoints().map(str::to_string).collect::<Vec<_>>());
        }
        println!(
            "round {round}: {} groups formed, {:.3} s, algbw {:.0} MB/s per peer, spread {:.6}",
            groups.len(),
            seconds,
            args.floats as f64 * 4.0 / seconds / 1e6,
            spread(&peers).await
        );
    }

    let mut worst = 0f64;
    for peer in &peers {
        let tensors = peer.tensors().await;
        for (x, m) in tensors[0].as_f32()?.iter().zip(&mean) {
            worst = worst.max((*x as f64 - m).abs());
        }
    }
    let agree = worst <= 1e-4;
    for peer in &peers {
        peer.shutdown().await?;
    }
    println!(
        "every peer holds the global mean: {} (largest deviation {worst:.2e})",
        if agree { "yes" } else { "NO" }
    );
    if agree { Ok(()) } else { Err("peers did not reach the global mean".into()) }
}
