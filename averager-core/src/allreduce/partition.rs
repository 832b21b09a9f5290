//! protocol 4.3: cutting the flattened tensors into parts and assigning each part to a reducer.
//!
//! Every group member computes the same plan from the same inputs; nothing about it is sent.
//! Parts are never split: a part that straddles two members' spans goes to the member that covers
//! most of it (the first on ties), so each member's parts are contiguous in flat order.
//! **\[averager\]** empty tensors yield no parts at all (hivemind gives their one empty part to
//! member 0, which may be a CLIENT that serves no RPCs).

use std::ops::Range;

use crate::error::{Error, Result};

/// What the partition needs to know of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorLayout {
    /// Number of elements (1 for a 0-d tensor).
    pub numel: usize,
    /// Bytes one element takes on the wire: its size times the codec's ratio estimate.
    pub bytes_per_value: f64,
}

/// One part of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPart {
    /// Index of the tensor the part belongs to.
    pub tensor: usize,
    /// Index of the part within its tensor.
    pub part_index: usize,
    /// Elements of the flattened tensor the part covers.
    pub range: Range<usize>,
    /// Maximum elements per part for this tensor (`CompressionInfo::part_size`).
    pub part_size: usize,
    /// Group position of the member that reduces it.
    pub owner: usize,
}

/// Every part of every tensor, in flat order, with its reducer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    parts: Vec<PlannedPart>,
    by_owner: Vec<Range<usize>>,
}

impl PartitionPlan {
    /// Plans the parts of `tensors` for members with `shares` (any non-negative weights; usually
    /// the element counts of load balancing, protocol 5), with at most
    /// `part_size_bytes` per part on the wire.
    ///
    /// # Errors
    /// [`Error::Config`] when the shares are empty, negative or all zero while there is data, or
    /// a layout's bytes per value is not positive and finite.
    pub fn new(tensors: &[TensorLayout], shares: &[f64], part_size_bytes: usize) -> Result<Self> {
        let total: usize = tensors.iter().map(|t| t.numel).sum();
        let share_sum: f64 = shares.iter().sum();
        if shares.is_empty() || shares.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return Err(Error::Config(format!("shares {shares:?} are not non-negative numbers")));
        }
        if total > 0 && share_sum <= 0.0 {
            return Err(Error::Config("every share is zero but there is data to reduce".into()));
        }
        let pivots = pivots(shares, share_sum, total);
        let mut parts = Vec::new();
        let (mut cursor, mut p) = (0usize, 0usize);
        for (tensor, layout) in tensors.iter().enumerate() {
            if !(layout.bytes_per_value.is_finite() && layout.bytes_per_value > 0.0) {
                return Err(Error::Config(format!(
                    "tensor {tensor}: {} bytes per value is not a positive number",
                    layout.bytes_per_value
                )));
            }
            // At least one element per part, whatever the byte budget.
            let part_size = ((part_size_bytes as f64 / layout.bytes_per_value).floor() as usize).max(1);
            for (part_index, start) in (0..layout.numel).step_by(part_size).enumerate() {
                let len = part_size.min(layout.numel - start);
                let owner = owner_of(&pivots, &mut p, cursor, len);
                parts.push(PlannedPart { tensor, part_index, range: start..start + len, part_size, owner });
                cursor += len;
            }
        }
        let mut by_owner = vec![0..0; shares.len()];
        for (owner, range) in by_owner.iter_mut().enumerate() {
            let first = parts.iter().position(|x| x.owner == owner).unwrap_or(parts.len());
            let count = parts[first..].iter().take_while(|x| x.owner == owner).count();
            *range = first..first + count;
        }
        Ok(PartitionPlan { parts, by_owner })
    }

    /// Every part, in flat order.
    pub fn parts(&self) -> &[PlannedPart] {
        &self.parts
    }

    /// The parts that member `owner` reduces (contiguous in flat order); empty for an unknown
    /// member.
    pub fn parts_of(&self, owner: usize) -> &[PlannedPart] {
        self.by_owner.get(owner).map(|r| &self.parts[r.clone()]).unwrap_or(&[])
    }

    /// Index in [`PartitionPlan::parts`] of member `owner`'s first part (its parts follow it).
    pub fn first_index_of(&self, owner: usize) -> usize {
        self.by_owner.get(owner).map(|r| r.start).unwrap_or(self.parts.len())
    }

    /// Number of members the plan was made for.
    pub fn num_members(&self) -> usize {
        self.by_owner.len()
    }
}

/// `pivots[i]` = the flat index where member i's span ends (protocol 4.3, computed in f64).
fn pivots(shares: &[f64], share_sum: f64, total: usize) -> Vec<usize> {
    let mut acc = 0.0;
    let mut pivots: Vec<usize> = shares
        .iter()
        .map(|s| {
            acc += s;
            if share_sum > 0.0 { ((acc / share_sum * total as f64).floor() as usize).min(total) } else { 0 }
        })
        .collect();
    if let Some(last) = pivots.last_mut() {
        *last = total;
    }
    pivots
}

/// The member that covers most of `cursor..cursor + len`; advances `p` past spans left behind.
fn owner_of(pivots: &[usize], p: &mut usize, cursor: usize, len: usize) -> usize {
    let end = cursor + len;
    let last = pivots.len() - 1;
    if end <= pivots[*p] {
        return *p;
    }
    let first = *p;
    let mut overlaps = vec![pivots[*p].saturating_sub(cursor)];
    while *p < last && end > pivots[*p] {
        *p += 1;
        overlaps.push(end.min(pivots[*p]) - pivots[*p - 1].max(cursor));
    }
    let mut best = 0;
    for (i, &o) in overlaps.iter().enumerate() {
        if o > overlaps[best] {
            best = i;
        }
    }
    first + best
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn f32s(numels: &[usize]) -> Vec<TensorLayout> {
        numels.iter().map(|&numel| TensorLayout { numel, bytes_per_value: 4.0 }).collect()
    }

    /// Parts cover every element once, in order, each member's parts are contiguous, no part
    /// exceeds its size, and nobody with share 0 owns a part.
    fn check(plan: &PartitionPlan, tensors: &[TensorLayout], shares: &[f64]) {
        let mut expected = tensors.iter().enumerate().filter(|(_, t)| t.numel > 0).map(|(i, _)| (i, 0usize));
        let mut current = expected.next();
        let mut last_owner = 0;
        for part in plan.parts() {
            let (tensor, start) = current.expect("more parts than elements");
            assert_eq!((part.tensor, part.range.start), (tensor, start));
            assert!(!part.range.is_empty() && part.range.len() <= part.part_size);
            assert!(shares[part.owner] > 0.0, "share-0 member {} owns {part:?}", part.owner);
            assert!(part.owner >= last_owner, "owners go backwards at {part:?}");
            last_owner = part.owner;
            current = if part.range.end == tensors[tensor].numel {
                expected.next()
            } else {
                Some((tensor, part.range.end))
            };
        }
        assert!(current.is_none(), "elements left uncovered");
        let total: usize = (0..plan.num_members()).map(|m| plan.parts_of(m).len()).sum();
        assert_eq!(total, plan.parts().len());
    }

    #[test]
    fn default_part_sizes_follow_the_byte_budget() {
        let plan = PartitionPlan::new(&f32s(&[300_000]), &[1.0], 1 << 19).unwrap();
        let sizes: Vec<usize> = plan.parts().iter().map(|p| p.range.len()).collect();
        assert_eq!(sizes, [131072, 131072, 37856]);
        let halved = [TensorLayout { numel: 300_000, bytes_per_value: 2.0 }];
        assert_eq!(PartitionPlan::new(&halved, &[1.0], 1 << 19).unwrap().parts()[0].part_size, 262144);
    }

    #[test]
    fn a_straddling_part_goes_to_the_member_covering_most_of_it() {
        // Spans 0..10 and 10..20, parts of 8: part 8..16 is 2 + 6, so member 1 reduces it.
        let plan = PartitionPlan::new(&f32s(&[20]), &[1.0, 1.0], 32).unwrap();
        let owners: Vec<usize> = plan.parts().iter().map(|p| p.owner).collect();
        assert_eq!(owners, [0, 1, 1]);
        // A tie (5 + 5) goes to the first.
        let plan = PartitionPlan::new(&f32s(&[20]), &[1.0, 1.0], 40).unwrap();
        assert_eq!(plan.parts().iter().map(|p| p.owner).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn empty_tensors_yield_no_parts_and_zero_shares_own_nothing() {
        let tensors = f32s(&[0, 3, 0, 5]);
        let plan = PartitionPlan::new(&tensors, &[0.0, 1.0], 16).unwrap();
        check(&plan, &tensors, &[0.0, 1.0]);
        assert!(plan.parts_of(0).is_empty());
        assert!(PartitionPlan::new(&f32s(&[0]), &[0.0], 16).unwrap().parts().is_empty());
        assert!(PartitionPlan::new(&f32s(&[1]), &[0.0, 0.0], 16).is_err());
        assert!(PartitionPlan::new(&f32s(&[1]), &[], 16).is_err());
    }

    #[test]
    fn scenario_16_and_17_shapes_and_fractions_partition_consistently() {
        let sizes = [30000 * 128, 128, 8, 0, 0, 1, 65536, 512 * 2048, 1024 * 1024, 1020, 4096];
        let fractions: [&[f64]; 5] =
            [&[1.0, 1.0], &[0.333, 0.1667, 0.5003], &[1.0, 0.0], &[0.0, 0.4, 0.6, 0.0], &[0.1; 9]];
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for _ in 0..40 {
            let n = rng.random_range(1..=5);
            let numels: Vec<usize> = (0..n).map(|_| sizes[rng.random_range(0..sizes.len())]).collect();
            let tensors = f32s(&numels);
            for shares in fractions {
                for part_size_bytes in [16, 31337, 1 << 20, 10_000_000_000] {
                    let plan = PartitionPlan::new(&tensors, shares, part_size_bytes).unwrap();
                    check(&plan, &tensors, shares);
                }
            }
        }
    }
}
