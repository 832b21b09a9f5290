//! **\[averager\]** presence probes: how a runner learns that a member of its group never got
//! the group, when no part stream of its own would tell it.

use std::sync::{Arc, PoisonError};

use futures::StreamExt;
use futures::future::join_all;

use super::progress::is_pending;
use super::runner::{AbortOnDrop, AllReduceRunner};
use crate::matchmaking::PeerMode;
use crate::transport::AveragingData;

impl AllReduceRunner {
    /// **\[averager\]** asks every member that serves but reduces nothing here whether it knows
    /// this group, since no part stream from this peer would tell.
    ///
    /// A member can be in the group without knowing it: the leader assembles the moment the group
    /// is full, and its acceptance may reach a follower after that follower gave up waiting
    /// (`request_timeout`) and went on searching; hivemind's leader then waits for the member's
    /// parts forever. Members with a span answer this peer's parts with `BAD_GROUP_ID` (see
    /// `exchange_with_remote`); the others get a probe: a stream whose only message names the
    /// group and carries no part. A member that knows the group refuses it once the group
    /// registers there (it reduces nothing); one that does not answers `BAD_GROUP_ID` after its
    /// own `request_timeout`, and is excluded. CLIENT members cannot be reached, so a CLIENT that
    /// never got its group is only dropped by `sender_timeout` or `allreduce_timeout`.
    pub(super) fn spawn_presence_probes(self: &Arc<Self>) -> Option<AbortOnDrop> {
        // Only a member that reduces waits for other members' parts.
        self.reducer.as_ref()?;
        let spanless: Vec<usize> = (0..self.group.members.len())
            .filter(|&j| j != self.group.me && self.plan.parts_of(j).is_empty())
            .filter(|&j| self.group.members[j].mode == PeerMode::Node)
            .collect();
        if spanless.is_empty() {
            return None;
        }
        let this = Arc::clone(self);
        Some(AbortOnDrop(tokio::spawn(async move {
            join_all(spanless.into_iter().map(|j| this.probe(j))).await;
        })))
    }

    async fn probe(&self, j: usize) {
        let endpoint = &self.group.members[j].endpoint;
        let probe = AveragingData {
            code: averager_proto::MessageCode::PartForAveraging as i32,
            group_id: self.group.group_id.clone(),
            endpoint: self.group.members[self.group.me].endpoint.clone(),
            weight: self.settings.weight,
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
            self.member_does_not_know_the_group(j);
        }
    }

    /// Member `j` answered `BAD_GROUP_ID` (to a probe, or to this peer's parts): unless its parts
    /// already arrived here (then it knew the group, finished and forgot it), it never got the
    /// group, is averaging elsewhere, and is excluded like a member that left.
    pub(super) fn member_does_not_know_the_group(&self, j: usize) {
        let opened = self.group.sender_index(j).is_some_and(|s| {
            self.opened.lock().unwrap_or_else(PoisonError::into_inner).get(s).copied().unwrap_or(false)
        });
        if !opened {
            let endpoint = &self.group.members[j].endpoint;
            tracing::warn!(member = %endpoint, "a member does not know this group; excluded");
            self.sender_left(endpoint);
        }
    }
}
