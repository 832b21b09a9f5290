//! Picking backends: at build time with Cargo features, at run time by registry name.
//!
//! The facade's features decide which plugins are compiled in (`grpc`, `kad` and `compression` by
//! default; `quic`, `zstd`, `lz4` on request). Whatever is compiled in registers itself, so a
//! program can choose among them by name, from flags or a config file, without naming a type:
//!
//! ```sh
//! cargo run --example select_backends                                   # gRPC + Kademlia
//! cargo run --example select_backends -- --transport mem --dht memory   # in-process
//! cargo run --example select_backends --features quic -- --transport quic --codec float16
//! ```
//!
//! Two peers are built from the names given, average one tensor, and print what they hold.

use std::sync::Arc;
use std::time::Duration;

use averager::registry::PluginConfig;
use averager::{Averager, AveragerConfig, Dht, Registry, StepOptions, Tensor, Transport};
use serde_json::json;

struct Args {
    transport: String,
    dht: String,
    codec: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { transport: "grpc".into(), dht: "kad".into(), codec: "none".into() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--transport" => args.transport = value,
            "--dht" => args.dht = value,
            "--codec" => args.codec = value,
            _ => return Err(format!("unknown flag {flag} (--transport NAME, --dht NAME, --codec NAME)")),
        }
    }
    Ok(args)
}

/// Settings for a transport plugin, as a config file would hold them: every networked transport
/// of this workspace reads `listen`.
fn transport_config(scheme: &str) -> PluginConfig {
    match scheme {
        "mem" => PluginConfig::new(json!({})),
        _ => PluginConfig::new(json!({ "listen": "127.0.0.1:0" })),
    }
}

/// One DHT handle per peer, all in one swarm.
async fn dhts(name: &str, peers: usize) -> averager::Result<Vec<Arc<dyn Dht>>> {
    let registry = Registry::global();
    #[cfg(feature = "kad")]
    if name == "kad" {
        // The first node is started by type, to learn its address; the others join it through
        // the registry, exactly as a config file naming "kad" with a bootstrap list would.
        let first = averager::kad::KadDht::start(averager::kad::KadSettings::default()).await?;
        let bootstrap: Vec<String> = first.listen_addrs().iter().map(ToString::to_string).collect();
        let mut nodes: Vec<Arc<dyn Dht>> = vec![Arc::new(first)];
        for _ in 1..peers {
            nodes.push(registry.dht("kad", PluginConfig::new(json!({ "bootstrap": bootstrap }))).await?);
        }
        return Ok(nodes);
    }
    // An in-process DHT is one table that every peer of this process shares.
    let dht = registry.dht(name, PluginConfig::new(json!({}))).await?;
    Ok(vec![dht; peers])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let registry = Registry::global();
    let names = |infos: Vec<averager::registry::PluginInfo>| {
        infos.into_iter().map(|i| i.name.to_string()).collect::<Vec<_>>().join(", ")
    };
    println!("compiled in by this build's features:");
    println!("  transports: {}", names(registry.transports()));
    println!("  DHTs:       {}", names(registry.dhts()));
    println!("  codecs:     {}", names(registry.codecs()));
    println!("  reducers:   {}", names(registry.reducers()));
    println!("chosen: transport {}, DHT {}, codec {}", args.transport, args.dht, args.codec);

    let config = AveragerConfig {
        prefix: "select-backends".into(),
        target_group_size: Some(2),
        compression: args.codec.as_str().into(),
        min_matchmaking_time: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        ..AveragerConfig::default()
    };
    let mut peers = Vec::new();
    for (i, dht) in dhts(&args.dht, 2).await?.into_iter().enumerate() {
        // An unknown name is an `Error::UnknownPlugin` that lists the names this build has.
        let transport: Arc<dyn Transport> =
            registry.transport(&args.transport, transport_config(&args.transport)).await?;
        let tensors = vec![Tensor::from_f32(vec![4], vec![i as f32 * 2.0; 4])?];
        peers.push(Averager::new(tensors, dht, transport, config.clone()).await?);
    }
    for peer in &peers {
        println!("peer at {}", peer.endpoint());
    }
    let steps = peers.iter().map(|p| p.step(StepOptions::default().timeout(Duration::from_secs(30))));
    for result in futures::future::join_all(steps).await {
        result?;
    }
    for (i, peer) in peers.iter().enumerate() {
        println!("peer {i} holds {:?} (the mean of 0 and 2 is 1)", peer.tensors().await[0].as_f32()?);
    }
    for peer in &peers {
        peer.shutdown().await?;
    }
    Ok(())
}
