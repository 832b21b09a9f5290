//! **\[averager\]** presence probes: how a round learns that a member of its group never got
//! the group, when no part stream of its own would tell it.

use std::sync::Arc;

use futures::StreamExt;
use futures::future::join_all;

use super::group::AllReduceGroup;
use super::membership::Membership;
use super::progress::is_pending;
use super::round::AllReduceRound;
use super::tasks::AbortOnDrop;
use crate::matchmaking::PeerMode;
use crate::transport::{AveragingData, Transport};

impl AllReduceRound {
    /// **\[averager\]** asks every member that serves but reduces nothing here whether it knows
    /// this group, since no part stream from this peer would tell.
    ///
    /// A member can be in the group without knowing it: the leader assembles the moment the group
    /// is full, and its acceptance may reach a follower after that follower gave up waiting
    /// (`request_timeout`) and went on searching; hivemind's leader then waits for the member's
    /// parts forever. Members with a span answer this peer's parts with `BAD_GROUP_ID` (see
    /// the sender's `exchange_with_remote`); the others get a probe: a stream whose only message names the
    /// group and carries no part. A member that knows the group refuses it once the group
    /// registers there (it reduces nothing); one that does not answers `BAD_GROUP_ID` after its
    /// own `request_timeout`, and is excluded. CLIENT members cannot be reached, so a CLIENT that
    /// never got its group is only dropped by `sender_timeout` or `allreduce_timeout`.
    pub(super) fn spawn_presence_probes(&self) -> Option<AbortOnDrop> {
        // Only a member that reduces waits for other members' parts.
        self.span().part_reducer()?;
        let spanless: Vec<usize> = (0..self.group.members.len())
            .filter(|&j| j != self.group.me && self.plan.parts_of(j).is_empty())
            .filter(|&j| self.group.members[j].mode == PeerMode::Node)
            .collect();
        if spanless.is_empty() {
            return None;
        }
        let probe = Probe {
            group: Arc::clone(&self.group),
            membership: Arc::clone(&self.membership),
            transport: Arc::clone(&self.transport),
            weight: self.settings.weight,
        };
        Some(AbortOnDrop(tokio::spawn(async move {
            join_all(spanless.into_iter().map(|j| probe.probe(j))).await;
        })))
    }
}

/// What the probe task needs of the round.
struct Probe {
    group: Arc<AllReduceGroup>,
    membership: Arc<Membership>,
    transport: Arc<dyn Transport>,
    weight: f64,
}

impl Probe {
    async fn probe(&self, j: usize) {
        let endpoint = &self.group.members[j].endpoint;
        let probe = AveragingData {
            code: averager_proto::MessageCode::PartForAveraging as i32,
            group_id: self.group.group_id.clone(),
            endpoint: self.group.members[self.group.me].endpoint.clone(),
            weight: self.weight,
            ..Default::default()
        };
        let answer = async {
            let client = self.transport.connect(endpoint).await?;
            let mut replies = client.rpc_aggregate_part(Box::pin(futures::stream::iter([probe]))).await?;
            loop {
                match replies.next().await.transpose()? {
                    Some(reply) if is_pending(&reply) => continue,
                    answer => return Ok::<_, crate::error::Error>(answer),
                }
            }
        };
        if let Ok(Some(reply)) = answer.await
            && reply.code == averager_proto::MessageCode::BadGroupId as i32
        {
            self.membership.does_not_know_the_group(j);
        }
    }
}
