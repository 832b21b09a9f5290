//! protocol 5: how many elements of the flattened vector each group member reduces.
//!
//! hivemind solves a linear program with a generic solver whose answer depends on the solver; the
//! LP has a closed-form optimum (protocol 5, "closed form"), used here, which reproduces every exact
//! value of hivemind's tests and is the same on every peer (all members must agree on the shares
//! without exchanging them).

use crate::error::{Error, Result};

/// Integer shares (elements per member, summing to `total`) for members with these download
/// bandwidths, in group order.
///
/// `None` means "unspecified" (the mean of the specified ones); `Some(0.0)` means "reduces
/// nothing" (CLIENTs, `bandwidth = 0`). Members whose score falls under `min_size / total` get
/// nothing, unless nobody would reach it.
///
/// # Errors
/// [`Error::Config`] when every member has bandwidth 0 (nobody can reduce), or a bandwidth is
/// negative or not finite.
pub fn load_balance(total: usize, bandwidths: &[Option<f64>], min_size: usize) -> Result<Vec<usize>> {
    if let Some(bad) = bandwidths.iter().flatten().find(|b| !b.is_finite() || **b < 0.0) {
        return Err(Error::Config(format!("bandwidth {bad} is not a finite number >= 0")));
    }
    let specified: Vec<f64> = bandwidths.iter().flatten().copied().filter(|&b| b > 0.0).collect();
    let scores: Vec<f64> = if specified.is_empty() {
        if bandwidths.iter().all(|b| b == &Some(0.0)) {
            return Err(Error::Config("every group member has bandwidth 0: nobody can reduce".into()));
        }
        // Nothing specified: equal split among the members that reduce; min_size does not apply.
        bandwidths.iter().map(|b| if b.is_none() { 1.0 } else { 0.0 }).collect()
    } else {
        let mean = specified.iter().sum::<f64>() / specified.len() as f64;
        let filled: Vec<f64> = bandwidths.iter().map(|b| b.unwrap_or(mean)).collect();
        let mut w = optimal_fractions(&filled);
        let threshold = min_size as f64 / total.max(1) as f64;
        if w.iter().copied().fold(0.0, f64::max) >= threshold {
            w.iter_mut().filter(|x| **x < threshold).for_each(|x| *x = 0.0);
        }
        // Rounding makes the result insensitive to the last bits of the arithmetic, so every
        // peer computes the same shares.
        w.iter().map(|x| (x * 1e9).round() / 1e9).collect()
    };
    hagenbach_bischoff(total, &scores)
}

/// The fractions `w` minimising the slowest member's traffic time `(1 + (n - 2) w_i) / b_i`
/// (protocol 5's LP), in closed form.
fn optimal_fractions(bandwidths: &[f64]) -> Vec<f64> {
    let n = bandwidths.len();
    let total: f64 = bandwidths.iter().filter(|&&b| b > 0.0).sum();
    match n {
        0 => Vec::new(),
        1 => vec![1.0],
        // With two members every split costs the same; split by bandwidth.
        2 => bandwidths.iter().map(|&b| if b > 0.0 { b / total } else { 0.0 }).collect(),
        _ => {
            let m = bandwidths.iter().filter(|&&b| b > 0.0).count() as f64;
            let slowest = bandwidths.iter().copied().filter(|&b| b > 0.0).fold(f64::INFINITY, f64::min);
            let balanced = (n as f64 - 2.0 + m) / total;
            let xi = balanced.max(1.0 / slowest);
            let capacity: Vec<f64> = bandwidths
                .iter()
                .map(|&b| if b > 0.0 { ((xi * b - 1.0) / (n as f64 - 2.0)).max(0.0) } else { 0.0 })
                .collect();
            if balanced >= 1.0 / slowest {
                capacity
            } else {
                // The slowest member bounds the time and many splits are optimal: scale the
                // capacities to a split that sums to one.
                let sum: f64 = capacity.iter().sum();
                capacity.iter().map(|c| c / sum).collect()
            }
        }
    }
}

/// Hagenbach-Bischoff apportionment of `total` elements by `scores`: floors first, then one more
/// to the first member with the largest `score / (alloc + 1)` until the sum is exact.
///
/// # Errors
/// [`Error::Config`] when the scores are all zero.
pub(crate) fn hagenbach_bischoff(total: usize, scores: &[f64]) -> Result<Vec<usize>> {
    let sum: f64 = scores.iter().sum();
    if sum <= 0.0 || !sum.is_finite() {
        return Err(Error::Config(format!("cannot apportion by scores {scores:?}")));
    }
    let mut alloc: Vec<usize> =
        scores.iter().map(|&s| ((total as f64 * s / sum).floor() as usize).min(total)).collect();
    let mut assigned: usize = alloc.iter().sum();
    // Floors can overshoot only through rounding in the product; trim from the largest if so.
    while assigned > total {
        let i = (0..alloc.len()).max_by_key(|&i| alloc[i]).unwrap_or(0);
        alloc[i] -= 1;
        assigned -= 1;
    }
    while assigned < total {
        let mut best = 0;
        for i in 1..scores.len() {
            if scores[i] / (alloc[i] + 1) as f64 > scores[best] / (alloc[best] + 1) as f64 {
                best = i;
            }
        }
        alloc[best] += 1;
        assigned += 1;
    }
    Ok(alloc)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn some(b: &[f64]) -> Vec<Option<f64>> {
        b.iter().copied().map(Some).collect()
    }

    #[test]
    fn exact_cases_of_spec_5() {
        assert_eq!(load_balance(60, &some(&[0.55, 0.44, 0.40]), 10).unwrap(), [41, 19, 0]);
        assert_eq!(load_balance(60, &some(&[0.32, 0.55, 0.44]), 10).unwrap(), [0, 40, 20]);
        assert_eq!(load_balance(2, &some(&[0.55, 0.20, 0.44]), 10).unwrap(), [1, 0, 1]);
        assert_eq!(load_balance(1, &some(&[0.55, 0.20, 0.44]), 10).unwrap(), [1, 0, 0]);
        assert_eq!(load_balance(100, &[None, None], 0).unwrap(), [50, 50]);
        assert_eq!(load_balance(100, &[None; 5], 0).unwrap(), [20; 5]);
        let mixed = [Some(0.0), Some(0.0), Some(0.0), None, None];
        assert_eq!(load_balance(100, &mixed, 0).unwrap(), [0, 0, 0, 50, 50]);
        assert!(load_balance(100, &some(&[0.0, 0.0, 0.0]), 0).is_err());
    }

    /// Traffic time of the slowest member for these shares (scenario 21's cost).
    fn cost(total: usize, bandwidths: &[f64], shares: &[usize]) -> f64 {
        let n = bandwidths.len() as f64;
        bandwidths
            .iter()
            .zip(shares)
            .map(|(&b, &p)| (total as f64 - p as f64 + (n - 1.0) * p as f64) / b.max(1e-9))
            .fold(0.0, f64::max)
    }

    #[test]
    fn scenario_21_is_never_worse_than_the_reference() {
        let cases: [(usize, &[f64], &[usize]); 6] = [
            (60, &[0.25; 4], &[15; 4]),
            (1024, &[0.3, 0.5, 0.9], &[0, 255, 769]),
            (60, &[0.44, 0.33, 0.22], &[42, 18, 0]),
            (60, &[0.55, 0.44, 0.40], &[35, 16, 9]),
            (1 << 20, &[0.3, 0.5, 0.9, 0.6], &[0, 169327, 602629, 276620]),
            (1 << 20, &[0.0, 0.5, 0.0, 0.6], &[0, 428963, 0, 619613]),
        ];
        for (total, b, reference) in cases {
            let shares = load_balance(total, &some(b), 0).unwrap();
            assert_eq!(shares.iter().sum::<usize>(), total);
            let ours = cost(total, b, &shares);
            let theirs = cost(total, b, reference);
            assert!(ours <= theirs * (1.0 + 1e-9), "{b:?}: {shares:?} costs {ours}, reference {theirs}");
        }
    }

    #[test]
    fn random_cases_are_non_negative_and_sum_to_the_total() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        for _ in 0..10 {
            let total = rng.random_range(1..1usize << 30);
            let n = rng.random_range(1..256);
            let scale = 10f64.powf(rng.random_range(-3.0..3.0));
            let bandwidths: Vec<Option<f64>> = (0..n)
                .map(|_| match rng.random_range(0..10) {
                    0 => None,
                    1 => Some(0.0),
                    _ => Some(rng.random::<f64>() * scale),
                })
                .collect();
            if bandwidths.iter().all(|b| b == &Some(0.0)) {
                continue;
            }
            let min_size = rng.random_range(0..total);
            let shares = load_balance(total, &bandwidths, min_size).unwrap();
            assert_eq!(shares.len(), n);
            assert_eq!(shares.iter().sum::<usize>(), total);
        }
    }

    #[test]
    fn bad_bandwidths_are_errors() {
        assert!(load_balance(10, &[Some(-1.0), None], 0).is_err());
        assert!(load_balance(10, &[Some(f64::NAN), None], 0).is_err());
        assert!(hagenbach_bischoff(10, &[0.0, 0.0]).is_err());
    }
}
