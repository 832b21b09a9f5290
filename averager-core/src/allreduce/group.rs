//! protocol 4.1 and 4.2: who is in an all-reduce group and what each member does.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::matchmaking::{GatherPayload, PeerMode};

/// One member of a formed group, as the leader ordered it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMember {
    /// The endpoint at which it accepts RPCs (a CLIENT's is only a unique name).
    pub endpoint: String,
    /// How it takes part.
    pub mode: PeerMode,
    /// The bandwidth it declared (`None`: unspecified).
    pub bandwidth: Option<f64>,
}

/// A formed group: its id, its ordered members, and which one is this peer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AllReduceGroup {
    /// The group id from `BEGIN_ALLREDUCE`.
    pub(crate) group_id: Bytes,
    /// Members in the leader's order (it fixes who reduces which span).
    pub(crate) members: Vec<GroupMember>,
    /// This peer's position in `members`.
    pub(crate) me: usize,
}

impl AllReduceGroup {
    /// A group from the leader's ordered endpoints and gathered payloads (protocol 4.1).
    ///
    /// # Errors
    /// [`Error::Protocol`] when the lists differ in length or a payload is malformed;
    /// [`Error::Config`] when `me` is not in the group.
    pub(crate) fn from_gathered(
        group_id: Bytes,
        endpoints: &[String],
        gathered: &[Bytes],
        me: &str,
    ) -> Result<Self> {
        if endpoints.len() != gathered.len() {
            return Err(Error::protocol(
                averager_proto::MessageCode::ProtocolViolation,
                format!("{} endpoints but {} gathered payloads", endpoints.len(), gathered.len()),
            ));
        }
        let members = endpoints
            .iter()
            .zip(gathered)
            .map(|(endpoint, bytes)| {
                let payload = GatherPayload::decode(bytes)?;
                Ok(GroupMember {
                    endpoint: endpoint.clone(),
                    mode: payload.mode,
                    bandwidth: payload.bandwidth,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let me = endpoints
            .iter()
            .position(|e| e == me)
            .ok_or_else(|| Error::Config(format!("{me} is not a member of the group")))?;
        Ok(AllReduceGroup { group_id, members, me })
    }

    /// Group positions of the senders (members that are not AUX), in group order.
    pub(crate) fn senders(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].mode != PeerMode::Aux).collect()
    }

    /// The sender index (position among [`AllReduceGroup::senders`]) of group position `member`.
    pub(crate) fn sender_index(&self, member: usize) -> Option<usize> {
        self.senders().iter().position(|&m| m == member)
    }

    /// The group position of the member with `endpoint`.
    pub(crate) fn position_of(&self, endpoint: &str) -> Option<usize> {
        self.members.iter().position(|m| m.endpoint == endpoint)
    }

    /// This peer's mode.
    pub(crate) fn my_mode(&self) -> PeerMode {
        self.members[self.me].mode
    }

    /// The refusals of protocol 4.2 that are not the plan's (see `AllReducePlan` for the members'
    /// modes and shares): this peer is a member, and `reducer_timeout` needs a smaller
    /// `sender_timeout`.
    ///
    /// # Errors
    /// [`Error::Config`] for the first broken rule.
    pub(crate) fn validate(
        &self,
        sender_timeout: Option<Duration>,
        reducer_timeout: Option<Duration>,
    ) -> Result<()> {
        if self.me >= self.members.len() {
            return Err(Error::Config(format!(
                "position {} outside a group of {}",
                self.me,
                self.members.len()
            )));
        }
        match (sender_timeout, reducer_timeout) {
            (None, Some(_)) => Err(Error::Config("reducer_timeout is set but sender_timeout is not".into())),
            (Some(s), Some(r)) if r <= s => {
                Err(Error::Config(format!("reducer_timeout {r:?} must exceed sender_timeout {s:?}")))
            }
            _ => Ok(()),
        }
    }
}
