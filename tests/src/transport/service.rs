//! The scriptable service the cases serve.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use averager_core::Error;
use averager_core::proto::{AveragingData, DownloadData, DownloadRequest, JoinRequest, MessageFromLeader};
use averager_core::transport::{AveragingService, CallContext, MessageStream};
use futures::{StreamExt, stream};
use tokio::sync::oneshot;

use super::messages::{full_download, full_leader_message, numbered_download};

/// Fires its receiver when dropped; held by streams whose dropping a case observes.
pub(super) struct DropSignal(Option<oneshot::Sender<()>>);

impl DropSignal {
    pub(super) fn new() -> (DropSignal, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (DropSignal(Some(tx)), rx)
    }
}

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl std::fmt::Debug for DropSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropSignal")
    }
}

/// What `rpc_join_group` does.
pub(super) enum JoinScript {
    Replies(Vec<MessageFromLeader>),
    Fail(Error),
}

/// What `rpc_aggregate_part` does.
pub(super) enum AggregateScript {
    /// Echo every request as it arrives; end when the input ends.
    Echo {
        guard: Option<DropSignal>,
    },
    /// Echo the first request, then end the call.
    ReplyOnce,
    Fail(Error),
}

/// What `rpc_download_state` does.
pub(super) enum DownloadScript {
    Replies(Vec<DownloadData>),
    /// Stream messages of `size` bytes until dropped.
    Endless {
        size: usize,
        guard: Option<DropSignal>,
    },
    Fail(Error),
}

pub(super) struct Script {
    pub(super) join: JoinScript,
    pub(super) aggregate: AggregateScript,
    pub(super) download: DownloadScript,
}

#[derive(Default)]
pub(super) struct Log {
    pub(super) contexts: Vec<CallContext>,
    pub(super) join_requests: Vec<JoinRequest>,
    /// Small requests of `rpc_aggregate_part`, in arrival order.
    pub(super) parts: Vec<AveragingData>,
    /// The tensor buffer length of every request of `rpc_aggregate_part`.
    pub(super) part_buffer_lens: Vec<usize>,
    pub(super) downloads: usize,
}

/// The service a case serves; its behaviour is scripted per case.
pub(super) struct TestService {
    script: Mutex<Script>,
    log: Arc<Mutex<Log>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TestService {
    pub(super) fn new() -> Arc<TestService> {
        Arc::new(TestService {
            script: Mutex::new(Script {
                join: JoinScript::Replies(vec![full_leader_message(0)]),
                aggregate: AggregateScript::Echo { guard: None },
                download: DownloadScript::Replies(vec![full_download(0)]),
            }),
            log: Arc::default(),
        })
    }

    pub(super) fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.script)
    }

    pub(super) fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.log)
    }
}

fn record_part(log: &Mutex<Log>, part: &AveragingData) {
    let size = part.tensor_part.as_ref().map_or(0, |t| t.buffer.len());
    let mut log = lock(log);
    log.part_buffer_lens.push(size);
    if size < 1024 * 1024 {
        log.parts.push(part.clone());
    }
}

#[async_trait::async_trait]
impl AveragingService for TestService {
    async fn rpc_join_group(
        &self,
        call: CallContext,
        request: JoinRequest,
    ) -> averager_core::Result<MessageStream<MessageFromLeader>> {
        {
            let mut log = self.log();
            log.contexts.push(call);
            log.join_requests.push(request);
        }
        match &self.script().join {
            JoinScript::Replies(replies) => Ok(Box::pin(stream::iter(replies.clone()).map(Ok))),
            JoinScript::Fail(e) => Err(e.clone()),
        }
    }

    async fn rpc_aggregate_part(
        &self,
        call: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> averager_core::Result<MessageStream<AveragingData>> {
        self.log().contexts.push(call);
        let log = self.log.clone();
        let script = std::mem::replace(&mut self.script().aggregate, AggregateScript::Echo { guard: None });
        match script {
            AggregateScript::Echo { guard } => {
                // An error in the input ends the echo; the transport reports the failure itself.
                let echo = requests.take_while(|r| std::future::ready(r.is_ok())).map(move |r| {
                    let _keep = &guard;
                    if let Ok(part) = &r {
                        record_part(&log, part);
                    }
                    r
                });
                Ok(Box::pin(echo))
            }
            AggregateScript::ReplyOnce => {
                let once = requests.take(1).map(move |r| {
                    if let Ok(part) = &r {
                        record_part(&log, part);
                    }
                    r
                });
                Ok(Box::pin(once))
            }
            AggregateScript::Fail(e) => Err(e),
        }
    }

    async fn rpc_download_state(
        &self,
        call: CallContext,
        _request: DownloadRequest,
    ) -> averager_core::Result<MessageStream<DownloadData>> {
        {
            let mut log = self.log();
            log.contexts.push(call);
            log.downloads += 1;
        }
        let mut script = self.script();
        match &mut script.download {
            DownloadScript::Replies(replies) => Ok(Box::pin(stream::iter(replies.clone()).map(Ok))),
            DownloadScript::Endless { size, guard } => {
                let guard = guard.take();
                let size = *size;
                let endless = stream::iter(0..).map(move |i| {
                    let _keep = &guard;
                    Ok(numbered_download(i, size))
                });
                Ok(Box::pin(endless))
            }
            DownloadScript::Fail(e) => Err(e.clone()),
        }
    }
}
