//! protocol 4.7 and **\[averager\]** 4.5: who of the group still takes part in this all-reduce.
//!
//! One value, [`Members`], says which senders' streams have opened here and which members left.
//! It sits in a `watch` that the round's parts change through the methods below: the span reducer
//! when a stream opens or a member says goodbye, the sender when a reducer answers `CANCELLED` or
//! `BAD_GROUP_ID`, the presence probes, and the missing-sender watchdog. A member that leaves is
//! excluded from this peer's span at the same moment, so no part waits for it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::group::AllReduceGroup;
use super::tasks::AbortOnDrop;
use crate::reduce::PartReducer;

/// What is known about the members of a running all-reduce.
#[derive(Debug, Clone)]
struct Members {
    /// Per sender index: whether its stream to this peer opened (a member that left counts as
    /// opened: the watchdog has nothing left to do for it).
    opened: Vec<bool>,
    /// Group positions of the members that left (a goodbye, `CANCELLED` from their span, or a
    /// member that never got the group).
    left: BTreeSet<usize>,
}

/// The membership tracker of one all-reduce, shared by its sender, span reducer and watchdogs.
#[derive(Debug)]
pub(crate) struct Membership {
    group: Arc<AllReduceGroup>,
    members: watch::Sender<Members>,
    /// The part reducer of this peer's span, which stops waiting for members that leave.
    reducer: Option<Arc<PartReducer>>,
}

impl Membership {
    /// Nobody opened or left yet, except that this peer's own stream needs no opening.
    pub(crate) fn new(group: Arc<AllReduceGroup>, reducer: Option<Arc<PartReducer>>) -> Self {
        let mut opened = vec![false; group.senders().len()];
        if let Some(s) = group.sender_index(group.me) {
            opened[s] = true;
        }
        let members = watch::Sender::new(Members { opened, left: BTreeSet::new() });
        Membership { group, members, reducer }
    }

    /// Sender `sender`'s stream reached this peer (protocol 4.5 step 2).
    pub(crate) fn stream_opened(&self, sender: usize) {
        self.members.send_if_modified(|m| match m.opened.get_mut(sender) {
            Some(opened) if !*opened => {
                *opened = true;
                true
            }
            _ => false,
        });
    }

    /// Records that the member at `endpoint` left the group, and excludes it from the rest of
    /// this peer's span if it was a sender.
    pub(crate) fn left(&self, endpoint: &str) {
        let Some(position) = self.group.position_of(endpoint) else { return };
        self.mark_left(position);
        let Some(sender) = self.group.sender_index(position) else { return };
        self.stream_opened(sender);
        if let Some(reducer) = &self.reducer {
            reducer.sender_failed(sender);
        }
    }

    /// Records that the member at group position `position` left, without excluding it as a
    /// sender (its span said `CANCELLED`: its own parts may still be on their way here).
    pub(crate) fn mark_left(&self, position: usize) {
        if position == self.group.me {
            return;
        }
        self.members.send_if_modified(|m| m.left.insert(position));
    }

    /// Member `j` answered `BAD_GROUP_ID` (to a probe, or to this peer's parts): unless its parts
    /// already arrived here (then it knew the group, finished and forgot it), it never got the
    /// group, is averaging elsewhere, and is excluded like a member that left.
    pub(crate) fn does_not_know_the_group(&self, j: usize) {
        let opened = self
            .group
            .sender_index(j)
            .is_some_and(|s| self.members.borrow().opened.get(s).copied().unwrap_or(false));
        if !opened {
            let endpoint = &self.group.members[j].endpoint;
            tracing::warn!(member = %endpoint, "a member does not know this group; excluded");
            self.left(endpoint);
        }
    }

    /// Whether every other member left: then nothing was averaged.
    pub(crate) fn everyone_else_left(&self) -> bool {
        let others = self.group.members.len().saturating_sub(1);
        others > 0 && self.members.borrow().left.len() >= others
    }

    /// protocol 4.7: when this peer reduces a span, a watchdog bans every sender whose stream has
    /// not opened within `sender_timeout`.
    pub(crate) fn spawn_watchdog(self: &Arc<Self>, sender_timeout: Option<Duration>) -> Option<AbortOnDrop> {
        let (Some(timeout), Some(_)) = (sender_timeout, &self.reducer) else { return None };
        let this = Arc::clone(self);
        Some(AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let missing: Vec<usize> = {
                let members = this.members.borrow();
                (0..members.opened.len()).filter(|&s| !members.opened[s]).collect()
            };
            if let Some(reducer) = &this.reducer {
                for s in missing {
                    tracing::warn!(sender = s, "sender did not start within sender_timeout; excluded");
                    reducer.sender_failed(s);
                }
            }
        })))
    }
}
