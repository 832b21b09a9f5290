//! The pure planning step of an all-reduce: load balancing (protocol 5) and the partition (protocol 4.3)
//! into one [`AllReducePlan`] value, which every member computes alike from the same inputs, and
//! which can be built and printed without running anything (`averager plan`).

use std::fmt;
use std::ops::Range;

use super::group::GroupMember;
use super::load_balancing::{load_balance, merge_close_bandwidths};
use super::partition::{PartitionPlan, PlannedPart, TensorLayout};
use crate::error::{Error, Result};
use crate::matchmaking::PeerMode;

/// A member's position in its group (the leader's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberIndex(pub usize);

/// A member's position among the group's senders (members that are not AUX), as the part
/// reducer counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SenderIndex(pub usize);

/// One member as the plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedMember {
    /// Where it is reached.
    pub endpoint: String,
    /// NODE, CLIENT or AUX.
    pub mode: PeerMode,
    /// The download bandwidth it declared, in bytes per second (`None`: unspecified).
    pub bandwidth: Option<f64>,
    /// Its position among the senders, unless it is AUX.
    pub sender: Option<SenderIndex>,
    /// How many elements of the flattened tensors it reduces (its parts' total; its share, protocol 5,
    /// rounded to whole parts).
    pub elements: usize,
}

/// Bytes one member moves in one all-reduce, by the plan (compressed sizes as the codec estimates
/// them; protocol overhead left out).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Traffic {
    /// Its parts of the other members' spans, and the averaged parts of its own span it returns.
    pub sent: f64,
    /// The other senders' parts of its span, and the averaged parts of theirs it gets back.
    pub received: f64,
}

/// Who reduces which span of the flattened tensors, and how those spans are cut into parts.
#[derive(Debug, Clone, PartialEq)]
pub struct AllReducePlan {
    members: Vec<PlannedMember>,
    /// The shares the partition was made from (element counts when load-balanced).
    shares: Vec<f64>,
    partition: PartitionPlan,
    layouts: Vec<TensorLayout>,
}

impl AllReducePlan {
    /// Plans an all-reduce of tensors shaped by `layouts` among `members` (group order): shares by
    /// load balancing over their download bandwidths (CLIENTs download nothing; bandwidths within
    /// a margin of each other count as equal, see `merge_close_bandwidths` in `load_balancing.rs`), members under
    /// `min_vector_size` elements get none, parts of at most `part_size_bytes` on the wire.
    ///
    /// # Errors
    /// [`Error::Config`] for a group with no member that can reduce, bad bandwidths or layouts.
    pub fn new(
        members: &[GroupMember],
        layouts: &[TensorLayout],
        part_size_bytes: usize,
        min_vector_size: usize,
    ) -> Result<Self> {
        let total: usize = layouts.iter().map(|l| l.numel).sum();
        let bandwidths: Vec<Option<f64>> = members
            .iter()
            .map(|m| if m.mode == PeerMode::Client { Some(0.0) } else { m.bandwidth })
            .collect();
        let shares = load_balance(total, &merge_close_bandwidths(&bandwidths), min_vector_size)?;
        Self::with_shares(members, layouts, part_size_bytes, shares.into_iter().map(|s| s as f64).collect())
    }

    /// As [`AllReducePlan::new`], with the members' shares given (relative weights, group order)
    /// instead of load-balanced.
    ///
    /// # Errors
    /// [`Error::Config`] when the shares do not fit the members, or a CLIENT has a nonzero share.
    pub fn with_shares(
        members: &[GroupMember],
        layouts: &[TensorLayout],
        part_size_bytes: usize,
        shares: Vec<f64>,
    ) -> Result<Self> {
        if shares.len() != members.len() {
            return Err(Error::Config(format!("{} shares for {} members", shares.len(), members.len())));
        }
        if members.iter().all(|m| m.mode == PeerMode::Client) {
            return Err(Error::Config("a group needs at least one member that is not a CLIENT".into()));
        }
        if let Some(i) = (0..members.len()).find(|&i| members[i].mode == PeerMode::Client && shares[i] > 0.0)
        {
            return Err(Error::Config(format!("CLIENT {} was given a nonzero share", members[i].endpoint)));
        }
        let partition = PartitionPlan::new(layouts, &shares, part_size_bytes)?;
        let mut next_sender = 0;
        let members = members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let sender = (m.mode != PeerMode::Aux).then(|| {
                    next_sender += 1;
                    SenderIndex(next_sender - 1)
                });
                let elements = partition.parts_of(i).iter().map(|p| p.range.len()).sum();
                PlannedMember {
                    endpoint: m.endpoint.clone(),
                    mode: m.mode,
                    bandwidth: m.bandwidth,
                    sender,
                    elements,
                }
            })
            .collect();
        Ok(AllReducePlan { members, shares, partition, layouts: layouts.to_vec() })
    }

    /// The members, in group order.
    pub fn members(&self) -> &[PlannedMember] {
        &self.members
    }

    /// The members' shares, in group order: element counts when load-balanced, or the weights
    /// given to [`AllReducePlan::with_shares`]. A member with share 0 gets its results only after
    /// it sent everything (protocol 4.2).
    pub fn shares(&self) -> &[f64] {
        &self.shares
    }

    /// Every part, in flat order, with its reducer.
    pub fn partition(&self) -> &PartitionPlan {
        &self.partition
    }

    /// The parts `member` reduces, contiguous in flat order.
    pub fn parts_of(&self, member: MemberIndex) -> &[PlannedPart] {
        self.partition.parts_of(member.0)
    }

    /// The elements of the flattened tensors that `member` reduces, per tensor: `(tensor, range)`.
    pub fn span_of(&self, member: MemberIndex) -> Vec<(usize, Range<usize>)> {
        let mut spans: Vec<(usize, Range<usize>)> = Vec::new();
        for part in self.parts_of(member) {
            match spans.last_mut() {
                Some((tensor, range)) if *tensor == part.tensor && range.end == part.range.start => {
                    range.end = part.range.end;
                }
                _ => spans.push((part.tensor, part.range.clone())),
            }
        }
        spans
    }

    /// Bytes each member sends and receives, in group order (protocol 4.4 and 4.5: a sender streams
    /// its parts of every other member's span and gets one averaged part back per part; a reducer
    /// gets every other sender's parts of its span and answers each). AUX members send nothing of
    /// their own; CLIENTs reduce nothing.
    pub fn traffic(&self) -> Vec<Traffic> {
        let span_bytes = self.span_bytes();
        let total: f64 = span_bytes.iter().sum();
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let own = span_bytes[i] * self.senders_other_than(i) as f64;
                let others = if m.sender.is_some() { total - span_bytes[i] } else { 0.0 };
                Traffic { sent: others + own, received: own + others }
            })
            .collect()
    }

    /// The share of `member`'s upload that its busiest stream carries: a part stream to one
    /// reducer (that reducer's span) or a reply stream to one other sender (its own span). `None`
    /// when it sends nothing.
    pub fn largest_stream_share(&self, member: MemberIndex) -> Option<f64> {
        let me = member.0;
        let span_bytes = self.span_bytes();
        let mut streams: Vec<f64> = Vec::new();
        if self.members.get(me)?.sender.is_some() {
            streams.extend(span_bytes.iter().enumerate().filter(|&(j, _)| j != me).map(|(_, &b)| b));
        }
        streams.extend(std::iter::repeat_n(span_bytes[me], self.senders_other_than(me)));
        let total: f64 = streams.iter().sum();
        let largest = streams.iter().copied().fold(0.0, f64::max);
        (total > 0.0).then(|| largest / total)
    }

    /// The time the all-reduce would take if each member's download were the bottleneck at its
    /// declared bandwidth (what load balancing minimizes, protocol 5); `None` unless every member that
    /// receives something declared a bandwidth.
    pub fn predicted_seconds(&self) -> Option<f64> {
        self.traffic()
            .iter()
            .zip(&self.members)
            .filter(|(t, _)| t.received > 0.0)
            .map(|(t, m)| m.bandwidth.filter(|b| *b > 0.0).map(|b| t.received / b))
            .try_fold(0.0f64, |worst, t| t.map(|t| worst.max(t)))
    }

    /// How many members other than `member` send parts (and so get its span's replies).
    fn senders_other_than(&self, member: usize) -> usize {
        self.members.iter().enumerate().filter(|(i, m)| *i != member && m.sender.is_some()).count()
    }

    /// The bytes of every member's span, in group order.
    fn span_bytes(&self) -> Vec<f64> {
        (0..self.members.len())
            .map(|j| self.parts_of(MemberIndex(j)).iter().map(|p| self.part_bytes(p)).sum())
            .collect()
    }

    fn part_bytes(&self, part: &PlannedPart) -> f64 {
        part.range.len() as f64 * self.layouts[part.tensor].bytes_per_value
    }
}

impl fmt::Display for AllReducePlan {
    /// A table: each member's mode, bandwidth, span, parts and traffic, then the predicted time.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let megabytes = |b: f64| b / 1e6;
        writeln!(
            f,
            "{:<4} {:<6} {:>12} {:>10} {:>6} {:<28} {:>10} {:>10}",
            "#", "mode", "bandwidth", "elements", "parts", "span (tensor: elements)", "sent MB", "recv MB"
        )?;
        for (i, (m, t)) in self.members.iter().zip(self.traffic()).enumerate() {
            let spans = self.span_of(MemberIndex(i));
            let span = if spans.is_empty() {
                "-".to_string()
            } else {
                spans
                    .iter()
                    .map(|(t, r)| format!("{t}: {}..{}", r.start, r.end))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let bandwidth = m.bandwidth.map_or("-".to_string(), |b| format!("{:.3e} B/s", b));
            writeln!(
                f,
                "{:<4} {:<6} {:>12} {:>10} {:>6} {:<28} {:>10.2} {:>10.2}",
                i,
                format!("{:?}", m.mode).to_uppercase(),
                bandwidth,
                m.elements,
                self.parts_of(MemberIndex(i)).len(),
                span,
                megabytes(t.sent),
                megabytes(t.received)
            )?;
        }
        match self.predicted_seconds() {
            Some(s) => write!(f, "predicted time (slowest download at its declared bandwidth): {s:.3} s"),
            None => write!(f, "predicted time: unknown (not every member declared a bandwidth)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: usize, mode: PeerMode, bandwidth: Option<f64>) -> GroupMember {
        GroupMember { endpoint: format!("mem://p{i}"), mode, bandwidth }
    }

    /// Four members on links of 6, 12, 24 and 48 MB/s.
    fn mixed_members() -> Vec<GroupMember> {
        [6e6, 12e6, 24e6, 48e6].iter().enumerate().map(|(i, b)| member(i, PeerMode::Node, Some(*b))).collect()
    }

    #[test]
    fn shares_follow_bandwidth_and_traffic_is_symmetric_for_equal_peers() {
        let layouts = [TensorLayout { numel: 1 << 20, bytes_per_value: 4.0 }];
        let equal: Vec<_> = (0..4).map(|i| member(i, PeerMode::Node, Some(1e8))).collect();
        let plan = AllReducePlan::new(&equal, &layouts, 1 << 19, 0).unwrap();
        let traffic = plan.traffic();
        for t in &traffic {
            // 2 (n-1)/n of the tensor bytes each way.
            assert!((t.sent - 2.0 * 3.0 / 4.0 * 4.0 * (1 << 20) as f64).abs() < 1.0, "{t:?}");
            assert_eq!(t.sent, t.received);
        }
        let predicted = plan.predicted_seconds().unwrap();
        assert!((predicted - traffic[0].received / 1e8).abs() < 1e-9);
        assert_eq!(plan.span_of(MemberIndex(1)), vec![(0, (1 << 18)..(2 << 18))]);

        let mixed = mixed_members();
        let plan = AllReducePlan::new(&mixed, &layouts, 1 << 19, 0).unwrap();
        let shares: Vec<usize> = plan.members().iter().map(|m| m.elements).collect();
        assert!(shares.windows(2).all(|w| w[0] <= w[1]), "{shares:?}");
        assert_eq!(shares.iter().sum::<usize>(), 1 << 20);
        assert!(plan.to_string().contains("predicted time"));
    }

    #[test]
    fn the_largest_stream_share_follows_the_spans() {
        let layouts = [TensorLayout { numel: 1 << 20, bytes_per_value: 4.0 }];
        let members =
            |n: usize| -> Vec<GroupMember> { (0..n).map(|i| member(i, PeerMode::Node, None)).collect() };
        // Four equal members: six equal streams (three part streams, three reply streams).
        let plan = AllReducePlan::new(&members(4), &layouts, 1 << 19, 0).unwrap();
        for i in 0..4 {
            let share = plan.largest_stream_share(MemberIndex(i)).unwrap();
            assert!((share - 1.0 / 6.0).abs() < 1e-9, "{share}");
        }
        // Two members: one part stream and one reply stream.
        let plan = AllReducePlan::new(&members(2), &layouts, 1 << 19, 0).unwrap();
        assert!((plan.largest_stream_share(MemberIndex(0)).unwrap() - 0.5).abs() < 1e-9);
        // A slow member sends most of its bytes to the fastest reducer.
        let mixed = mixed_members();
        let plan = AllReducePlan::new(&mixed, &layouts, 1 << 19, 0).unwrap();
        assert!(plan.largest_stream_share(MemberIndex(0)).unwrap() > 0.4);
        // Alone, nothing is sent.
        let plan = AllReducePlan::new(&members(1), &layouts, 1 << 19, 0).unwrap();
        assert_eq!(plan.largest_stream_share(MemberIndex(0)), None);
    }

    #[test]
    fn clients_reduce_nothing_and_aux_members_send_nothing() {
        let layouts = [TensorLayout { numel: 1000, bytes_per_value: 4.0 }];
        let members = [
            member(0, PeerMode::Node, None),
            member(1, PeerMode::Client, None),
            member(2, PeerMode::Aux, None),
        ];
        let plan = AllReducePlan::new(&members, &layouts, 400, 0).unwrap();
        assert_eq!(plan.members()[1].elements, 0);
        assert_eq!(plan.members()[2].sender, None);
        assert_eq!(plan.members()[1].sender, Some(SenderIndex(1)));
        let traffic = plan.traffic();
        // The CLIENT sends its whole tensor and gets it back averaged; the AUX reduces for the two
        // senders and sends nothing of its own.
        assert_eq!(traffic[1].sent, 4000.0);
        assert_eq!(traffic[1].received, 4000.0);
        assert_eq!(traffic[2].sent, traffic[2].received);
        assert_eq!(plan.predicted_seconds(), None);
        let only_clients = [member(0, PeerMode::Client, None)];
        assert!(AllReducePlan::new(&only_clients, &layouts, 400, 0).is_err());
    }
}
