//! The honest server's handler: answers every call, and records the errors its request streams
//! end with, so a test can check what the server side was told about a hostile caller.

use std::sync::{Arc, Mutex, PoisonError};

use averager_core::transport::{
    AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest, JoinRequest,
    MessageFromLeader, MessageStream,
};
use averager_core::{Error, Result};
use futures::StreamExt;

/// Echoes `rpc_aggregate_part`, answers the unary calls with one empty message each.
#[derive(Default)]
pub struct Echo {
    errors: Arc<Mutex<Vec<Error>>>,
}

impl Echo {
    /// The errors the handler's request streams ended with, so far.
    pub fn errors(&self) -> Vec<Error> {
        self.errors.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait::async_trait]
impl AveragingService for Echo {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        _: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        Ok(Box::pin(futures::stream::iter([Ok(MessageFromLeader::default())])))
    }

    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let errors = self.errors.clone();
        Ok(Box::pin(requests.inspect(move |item| {
            if let Err(e) = item {
                errors.lock().unwrap_or_else(PoisonError::into_inner).push(e.clone());
            }
        })))
    }

    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        Ok(Box::pin(futures::stream::iter([Ok(DownloadData::default())])))
    }
}
