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

/// How far apart (relative) two neighbouring bandwidths may be and still count as equal in
/// [`merge_close_bandwidths`].
pub(crate) const EQUAL_BANDWIDTH_MARGIN: f64 = 0.3;

/// The largest ratio between the largest and the smallest bandwidth of one cluster in
/// [`merge_close_bandwidths`]: links a factor of 1.5 apart are never treated as equal.
pub(crate) const MAX_CLUSTER_RATIO: f64 = 1.5;

/// **\[averager\]** the bandwidths load balancing uses: positive bandwidths within
/// [`EQUAL_BANDWIDTH_MARGIN`] of each other are replaced by their mean; unspecified and zero ones
/// are kept.
///
/// The linear program of [`load_balance`] moves a member's share about `n - 2` times as much as its
/// bandwidth differs from the others' (three members at 20 MB/s and one at 22 give that one a
/// third more elements), so measured bandwidths of equal links, which differ by noise of tens of
/// percent, would split a group unequally and make the round slower than equal shares. Sorted
/// ascending, each bandwidth joins the cluster of its predecessor when it is within the margin of
/// it and within [`MAX_CLUSTER_RATIO`] of the cluster's smallest: chaining alone could merge a
/// group whose many members spread evenly over a wide range. Every peer computes the same clusters
/// from the same gathered bandwidths (the sort and the sums run in one order).
///
/// The margin trades two errors against each other. Too wide, and a slow link merges with a
/// faster one whose estimate its own slowness held down (on 50/100/200/400 Mbit/s links the two
/// slowest peers once declared 7.2 and 9.96 MB/s, 38% apart, and merging them gave the slowest a
/// share again: 17-20 s per round instead of 12-13); too narrow, and noisy estimates of equal
/// links split the group (which costs less: on equal links declared as 15.7, 19.3, 22.5 and 24.2
/// MB/s, the last one alone in its cluster reduces 39% of the vector, and the round took 18%
/// longer than with equal shares).
///
/// hivemind's load balancing does not merge: in a group that mixes hivemind peers with peers
/// declaring close but unequal bandwidths (as measured ones are), the two kinds of peers plan
/// different spans and the round fails. (Unequal bandwidths where the slowest peer dominates
/// already risk that: there hivemind's LP solver picks one of many optima, protocol 11.14.)
pub(crate) fn merge_close_bandwidths(bandwidths: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut order: Vec<usize> =
        (0..bandwidths.len()).filter(|&i| bandwidths[i].is_some_and(|b| b > 0.0)).collect();
    let value = |i: usize| bandwidths[i].unwrap_or(0.0);
    order.sort_by(|&a, &b| value(a).total_cmp(&value(b)).then(a.cmp(&b)));
    let mut merged = bandwidths.to_vec();
    let mut start = 0;
    while start < order.len() {
        let smallest = value(order[start]);
        let mut end = start + 1;
        while end < order.len()
            && value(order[end]) <= value(order[end - 1]) * (1.0 + EQUAL_BANDWIDTH_MARGIN)
            && value(order[end]) <= smallest * MAX_CLUSTER_RATIO
        {
            end += 1;
        }
        let cluster = &order[start..end];
        // Summed as fractions, so that huge finite bandwidths cannot overflow to infinity.
        let mean = cluster.iter().map(|&i| value(i) / cluster.len() as f64).sum::<f64>();
        for &i in cluster {
            merged[i] = Some(mean);
        }
        start = end;
    }
    merged
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
    fn close_bandwidths_merge_into_their_mean() {
        // Noisy estimates of four equal links become one bandwidth: equal shares.
        let noisy = some(&[14.5, 18.6, 16.0, 17.1]);
        let merged = merge_close_bandwidths(&noisy);
        let mean = (14.5 + 18.6 + 16.0 + 17.1) / 4.0;
        assert!(merged.iter().all(|b| (b.unwrap() - mean).abs() < 1e-12), "{merged:?}");
        assert_eq!(load_balance(1000, &merged, 0).unwrap(), [250; 4]);
        // The unmerged estimates would have split very unequally.
        let skewed = load_balance(1000, &noisy, 0).unwrap();
        assert!(skewed[1] > 2 * skewed[0], "{skewed:?}");
        // Links a factor of two apart stay apart; unspecified and zero bandwidths are kept.
        let mix = [Some(6.25), Some(12.5), None, Some(0.0), Some(25.0), Some(50.0)];
        assert_eq!(merge_close_bandwidths(&mix), mix);
        // Two clusters, whatever the group order.
        let merged = merge_close_bandwidths(&some(&[50.0, 5.0, 45.0, 6.0]));
        assert_eq!(merged, some(&[47.5, 5.5, 47.5, 5.5]));
    }

    #[test]
    fn a_chain_of_close_bandwidths_does_not_merge_a_wide_range() {
        // Each neighbour is within 30% of the next, but the range spans 2.2x: a cluster stops
        // where it would pass 1.5x its smallest.
        let chain = some(&[10.0, 12.5, 15.0, 18.0, 22.0]);
        let merged: Vec<f64> = merge_close_bandwidths(&chain).into_iter().map(Option::unwrap).collect();
        let expected = [12.5, 12.5, 12.5, 20.0, 20.0];
        assert!(merged.iter().zip(expected).all(|(m, e)| (m - e).abs() < 1e-12), "{merged:?}");
        for (range, expected) in [(&[20.0, 25.9, 29.9][..], 1usize), (&[20.0, 25.9, 30.1][..], 2)] {
            let clusters = merge_close_bandwidths(&some(range));
            let distinct = clusters.windows(2).filter(|w| w[0] != w[1]).count() + 1;
            assert_eq!(distinct, expected, "{range:?} -> {clusters:?}");
        }
    }

    #[test]
    fn the_two_slowest_links_of_the_mix_stay_apart() {
        // Estimates a bench/wan.sh run declared on 50/100/200/400 Mbit/s links before its third
        // round: the two slowest merged under a 40% margin, and the slowest got a share again.
        let declared = some(&[7.2, 9.96, 21.0, 15.2]);
        assert_eq!(merge_close_bandwidths(&declared), declared);
        let shares = load_balance(1000, &merge_close_bandwidths(&declared), 0).unwrap();
        assert_eq!(shares[0], 0, "{shares:?}");
        // Equal 200 Mbit/s links whose estimates spread over 22% still merge into equal shares.
        let equal = some(&[18.9, 19.9, 20.4, 22.0]);
        assert_eq!(load_balance(1000, &merge_close_bandwidths(&equal), 0).unwrap(), [250; 4]);
    }

    #[test]
    fn bad_bandwidths_are_errors() {
        assert!(load_balance(10, &[Some(-1.0), None], 0).is_err());
        assert!(load_balance(10, &[Some(f64::NAN), None], 0).is_err());
        assert!(hagenbach_bischoff(10, &[0.0, 0.0]).is_err());
    }
}
