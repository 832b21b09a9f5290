//! protocol 3.5-3.7: the leader side: validating join requests, assembling the group, disbanding.

use std::sync::{Arc, PoisonError};

use averager_proto::MessageCode;
use bytes::Bytes;
use rand::seq::SliceRandom;
use tokio::sync::mpsc;

use super::group_key::next_group_bits;
use super::state::{Follower, FormedGroup, JoinState, Matchmaker};
use crate::transport::{JoinRequest, MessageFromLeader, MessageStream};

fn reply(code: MessageCode) -> MessageFromLeader {
    MessageFromLeader { code: code as i32, ..Default::default() }
}

/// Decrements the handler count when a join handler ends, however it ends.
struct HandlerGuard(Arc<Matchmaker>);

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        self.0.handlers.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Matchmaker {
    /// Serves one `rpc_join_group` call (protocol 3.5).
    pub(crate) fn handle_join(self: &Arc<Self>, request: JoinRequest) -> MessageStream<MessageFromLeader> {
        let (tx, rx) = mpsc::channel(2);
        self.handlers.send_modify(|n| *n += 1);
        let guard = HandlerGuard(Arc::clone(self));
        tokio::spawn(async move {
            let this = Arc::clone(&guard.0);
            this.serve_join(request, tx).await;
            drop(guard);
        });
        Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (Ok(m), rx)) }))
    }

    /// The first matching rule of protocol 3.5's table, if any.
    fn refusal(&self, state: &JoinState, request: &JoinRequest) -> Option<MessageFromLeader> {
        let expiration = if request.expiration == 0.0 { f64::INFINITY } else { request.expiration };
        let code = if !state.searching || state.assembled.is_some() {
            MessageCode::NotLookingForGroup
        } else if request.schema_hash.is_empty()
            || request.expiration.is_nan()
            || request.expiration.is_infinite()
            || self.config.client_mode
        {
            MessageCode::ProtocolViolation
        } else if request.schema_hash != self.config.schema_hash {
            MessageCode::BadSchemaHash
        } else if request.group_key != self.current_key() {
            MessageCode::BadGroupKey
        } else if state.declared_key.is_none() {
            MessageCode::NotDeclared
        } else if state.declared_expiration > expiration {
            MessageCode::BadExpirationTime
        } else if let Some(leader) = &state.current_leader {
            return Some(MessageFromLeader {
                code: MessageCode::NotALeader as i32,
                suggested_leader: leader.clone(),
                ..Default::default()
            });
        } else if request.endpoint == self.config.endpoint
            || state.followers.iter().any(|f| f.endpoint == request.endpoint)
        {
            MessageCode::DuplicateEndpoint
        } else if self.config.target_group_size.is_some_and(|t| state.followers.len() + 1 >= t) {
            MessageCode::GroupIsFull
        } else {
            return None;
        };
        Some(reply(code))
    }

    /// The join lock, or, while this peer holds it to ask another leader to take it, that
    /// leader's endpoint.
    ///
    /// **\[averager\]** hivemind's handler waits for the lock. If the leader being asked is dead,
    /// that wait lasts this peer's whole `request_timeout`, which starts before the caller's: the
    /// caller's own `request_timeout` may run out first, and it takes this live peer for a dead
    /// one. Sending the caller on at once (`NOT_A_LEADER` with the suggested leader) is what this
    /// peer would say once accepted there; if that leader is dead, the caller finds out from it.
    async fn lock_or_redirect(&self) -> std::result::Result<tokio::sync::MutexGuard<'_, JoinState>, String> {
        let mut asking = self.asking.subscribe();
        tokio::select! {
            biased;
            state = self.state.lock() => Ok(state),
            leader = async { asking.wait_for(Option::is_some).await.map(|leader| leader.clone()) } => match leader {
                Ok(leader) => Err(leader.unwrap_or_default()),
                // The matchmaker is gone with its sender; the lock is all there is.
                Err(_) => Ok(self.state.lock().await),
            },
        }
    }

    async fn serve_join(self: &Arc<Self>, request: JoinRequest, tx: mpsc::Sender<MessageFromLeader>) {
        let caller = request.endpoint.clone();
        let wait_until = {
            let mut state = match self.lock_or_redirect().await {
                Ok(state) => state,
                Err(leader) => {
                    let redirect = MessageFromLeader {
                        code: MessageCode::NotALeader as i32,
                        suggested_leader: leader,
                        ..Default::default()
                    };
                    let _ = tx.send(redirect).await;
                    return;
                }
            };
            if let Some(refusal) = self.refusal(&state, &request) {
                drop(state);
                let _ = tx.send(refusal).await;
                return;
            }
            state.followers.push(Follower { endpoint: caller.clone(), request });
            if tx.send(reply(MessageCode::Accepted)).await.is_err() {
                state.followers.retain(|f| f.endpoint != caller);
                return;
            }
            if self.config.target_group_size.is_some_and(|t| state.followers.len() + 1 >= t) {
                self.assemble(&mut state);
            }
            state.declared_expiration
        };
        let final_reply = self.await_outcome(&caller, wait_until, &tx).await;
        let mut state = self.state.lock().await;
        state.followers.retain(|f| f.endpoint != caller);
        drop(state);
        self.bump();
        if let Some(message) = final_reply {
            let _ = tx.send(message).await;
        }
    }

    /// Waits (without the lock) until the group is assembled, this peer follows another leader,
    /// or the caller was disbanded, at most until `wait_until`; then decides the final reply.
    /// `None` when the caller went away.
    async fn await_outcome(
        self: &Arc<Self>,
        caller: &str,
        wait_until: f64,
        tx: &mpsc::Sender<MessageFromLeader>,
    ) -> Option<MessageFromLeader> {
        let mut changed = self.changed.subscribe();
        let deadline = crate::time::until(wait_until).map(|d| tokio::time::Instant::now() + d);
        loop {
            {
                let state = self.state.lock().await;
                let still_follower = state.followers.iter().any(|f| f.endpoint == caller);
                if state.assembled.is_some() || state.current_leader.is_some() || !still_follower {
                    return Some(self.final_reply(&state, caller));
                }
            }
            let timed_out = tokio::select! {
                _ = changed.changed() => false,
                _ = tx.closed() => return None,
                _ = sleep_until(deadline) => true,
            };
            if timed_out {
                let mut state = self.state.lock().await;
                if state.assembled.is_none() {
                    if state.followers.len() + 1 >= self.config.min_group_size && state.searching {
                        self.assemble(&mut state);
                    } else {
                        self.disband(&mut state);
                    }
                }
                return Some(self.final_reply(&state, caller));
            }
        }
    }

    /// BEGIN_ALLREDUCE for a member of the assembled group, GROUP_DISBANDED otherwise.
    fn final_reply(&self, state: &JoinState, caller: &str) -> MessageFromLeader {
        match (&state.current_leader, &state.assembled) {
            (None, Some(group)) if group.endpoints.iter().any(|e| e == caller) => MessageFromLeader {
                code: MessageCode::BeginAllreduce as i32,
                group_id: group.group_id.clone(),
                ordered_group_endpoints: group.endpoints.clone(),
                gathered: group.gathered.clone(),
                ..Default::default()
            },
            (leader, _) => MessageFromLeader {
                code: MessageCode::GroupDisbanded as i32,
                suggested_leader: leader.clone().unwrap_or_default(),
                ..Default::default()
            },
        }
    }

    /// protocol 3.6 (leader): fixes the group from the followers and this peer, updates the bits,
    /// and publishes it, waking every join handler.
    pub(super) fn assemble(&self, state: &mut JoinState) -> FormedGroup {
        if let Some(group) = &state.assembled {
            return group.clone();
        }
        let group_id = Bytes::from(rand::random::<[u8; 20]>().to_vec());
        let mut members: Vec<(String, Bytes)> =
            state.followers.iter().map(|f| (f.endpoint.clone(), f.request.gather.clone())).collect();
        members.push((self.config.endpoint.clone(), state.gather.clone()));
        members.shuffle(&mut rand::rng());
        let group = FormedGroup {
            group_id,
            endpoints: members.iter().map(|m| m.0.clone()).collect(),
            gathered: members.into_iter().map(|m| m.1).collect(),
        };
        self.update_bits(&group);
        state.assembled = Some(group.clone());
        self.bump();
        group
    }

    /// protocol 3.7: forgets every follower; **\[averager\]** their handlers are woken at once.
    pub(super) fn disband(&self, state: &mut JoinState) {
        if !state.followers.is_empty() {
            state.followers.clear();
            self.bump();
        }
    }

    /// protocol 3.9, run by every member when its group forms.
    pub(super) fn update_bits(&self, group: &FormedGroup) {
        let Some(position) = group.endpoints.iter().position(|e| *e == self.config.endpoint) else { return };
        let mut bits = self.bits.lock().unwrap_or_else(PoisonError::into_inner);
        match next_group_bits(
            &bits,
            self.config.target_group_size,
            group.endpoints.len(),
            position,
            &group.group_id,
        ) {
            Ok(next) => *bits = next,
            Err(e) => {
                tracing::warn!(error = %e, "cannot derive the next group bits; keeping the current ones")
            }
        }
    }
}

pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
