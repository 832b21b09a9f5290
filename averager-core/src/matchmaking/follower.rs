//! protocol 3.4: the follower side: asking a leader to take this peer, and following redirects.
//!
//! **\[averager\]** (protocol 11.2): a `NOT_A_LEADER` reply's suggested leader is followed too, not
//! only a redirecting `GROUP_DISBANDED`, which shortens matchmaking.

use std::sync::Arc;
use std::time::Duration;

use averager_proto::MessageCode;
use futures::StreamExt;

use super::state::{FormedGroup, Matchmaker};
use crate::error::{Error, Result};
use crate::time::dht_now;
use crate::transport::{JoinRequest, MessageFromLeader};

/// How many redirects one request may follow, so two peers suggesting each other cannot loop.
const MAX_REDIRECTS: usize = 8;

/// What came of asking one leader.
enum Asked {
    /// The group formed: BEGIN_ALLREDUCE from the leader.
    Formed(FormedGroup),
    /// Ask this peer instead.
    Redirect(String),
    /// Nothing: move on to the next candidate.
    Failed,
}

impl Matchmaker {
    /// Asks `leader` (and any leader it redirects to) to take this peer (protocol 3.4); the group on
    /// success, `None` when this leader did not work out.
    pub(super) async fn request_join(
        self: &Arc<Self>,
        leader: String,
        scheduled_time: f64,
        search_end: f64,
    ) -> Result<Option<FormedGroup>> {
        let mut leader = leader;
        for _ in 0..MAX_REDIRECTS {
            match self.ask(&leader, scheduled_time, search_end).await? {
                Asked::Formed(group) => return Ok(Some(group)),
                Asked::Redirect(next) if next != self.config.endpoint => leader = next,
                Asked::Redirect(_) | Asked::Failed => return Ok(None),
            }
        }
        Ok(None)
    }

    async fn ask(self: &Arc<Self>, leader: &str, scheduled_time: f64, search_end: f64) -> Result<Asked> {
        let mut state = self.state.lock().await;
        if let Some(group) = &state.assembled {
            // A join handler assembled our own group while we waited for the lock.
            return Ok(Asked::Formed(group.clone()));
        }
        let now = dht_now();
        let request_expiration = if state.declared_expiration.is_finite() {
            state.declared_expiration
        } else {
            let min_time = self.config.min_matchmaking_time.as_secs_f64();
            scheduled_time.max(now + min_time).min(search_end)
        };
        let request = JoinRequest {
            endpoint: self.config.endpoint.clone(),
            schema_hash: self.config.schema_hash.clone(),
            expiration: request_expiration,
            gather: state.gather.clone(),
            client_mode: self.config.client_mode,
            group_key: self.current_key(),
        };
        // The join lock is held while waiting for the first reply (protocol 3.4 step 1): a peer
        // cannot accept followers while it is itself being accepted. Join requests that arrive
        // meanwhile are sent on to `leader` (see `lock_or_redirect`).
        self.asking.send_replace(Some(leader.to_string()));
        let first = tokio::time::timeout(self.config.request_timeout, async {
            let client = self.transport.connect(leader).await?;
            let mut replies = client.rpc_join_group(request).await?;
            let first = replies.next().await.transpose()?;
            Ok::<_, Error>((replies, first))
        })
        .await;
        self.asking.send_replace(None);
        let (mut replies, first) = match first {
            Ok(Ok((replies, Some(first)))) => (replies, first),
            Ok(Ok((_, None))) => return Ok(Asked::Failed),
            Ok(Err(e)) => {
                tracing::debug!(leader, error = %e, "join request failed");
                return Ok(Asked::Failed);
            }
            Err(_) => {
                tracing::debug!(leader, "leader did not answer within request_timeout");
                return Ok(Asked::Failed);
            }
        };
        match MessageCode::try_from(first.code) {
            Ok(MessageCode::Accepted) => {}
            Ok(MessageCode::NotALeader) if !first.suggested_leader.is_empty() => {
                return Ok(Asked::Redirect(first.suggested_leader));
            }
            code => {
                tracing::debug!(leader, ?code, "join request refused");
                return Ok(Asked::Failed);
            }
        }
        state.current_leader = Some(leader.to_string());
        // Our own followers go to our new leader (protocol 3.4 step 3, 3.7).
        self.disband(&mut state);
        self.bump();
        drop(state);

        self.paused.send_replace(true);
        let wait =
            Duration::from_secs_f64((request_expiration - dht_now()).max(0.0)) + self.config.request_timeout;
        let second = tokio::time::timeout(wait, replies.next()).await;
        drop(replies);
        let outcome = self.on_second_reply(leader, second).await;
        {
            let mut state = self.state.lock().await;
            state.current_leader = None;
        }
        self.paused.send_replace(false);
        self.bump();
        outcome
    }

    async fn on_second_reply(
        &self,
        leader: &str,
        second: std::result::Result<Option<Result<MessageFromLeader>>, tokio::time::error::Elapsed>,
    ) -> Result<Asked> {
        let message = match second {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => {
                tracing::debug!(leader, error = %e, "leader's stream failed");
                return Ok(Asked::Failed);
            }
            Ok(None) | Err(_) => return Ok(Asked::Failed),
        };
        match MessageCode::try_from(message.code) {
            Ok(MessageCode::BeginAllreduce) => {
                let in_group = message.ordered_group_endpoints.contains(&self.config.endpoint);
                if !in_group || message.gathered.len() != message.ordered_group_endpoints.len() {
                    tracing::warn!(leader, "BEGIN_ALLREDUCE without this peer or with mismatched gathers");
                    return Ok(Asked::Failed);
                }
                let group = FormedGroup {
                    group_id: message.group_id,
                    endpoints: message.ordered_group_endpoints,
                    gathered: message.gathered,
                };
                let mut state = self.state.lock().await;
                self.update_bits(&group);
                state.assembled = Some(group.clone());
                Ok(Asked::Formed(group))
            }
            Ok(MessageCode::GroupDisbanded | MessageCode::Cancelled)
                if !message.suggested_leader.is_empty() =>
            {
                Ok(Asked::Redirect(message.suggested_leader))
            }
            code => {
                tracing::debug!(leader, ?code, "leader ended the group");
                Ok(Asked::Failed)
            }
        }
    }
}
