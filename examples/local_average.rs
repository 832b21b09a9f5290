//! A local swarm averaging real tensors: every peer holds different random tensors, and one
//! butterfly all-reduce (SPEC 4) leaves every peer holding the exact mean.
//!
//! All peers run in this process on the in-process transport (`mem://peer<i>`), each with its
//! own server, router and all-reduce runner; the traffic goes through the same transport trait,
//! codec and reducer plugins a networked peer uses.
//!
//! ```sh
//! cargo run --release --example local_average -- --peers 8 --floats 4000000
//! ```

use std::sync::Arc;
use std::time::Instant;

use averager::allreduce::{AllReduceGroup, AllReduceRunner, AllReduceSettings, GroupMember, RunnerRouter};
use averager::matchmaking::PeerMode;
use averager::memory::{MeanReducer, MemoryNetwork, MemorySettings, MemoryTransport, NoCompression};
use averager::{CompressionInfo, Registry, Tensor, Transport};
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
            "--peers" if n >= 1 => args.peers = n,
            "--floats" if n >= 1 => args.floats = n,
            _ => return Err(format!("unknown flag or value: {flag} {value} (flags: --peers N, --floats N)")),
        }
    }
    Ok(args)
}

/// Largest difference between any two peers, over all elements.
fn spread(peers: &[Vec<Tensor>]) -> f32 {
    let values: Vec<&[f32]> = peers.iter().map(|t| t[0].as_f32().expect("f32 tensors")).collect();
    (0..values[0].len())
        .map(|e| {
            let (lo, hi) =
                values.iter().fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(v[e]), hi.max(v[e])));
            hi - lo
        })
        .fold(0.0, f32::max)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    println!(
        "{} peers, {} f32 each ({:.1} MB per peer), in-process transport",
        args.peers,
        args.floats,
        args.floats as f64 * 4e-6
    );

    // Every peer gets different random tensors.
    let inputs: Vec<Vec<Tensor>> = (0..args.peers)
        .map(|i| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            let values: Vec<f32> = (0..args.floats).map(|_| rng.random_range(-1.0..1.0) + i as f32).collect();
            Tensor::from_f32(vec![args.floats], values).map(|t| vec![t])
        })
        .collect::<Result<_, _>>()?;
    let mean: Vec<f64> = (0..args.floats)
        .map(|e| {
            inputs.iter().map(|t| t[0].as_f32().map(|v| v[e] as f64).unwrap_or(0.0)).sum::<f64>()
                / args.peers as f64
        })
        .collect();
    println!("spread across peers before: {:.4}", spread(&inputs));

    // Each peer serves its router on one shared in-process network.
    let network = MemoryNetwork::new();
    let mut transports: Vec<Arc<dyn Transport>> = Vec::new();
    let mut routers = Vec::new();
    let mut servers = Vec::new();
    for i in 0..args.peers {
        let settings = MemorySettings { name: Some(format!("peer{i}")), ..Default::default() };
        let transport: Arc<dyn Transport> =
            Arc::new(MemoryTransport::with_settings(network.clone(), settings));
        let router = Arc::new(RunnerRouter::default());
        servers.push(transport.serve(router.clone()).await?);
        transports.push(transport);
        routers.push(router);
    }
    let members: Vec<GroupMember> = servers
        .iter()
        .map(|s| GroupMember { endpoint: s.endpoint().to_string(), mode: PeerMode::Node, bandwidth: None })
        .collect();
    let group_id = bytes::Bytes::from(rand::random::<[u8; 20]>().to_vec());

    // One runner per peer, all in one group; load balancing gives each an equal span.
    let mut runners = Vec::new();
    for i in 0..args.peers {
        let tensors = Arc::new(inputs[i].clone());
        let infos = vec![CompressionInfo::for_tensor(0, &tensors[0].view())];
        let group = AllReduceGroup { group_id: group_id.clone(), members: members.clone(), me: i };
        let settings = AllReduceSettings {
            part_size_bytes: 1 << 19,
            min_vector_size: 0,
            sender_timeout: None,
            reducer_timeout: None,
            weight: 1.0,
        };
        let runner = AllReduceRunner::new(
            group,
            tensors,
            infos,
            Arc::new(NoCompression),
            Arc::new(MeanReducer),
            transports[i].clone(),
            Registry::global(),
            settings,
        )?;
        routers[i].register(runner.clone());
        runners.push(runner);
    }

    let start = Instant::now();
    let outcomes = futures::future::join_all(runners.iter().map(|r| r.run())).await;
    let seconds = start.elapsed().as_secs_f64();
    let mut outputs = inputs.clone();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome?;
        outcome.deltas.apply(&outcome.plan, &mut outputs[i], 1.0)?;
    }

    let bytes = args.floats as f64 * 4.0;
    println!("all-reduce: {:.3} s, algbw {:.0} MB/s per peer", seconds, bytes / seconds / 1e6);
    println!("spread across peers after: {:.6}", spread(&outputs));
    let worst = outputs
        .iter()
        .flat_map(|t| t[0].as_f32().unwrap_or(&[]).iter().zip(&mean).map(|(&x, &m)| (x as f64 - m).abs()))
        .fold(0.0, f64::max);
    let agree = worst <= 1e-5;
    println!(
        "every peer holds the global mean: {} (largest deviation {worst:.2e})",
        if agree { "yes" } else { "NO" }
    );
    if agree { Ok(()) } else { Err("peers did not reach the global mean".into()) }
}
