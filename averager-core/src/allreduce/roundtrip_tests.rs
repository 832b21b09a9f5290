//! protocol 10.3 scenarios 16 and 17: every part of every member, encoded and decoded, processed
//! (with `sin`) and registered, reassembles into the processed tensors, in tensor order.

use rand::{Rng, SeedableRng};

use super::deltas::Deltas;
use super::*;
use crate::compression::{Compression, CompressionInfo, NoCompression};
use crate::tensor::{DType, Tensor, TensorData};

/// Plans, encodes every part, decodes it, applies `sin`, registers `sin(x) - x` as the part's
/// delta, applies the deltas, and checks the result is `sin` of every input.
fn round_trip(tensors: &[Tensor], fractions: &[f64], part_size_bytes: usize) {
    let layouts: Vec<TensorLayout> =
        tensors.iter().map(|t| TensorLayout { numel: t.numel(), bytes_per_value: 4.0 }).collect();
    let plan = PartitionPlan::new(&layouts, fractions, part_size_bytes).unwrap();
    let mut deltas = Deltas::new(plan.parts().len());
    for member in 0..fractions.len() {
        let first = plan.first_index_of(member);
        for (k, part) in plan.parts_of(member).iter().enumerate() {
            let tensor = &tensors[part.tensor];
            let info = CompressionInfo::for_tensor(part.tensor, &tensor.view())
                .for_part(part.part_index, part.part_size);
            let wire = NoCompression.compress(&tensor.flat_view(part.range.clone()).unwrap(), &info).unwrap();
            let decoded = NoCompression.extract(&wire).unwrap();
            let x = decoded.as_f32().unwrap();
            let delta: Vec<f32> = x.iter().map(|v| v.sin() - v).collect();
            deltas.set(first + k, TensorData::F32(delta)).unwrap();
        }
    }
    let mut outputs = tensors.to_vec();
    deltas.apply(&plan, &mut outputs, 1.0).unwrap();
    for (t, (out, input)) in outputs.iter().zip(tensors).enumerate() {
        assert_eq!(out.shape(), input.shape());
        for (o, x) in out.as_f32().unwrap().iter().zip(input.as_f32().unwrap()) {
            // numpy's allclose defaults.
            assert!((o - x.sin()).abs() <= 1e-8 + 1e-5 * x.sin().abs(), "tensor {t}: {o} vs sin({x})");
        }
    }
}

fn random(shape: &[usize], rng: &mut impl Rng, f: impl Fn(f32) -> f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(shape.to_vec(), (0..n).map(|_| f(rng.random_range(-3.0..3.0))).collect()).unwrap()
}

#[test]
fn scenario_16_partitioning() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let pool: Vec<Tensor> = vec![
        random(&[30000, 128], &mut rng, |x| x),
        random(&[128], &mut rng, |x| x.abs() / 3.0),
        Tensor::from_f32(vec![1, 1, 1, 1, 1, 1, 8], vec![1.0; 8]).unwrap(),
        Tensor::zeros(vec![1, 0], DType::F32).unwrap(),
        Tensor::zeros(vec![0], DType::F32).unwrap(),
        Tensor::zeros(vec![], DType::F32).unwrap(),
        random(&[65536], &mut rng, |x| x),
        random(&[512, 2048], &mut rng, |x| x.abs() / 3.0),
        random(&[1024, 1024], &mut rng, |x| x - 9.0),
        Tensor::zeros(vec![1020], DType::F32).unwrap(),
        random(&[4096], &mut rng, |x| x),
    ];
    let fractions: [&[f64]; 4] = [&[1.0, 1.0], &[0.333, 0.1667, 0.5003], &[1.0, 0.0], &[0.0, 0.4, 0.6, 0.0]];
    for n in [1, 3, 5] {
        // The 3.8 M-element tensor appears once, in the largest draw, to keep the debug build fast.
        let mut picked: Vec<Tensor> = (0..n).map(|_| pool[rng.random_range(1..pool.len())].clone()).collect();
        if n == 5 {
            picked[2] = pool[0].clone();
        }
        for part_size_bytes in [31337, 1 << 20, 10_000_000_000] {
            for f in fractions {
                round_trip(&picked, f, part_size_bytes);
            }
        }
    }
}

#[test]
fn scenario_17_partitioning_edge_cases() {
    let z = |n: usize| Tensor::zeros(vec![n], DType::F32).unwrap();
    let lists = [vec![z(0)], vec![z(0), z(0), z(1)], vec![z(0), z(999), z(0), z(0)]];
    let fractions: [&[f64]; 5] = [&[0.33, 0.44, 0.23], &[0.5, 0.5], &[0.1, 0.0, 0.9], &[1.0], &[0.1; 9]];
    for tensors in &lists {
        for f in fractions {
            round_trip(tensors, f, 16);
        }
    }
}
