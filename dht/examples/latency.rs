//! Latency of `store` and `get(latest = true)` on a local swarm.
//!
//! Starts `nodes` Kademlia nodes on 127.0.0.1 (TCP and QUIC, default settings), joins them, then
//! times `ops` stores and `ops` reads, one at a time, each through the next node in turn, over ten
//! keys (so records hold several subkeys, as group keys do), and prints the median and the 90th
//! percentile of each.
//!
//! ```text
//! cargo run --release -p averager-dht --example latency [-- <nodes = 5> <ops = 100>]
//! ```

use std::time::{Duration, Instant};

use averager_core::Dht;
use averager_core::time::dht_now;
use averager_dht::{KadDht, KadSettings};
use bytes::Bytes;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let ops: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    if nodes == 0 || ops == 0 {
        return Err("nodes and ops must be positive".into());
    }

    let started = Instant::now();
    let mut swarm: Vec<KadDht> = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let bootstrap = swarm.iter().flat_map(|node| node.listen_addrs()).collect();
        swarm.push(KadDht::start(KadSettings::joining(bootstrap)).await?);
    }
    for node in &swarm {
        node.wait_for_peers(nodes - 1, Duration::from_secs(60)).await?;
    }
    println!("{nodes} nodes joined in {:?}", started.elapsed());

    let run = format!("latency.{:x}", rand::random::<u32>());
    let exp = dht_now() + 600.0;
    let mut stores = Vec::with_capacity(ops);
    for i in 0..ops {
        let node = &swarm[i % nodes];
        let key = format!("{run}.{}", i % 10);
        let began = Instant::now();
        let stored =
            node.store(&key, format!("peer {i}").as_bytes(), Bytes::from_static(b"\xc3"), exp).await?;
        stores.push(began.elapsed());
        if !stored {
            return Err(format!("store {i} was refused").into());
        }
    }
    let mut gets = Vec::with_capacity(ops);
    for i in 0..ops {
        let node = &swarm[(i + 1) % nodes];
        let key = format!("{run}.{}", i % 10);
        let began = Instant::now();
        let dict = node.get(&key, true).await?;
        gets.push(began.elapsed());
        let expected = (0..ops).filter(|j| j % 10 == i % 10).count();
        if dict.len() != expected {
            return Err(format!("read {i} found {} subkeys instead of {expected}", dict.len()).into());
        }
    }
    report("store", &mut stores);
    report("get(latest=true)", &mut gets);
    for node in &swarm {
        node.shutdown().await;
    }
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:>18}: median {:>8.2} ms   p90 {:>8.2} ms   max {:>8.2} ms   ({} ops)",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(1.0)),
        samples.len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
