//! The `grpc` registry record builds a working transport from its config.

use std::sync::Arc;

use averager_core::registry::{PluginConfig, Registry};
use averager_core::transport::{
    AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest, JoinRequest,
    MessageFromLeader, MessageStream,
};
use averager_core::{Error, Result};
use futures::StreamExt;
// Links the crate, so its registry record is submitted.
use averager_transport_grpc as _;

struct Echo;

#[async_trait::async_trait]
impl AveragingService for Echo {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        _: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        Err(Error::Internal("not served".into()))
    }

    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        Ok(requests)
    }

    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        Err(Error::Internal("not served".into()))
    }
}

#[tokio::test]
async fn registry_builds_the_grpc_transport_from_config() -> Result<()> {
    let config = PluginConfig::new(serde_json::json!({ "max_message_bytes": 1024, "connect_timeout": 2.0 }));
    let transport = Registry::global().transport("grpc", config).await?;
    assert_eq!(transport.scheme(), "grpc");
    assert_eq!(transport.capabilities().max_message_bytes, 1024);
    let handle = transport.serve(Arc::new(Echo)).await?;
    assert!(handle.endpoint().starts_with("grpc://127.0.0.1:"), "{}", handle.endpoint());
    let client = transport.connect(handle.endpoint()).await?;
    let part = AveragingData { endpoint: "me".into(), ..Default::default() };
    let replies: Vec<_> =
        client.rpc_aggregate_part(Box::pin(futures::stream::iter(vec![part.clone()]))).await?.collect().await;
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].as_ref().ok(), Some(&part));
    Ok(())
}

#[tokio::test]
async fn registry_refuses_unknown_settings() {
    let config = PluginConfig::new(serde_json::json!({ "no_such_setting": 1 }));
    assert!(matches!(Registry::global().transport("grpc", config).await, Err(Error::Config(_))));
}

#[tokio::test]
async fn stopping_the_server_fails_calls_under_way() -> Result<()> {
    let transport = Registry::global().transport("grpc", PluginConfig::default()).await?;
    let handle = transport.serve(Arc::new(Echo)).await?;
    let client = transport.connect(handle.endpoint()).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<AveragingData>();
    let requests = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut replies = client.rpc_aggregate_part(Box::pin(requests)).await?;
    assert!(tx.send(AveragingData::default()).is_ok());
    assert!(matches!(replies.next().await, Some(Ok(_))));
    handle.shutdown();
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), replies.next()).await;
    assert!(matches!(end, Ok(Some(Err(Error::Unreachable { .. })))), "{end:?}");
    Ok(())
}
