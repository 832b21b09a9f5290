//! The averager's `DecentralizedAveraging` handler: joins go to matchmaking, part streams to the
//! runner of their group, downloads to state sharing.
//!
//! The transport keeps the service alive while it serves, so the service holds the averager
//! weakly: dropping or shutting down the averager is never kept from happening by its own server.

use std::sync::{OnceLock, Weak};

use async_trait::async_trait;

use super::Inner;
use crate::error::{Error, Result};
use crate::transport::{
    AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest, JoinRequest,
    MessageFromLeader, MessageStream,
};

/// The handler a non-CLIENT averager serves.
#[derive(Default)]
pub(super) struct AveragerService {
    pub(super) inner: OnceLock<Weak<Inner>>,
}

impl AveragerService {
    fn inner(&self) -> Result<std::sync::Arc<Inner>> {
        self.inner
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| Error::Cancelled("this averager is starting or has shut down".into()))
    }
}

#[async_trait]
impl AveragingService for AveragerService {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        request: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        Ok(self.inner()?.matchmaker.handle_join(request))
    }

    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let router = self.inner()?.router.clone();
        router.route(requests).await
    }

    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        let inner = self.inner()?;
        inner.serve_state().await
    }
}
