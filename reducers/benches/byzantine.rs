//! The 8-peer Byzantine scenario for several seeds, with and without the attacker, and each robust
//! reducer's single-thread throughput on parts the size of an all-reduce part.
//!
//! ```text
//! cargo bench -p averager-reducers
//! ```

#[path = "../tests/support/byzantine.rs"]
mod byzantine;

use std::time::Instant;

use averager_core::Registry;
use averager_core::reduce::{PartOutcome, PartSpec};
use averager_core::registry::PluginConfig;
use averager_core::tensor::{DType, Tensor};
use averager_reducers as _;

const SEEDS: [u64; 5] = [1, 2, 3, 4, 5];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "8 peers, {} f32 each, sigma {}, attacker x{:e}",
        byzantine::NUMEL,
        byzantine::SIGMA,
        byzantine::ATTACK_SCALE
    );
    println!(
        "{:<14} {:>7} {:>24} {:>24}",
        "reducer", "attack", "worst SE ratio (mean)", "worst mu ratio (mean)"
    );
    for (reducer, settings) in byzantine::reducers() {
        for attack in [false, true] {
            let mut se = Vec::new();
            let mut mu = Vec::new();
            for seed in SEEDS {
                match byzantine::run(reducer, settings.clone(), attack, seed).await {
                    Ok(f) => {
                        se.push(f.ratio_to_honest_se());
                        mu.push(f.ratio_to_honest_mu());
                    }
                    Err(e) => println!("{reducer} attack={attack} seed {seed}: {e}"),
                }
            }
            let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            println!(
                "{reducer:<14} {attack:>7} {:>13.3e} ({:>8.3e}) {:>13.3e} ({:>8.3e})",
                worst(&se),
                mean(&se),
                worst(&mu),
                mean(&mu)
            );
        }
    }
    throughput();
}

/// Reduces 8 contributions of one 512 KiB float32 part (the default `part_size_bytes`).
fn throughput() {
    let len = (1 << 19) / 4;
    let senders = 8;
    let parts: Vec<Tensor> = (0..senders)
        .map(|s| {
            Tensor::from_f32(vec![len], (0..len).map(|i| ((i * 31 + s * 17) % 101) as f32 / 101.0).collect())
        })
        .collect::<Result<_, _>>()
        .expect("len values fill [len]");
    println!("\nreducer throughput, {senders} senders x {len} f32 (input MB/s, best of 3):");
    for (name, settings) in byzantine::reducers() {
        let reducer = Registry::global().reducer(name, &PluginConfig::new(settings)).expect("registered");
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let start = Instant::now();
            let spec = PartSpec { len, dtype: DType::F32, expected_senders: senders };
            let mut acc = reducer.begin(&spec).expect("f32 parts");
            for (s, p) in parts.iter().enumerate() {
                acc.add(s, &p.view(), 1.0).expect("a well-formed part");
            }
            let out = acc.finish().expect("reduces");
            assert!(matches!(out, PartOutcome::Reduced(_)));
            best = best.min(start.elapsed().as_secs_f64());
        }
        let mb = (senders * len * 4) as f64 / 1e6;
        println!("{name:<14} {:>8.1} MB/s ({:.1} ms per part)", mb / best, best * 1e3);
    }
}
