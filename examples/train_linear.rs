//! Collaborative training: 4 peers each fit a linear model on their own shard of synthetic data
//! and average their parameters every few local steps, as peers training one model over the
//! internet would (local SGD with periodic averaging).
//!
//! The shards differ on purpose (each peer's inputs are centred elsewhere), so a peer that trained
//! alone would settle on its own shard's optimum. Averaging pulls every peer towards the optimum of
//! the union of the shards; the loss printed is that union's mean squared error, next to the
//! single-machine optimum computed in closed form.
//!
//! ```sh
//! cargo run --release --example train_linear -- --rounds 40 --plot loss.svg
//! ```
//!
//! The peers run in this process and talk gRPC over 127.0.0.1; matchmaking uses one in-process
//! `MemoryDht` (across machines, each peer would run its own Kademlia node instead).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use averager::grpc::GrpcTransport;
use averager::memory::MemoryDht;
use averager::{Averager, AveragerConfig, Dht, StepOptions, Tensor, Transport};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PEERS: usize = 4;
const FEATURES: usize = 8;
const SAMPLES_PER_PEER: usize = 2000;
const BATCH: usize = 32;
const LEARNING_RATE: f64 = 0.02;

struct Args {
    rounds: usize,
    local_steps: usize,
    plot: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { rounds: 40, local_steps: 10, plot: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--plot" => args.plot = Some(PathBuf::from(value)),
            "--rounds" | "--local-steps" => {
                let n: usize =
                    value.parse().map_err(|_| format!("{flag}: {value:?} is not a whole number"))?;
                if n == 0 {
                    return Err(format!("{flag} must be at least 1"));
                }
                if flag == "--rounds" { args.rounds = n } else { args.local_steps = n }
            }
            _ => return Err(format!("unknown flag {flag} (--rounds N, --local-steps N, --plot FILE.svg)")),
        }
    }
    Ok(args)
}

/// One peer's shard: rows of `FEATURES` inputs and their targets.
struct Shard {
    x: Vec<[f64; FEATURES]>,
    y: Vec<f64>,
}

/// A standard-normal sample (Box-Muller).
fn randn(rng: &mut impl Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// `y = x . w + b + noise`, with this peer's inputs centred at a peer-specific offset.
fn make_shard(peer: usize, w: &[f64; FEATURES], b: f64, rng: &mut impl Rng) -> Shard {
    let centre = peer as f64 - (PEERS as f64 - 1.0) / 2.0;
    let mut shard = Shard { x: Vec::new(), y: Vec::new() };
    for _ in 0..SAMPLES_PER_PEER {
        let row: [f64; FEATURES] = std::array::from_fn(|_| centre + randn(rng));
        let y = row.iter().zip(w).map(|(x, w)| x * w).sum::<f64>() + b + 0.3 * randn(rng);
        shard.x.push(row);
        shard.y.push(y);
    }
    shard
}

/// Mean squared error of parameters `p` (`FEATURES` weights, then the bias) over `shards`.
fn loss(p: &[f64], shards: &[Shard]) -> f64 {
    let (mut total, mut n) = (0.0, 0usize);
    for shard in shards {
        for (x, y) in shard.x.iter().zip(&shard.y) {
            let e = x.iter().zip(p).map(|(x, w)| x * w).sum::<f64>() + p[FEATURES] - y;
            total += e * e;
            n += 1;
        }
    }
    total / n as f64
}

/// The least-squares optimum over all shards: the normal equations, by Gaussian elimination.
fn optimum(shards: &[Shard]) -> Vec<f64> {
    const D: usize = FEATURES + 1;
    let mut a = [[0.0f64; D + 1]; D];
    for shard in shards {
        for (x, y) in shard.x.iter().zip(&shard.y) {
            let row: [f64; D] = std::array::from_fn(|i| if i < FEATURES { x[i] } else { 1.0 });
            for i in 0..D {
                for j in 0..D {
                    a[i][j] += row[i] * row[j];
                }
                a[i][D] += row[i] * y;
            }
        }
    }
    for col in 0..D {
        let pivot = (col..D).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, pivot);
        let pivot_row = a[col];
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (v, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *v -= f * p;
                }
            }
        }
    }
    (0..D).map(|i| a[i][D] / a[i][i]).collect()
}

/// `steps` minibatch SGD steps on `p` with this peer's shard.
fn local_sgd(p: &mut [f32], shard: &Shard, steps: usize, rng: &mut impl Rng) {
    for _ in 0..steps {
        let mut grad = [0.0f64; FEATURES + 1];
        for _ in 0..BATCH {
            let i = rng.random_range(0..shard.y.len());
            let x = &shard.x[i];
            let e = x.iter().zip(p.iter()).map(|(x, w)| x * *w as f64).sum::<f64>() + p[FEATURES] as f64
                - shard.y[i];
            for (g, x) in grad.iter_mut().zip(x) {
                *g += 2.0 * e * x / BATCH as f64;
            }
            grad[FEATURES] += 2.0 * e / BATCH as f64;
        }
        for (w, g) in p.iter_mut().zip(grad) {
            *w -= (LEARNING_RATE * g) as f32;
        }
    }
}

fn draw(path: &PathBuf, losses: &[f64], best: f64) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = losses.iter().copied().fold(best, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption("train_linear: loss over the union of shards", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0..losses.len(), (best * 0.5..top).log_scale())?;
    chart.configure_mesh().x_desc("averaging round").y_desc("mean squared error").draw()?;
    chart
        .draw_series(LineSeries::new(losses.iter().enumerate().map(|(i, &l)| (i, l)), &BLUE))?
        .label("4 peers, averaged")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new([(0, best), (losses.len(), best)], RED.stroke_width(1)))?
        .label("single-machine optimum")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let mut rng = StdRng::seed_from_u64(7);
    let true_w: [f64; FEATURES] = std::array::from_fn(|_| randn(&mut rng));
    let shards: Vec<Shard> = (0..PEERS).map(|p| make_shard(p, &true_w, 0.5, &mut rng)).collect();
    let best = loss(&optimum(&shards), &shards);

    let dht: Arc<dyn Dht> = Arc::new(MemoryDht::new());
    let config = AveragerConfig {
        prefix: "train-linear".into(),
        target_group_size: Some(PEERS),
        min_matchmaking_time: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
        ..AveragerConfig::default()
    };
    let mut peers = Vec::new();
    for _ in 0..PEERS {
        let transport: Arc<dyn Transport> = Arc::new(GrpcTransport::bind("127.0.0.1:0".parse()?));
        // Every peer starts from zeros, as a model initialised from one seed would.
        let params = vec![Tensor::from_f32(vec![FEATURES + 1], vec![0.0; FEATURES + 1])?];
        peers.push(Averager::new(params, dht.clone(), transport, config.clone()).await?);
    }
    println!(
        "{PEERS} peers, {SAMPLES_PER_PEER} samples each, {} local SGD steps per round",
        args.local_steps
    );
    println!("single-machine optimum: loss {best:.5}");

    let mut losses = Vec::new();
    for round in 1..=args.rounds {
        for (i, peer) in peers.iter().enumerate() {
            let mut tensors = peer.tensors().await;
            let mut peer_rng = StdRng::seed_from_u64((round * PEERS + i) as u64);
            local_sgd(tensors[0].as_f32_mut()?, &shards[i], args.local_steps, &mut peer_rng);
        }
        let steps = peers.iter().map(|p| p.step(StepOptions::default().timeout(Duration::from_secs(30))));
        for result in futures::future::join_all(steps).await {
            result?;
        }
        let params: Vec<f64> = peers[0].tensors().await[0].as_f32()?.iter().map(|&v| v as f64).collect();
        let l = loss(&params, &shards);
        losses.push(l);
        println!("round {round:3}: loss {l:.5} (optimum {best:.5}, gap {:.1e})", l - best);
    }
    for peer in &peers {
        peer.shutdown().await?;
    }
    if let Some(path) = &args.plot {
        draw(path, &losses, best)?;
        println!("loss curve written to {}", path.display());
    }
    let last = losses.last().copied().unwrap_or(f64::INFINITY);
    let close = last <= best * 1.05;
    println!(
        "final loss {last:.5} vs optimum {best:.5}: {}",
        if close { "within 5% of the single-machine optimum" } else { "NOT within 5% of the optimum" }
    );
    if close { Ok(()) } else { Err("training did not reach the optimum".into()) }
}
