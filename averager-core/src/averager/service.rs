//! The averager's `DecentralizedAveraging` handler: joins go to matchmaking, part streams to the
//! round of their group, downloads to state sharing.
//!
//! The transport keeps the service alive while it serves, so the service holds the averager
//! weakly: dropping or shutting down the averager is never kept from happening by its own server.
//!
//! **\[averager\]** identity check: when the transport proved who the caller is
//! ([`CallContext::authenticated_peer`], e.g. a libp2p peer id from the noise handshake), a join
//! request or a part whose `endpoint` names anyone else is refused with `PROTOCOL_VIOLATION`, so
//! a peer cannot join a group or send parts in another's name. A client-mode peer's `client://`
//! pseudonym (or an empty `endpoint`) names no served peer, so it claims no one's identity and
//! passes to the usual checks.

use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use averager_proto::MessageCode;
use futures::StreamExt;

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
    fn inner(&self) -> Result<Arc<Inner>> {
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
        call: CallContext,
        request: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        if let Some(why) = impersonation(&call, &request.endpoint) {
            tracing::warn!("refused a join request: {why}");
            let reply =
                MessageFromLeader { code: MessageCode::ProtocolViolation as i32, ..Default::default() };
            return Ok(Box::pin(futures::stream::once(async move { Ok(reply) })));
        }
        Ok(self.inner()?.matchmaker.handle_join(request))
    }

    async fn rpc_aggregate_part(
        &self,
        call: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let inner = self.inner()?;
        let (router, traffic) = (inner.router.clone(), Arc::clone(&inner.traffic));
        drop(inner);
        // Counted into the round of the group the first part names.
        let (mut requests, served) = traffic.count_requests(requests);
        if call.authenticated_peer.is_none() {
            return Ok(served.replies(router.route(requests).await?));
        }
        // The first part is checked before routing, so an impersonator gets its answer at once
        // and never reaches a group. Authenticating transports bound the wait for it.
        let first = requests.next().await;
        if let Some(Ok(part)) = &first
            && let Some(why) = impersonation(&call, &part.endpoint)
        {
            tracing::warn!("refused a part stream: {why}");
            let reply = AveragingData { code: MessageCode::ProtocolViolation as i32, ..Default::default() };
            return Ok(Box::pin(futures::stream::once(async move { Ok(reply) })));
        }
        // Later parts that switch identity end the stream with the same refusal.
        let rest = requests.map(move |item| {
            let part = item?;
            match impersonation(&call, &part.endpoint) {
                Some(why) => Err(Error::protocol(MessageCode::ProtocolViolation, why)),
                None => Ok(part),
            }
        });
        let replies = router.route(Box::pin(futures::stream::iter(first).chain(rest))).await?;
        Ok(served.replies(replies))
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

/// The scheme of the endpoints client-mode peers name themselves by (they serve nothing).
const CLIENT_SCHEME: &str = "client://";

/// Why a call whose message claims `claimed` as its sender's endpoint is an impersonation, if it
/// is: the transport proved a different caller.
fn impersonation(call: &CallContext, claimed: &str) -> Option<String> {
    let proven = call.authenticated_peer.as_deref()?;
    let pseudonym = claimed.is_empty() || claimed.starts_with(CLIENT_SCHEME);
    (!pseudonym && claimed != proven)
        .then(|| format!("the caller proved it is {proven} but claims to be {claimed}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_proven_caller_claiming_someone_else_is_an_impersonation() {
        let anonymous = CallContext::default();
        assert_eq!(impersonation(&anonymous, "libp2p://a"), None);
        let proven = CallContext { authenticated_peer: Some("libp2p://a".into()), remote_address: None };
        assert_eq!(impersonation(&proven, "libp2p://a"), None);
        assert_eq!(impersonation(&proven, ""), None);
        assert_eq!(impersonation(&proven, "client://00ff"), None);
        assert!(impersonation(&proven, "libp2p://b").is_some());
    }
}
