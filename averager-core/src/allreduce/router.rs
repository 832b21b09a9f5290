//! SPEC 4.5 (before the runner): routing an incoming `rpc_aggregate_part` stream to the runner of
//! its group.
//!
//! **\[averager\]** (SPEC 11.8): a stream whose group is not registered waits at most a bounded
//! time (the averager uses `request_timeout`) for that group to register, then gets
//! `BAD_GROUP_ID`; hivemind waits without a limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use averager_proto::MessageCode;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::runner::AllReduceRunner;
use crate::error::{Error, Result};
use crate::transport::{
    AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest, JoinRequest,
    MessageFromLeader, MessageStream,
};

/// The runners of the groups this peer is in, by group id.
///
/// It is also a complete [`AveragingService`] for a peer that only averages: streams go to their
/// runners, join requests are answered `NOT_LOOKING_FOR_GROUP`, and state downloads end at once
/// (SPEC 6.2: nothing to share). The averager's own handler delegates `rpc_aggregate_part` here.
#[derive(Debug)]
pub struct RunnerRouter {
    runners: Mutex<HashMap<Bytes, Arc<AllReduceRunner>>>,
    changed: watch::Sender<u64>,
    wait: Duration,
}

impl Default for RunnerRouter {
    fn default() -> Self {
        Self::new(Duration::from_secs(3))
    }
}

impl RunnerRouter {
    /// An empty router whose incoming streams wait at most `wait` for their first message and
    /// their group (the averager passes `request_timeout`).
    pub fn new(wait: Duration) -> Self {
        RunnerRouter { runners: Mutex::new(HashMap::new()), changed: watch::channel(0).0, wait }
    }

    /// Makes `runner` reachable by its group id (waking streams that wait for it).
    pub fn register(&self, runner: Arc<AllReduceRunner>) {
        let id = runner.group().group_id.clone();
        self.runners.lock().unwrap_or_else(PoisonError::into_inner).insert(id, runner);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Forgets the runner of `group_id`.
    pub fn unregister(&self, group_id: &[u8]) {
        self.runners.lock().unwrap_or_else(PoisonError::into_inner).remove(group_id);
    }

    /// Cancels every registered runner (SPEC 8.3 shutdown, **\[averager\]** 11.12).
    pub fn cancel_all(&self) {
        let runners: Vec<_> =
            self.runners.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        for runner in runners {
            runner.cancel();
        }
    }

    fn find(&self, group_id: &[u8]) -> Option<Arc<AllReduceRunner>> {
        self.runners.lock().unwrap_or_else(PoisonError::into_inner).get(group_id).cloned()
    }

    /// Hands an incoming stream to its group's runner, waiting at most the router's wait for the
    /// first message and for the group to register.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the first message does not come in time, [`Error::Protocol`] when
    /// the stream ends or fails before it. An unknown group is answered with one `BAD_GROUP_ID`.
    pub async fn route(
        &self,
        mut requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let wait = self.wait;
        let deadline = tokio::time::Instant::now() + wait;
        let first = tokio::time::timeout_at(deadline, requests.next())
            .await
            .map_err(|_| Error::timeout("the first part of an rpc_aggregate_part stream", wait))?
            .ok_or_else(|| {
                Error::protocol(MessageCode::ProtocolViolation, "stream ended before its first part")
            })??;
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(runner) = self.find(&first.group_id) {
                return Ok(runner.serve(first, requests));
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => break,
            }
        }
        let reply = AveragingData { code: MessageCode::BadGroupId as i32, ..Default::default() };
        Ok(Box::pin(futures::stream::once(async move { Ok(reply) })))
    }
}

#[async_trait::async_trait]
impl AveragingService for RunnerRouter {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        _: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        let reply = MessageFromLeader { code: MessageCode::NotLookingForGroup as i32, ..Default::default() };
        Ok(Box::pin(futures::stream::once(async move { Ok(reply) })))
    }

    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        self.route(requests).await
    }

    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        Ok(Box::pin(futures::stream::empty()))
    }
}
