//! The transport suite run against the in-process transports, and a check that the suite catches
//! broken transports.

use std::sync::Arc;

use async_trait::async_trait;
use averager_conformance::{block_on_case, transport, transport_suite};
use averager_core::Result;
use averager_core::transport::{
    AveragingClient, AveragingData, AveragingService, DEFAULT_MAX_MESSAGE_BYTES, DownloadData,
    DownloadRequest, FaultyTransport, JoinRequest, MemoryTransport, MessageFromLeader, MessageStream,
    RequestStream, ServerHandle, Transport, TransportCapabilities,
};
use futures::StreamExt;

transport_suite!(
    memory,
    || async { Arc::new(MemoryTransport::default()) as Arc<dyn Transport> },
    unserved_endpoint = "mem://nobody-ever-serves-this",
    lacks: [authenticated]
);

transport_suite!(faulty_without_faults, || async {
    let (transport, _plan) = FaultyTransport::new(Arc::new(MemoryTransport::default()));
    Arc::new(transport) as Arc<dyn Transport>
}, lacks: [authenticated]);

#[test]
fn run_all_reports_every_case_passing_for_memory() {
    let outcome = block_on_case(async {
        let factory = || async { Arc::new(MemoryTransport::default()) as Arc<dyn Transport> };
        let outcomes = transport::run_all(&factory).await;
        assert!(outcomes.len() >= 16, "run_all ran {} cases", outcomes.len());
        for (name, outcome) in outcomes {
            outcome.map_err(|f| averager_conformance::Failure::new(format!("{name}: {f}")))?;
        }
        Ok(())
    });
    assert_eq!(outcome, Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Broken transports: each wraps MemoryTransport and breaks one promise.
// ---------------------------------------------------------------------------------------------

/// How a [`Broken`] transport misbehaves.
#[derive(Clone, Copy, Debug)]
enum Flaw {
    /// The client silently drops every third response message.
    DropsEveryThirdResponse,
    /// It claims half the cap it really enforces, so messages over its claim pass.
    IgnoresItsCap,
    /// The client never drops the server's stream when the caller drops its response stream.
    LeaksCancelledCalls,
}

struct Broken {
    inner: MemoryTransport,
    flaw: Flaw,
}

impl Broken {
    fn new(flaw: Flaw) -> Self {
        Broken { inner: MemoryTransport::default(), flaw }
    }
}

#[async_trait]
impl Transport for Broken {
    fn scheme(&self) -> &str {
        self.inner.scheme()
    }

    fn capabilities(&self) -> TransportCapabilities {
        match self.flaw {
            Flaw::IgnoresItsCap => TransportCapabilities {
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES / 2,
                ..self.inner.capabilities()
            },
            _ => self.inner.capabilities(),
        }
    }

    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle> {
        self.inner.serve(service).await
    }

    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>> {
        let inner = self.inner.connect(endpoint).await?;
        Ok(Arc::new(BrokenClient { inner, flaw: self.flaw }))
    }
}

struct BrokenClient {
    inner: Arc<dyn AveragingClient>,
    flaw: Flaw,
}

impl BrokenClient {
    fn spoil<T: Send + 'static>(&self, responses: MessageStream<T>) -> MessageStream<T> {
        match self.flaw {
            Flaw::DropsEveryThirdResponse => Box::pin(
                responses.enumerate().filter(|(i, _)| std::future::ready(i % 3 != 2)).map(|(_, r)| r),
            ),
            Flaw::IgnoresItsCap => responses,
            Flaw::LeaksCancelledCalls => {
                // Hands the caller a stream that forwards from a leaked copy: dropping the
                // caller's stream never reaches the inner one.
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let mut responses = responses;
                let forward = async move {
                    if let Some(first) = responses.next().await {
                        let _ = tx.send(first).await;
                    }
                    std::mem::forget(responses);
                };
                tokio::spawn(forward);
                Box::pin(futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
                ))
            }
        }
    }
}

#[async_trait]
impl AveragingClient for BrokenClient {
    async fn rpc_join_group(&self, request: JoinRequest) -> Result<MessageStream<MessageFromLeader>> {
        Ok(self.spoil(self.inner.rpc_join_group(request).await?))
    }

    async fn rpc_aggregate_part(
        &self,
        requests: RequestStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        Ok(self.spoil(self.inner.rpc_aggregate_part(requests).await?))
    }

    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>> {
        Ok(self.spoil(self.inner.rpc_download_state(request).await?))
    }
}

fn broken(flaw: Flaw) -> impl Fn() -> std::future::Ready<Arc<dyn Transport>> {
    move || std::future::ready(Arc::new(Broken::new(flaw)) as Arc<dyn Transport>)
}

#[test]
fn suite_catches_dropped_response_messages() {
    let f = broken(Flaw::DropsEveryThirdResponse);
    assert!(block_on_case(transport::download_state_streams_many_messages(&f)).is_err());
    assert!(block_on_case(transport::aggregate_part_round_trips_every_field(&f)).is_err());
    assert!(block_on_case(transport::download_state_round_trips_every_field(&f)).is_err());
    assert!(block_on_case(transport::concurrent_calls_reach_their_callers(&f)).is_err());
    // Promises the flaw does not touch still hold.
    assert_eq!(block_on_case(transport::malformed_endpoint_fails_at_connect(&f)), Ok(()));
}

#[test]
fn suite_catches_an_ignored_cap() {
    let f = broken(Flaw::IgnoresItsCap);
    assert!(block_on_case(transport::oversize_request_is_message_too_large(&f)).is_err());
    assert!(block_on_case(transport::oversize_response_is_message_too_large(&f)).is_err());
    assert_eq!(block_on_case(transport::message_at_the_cap_passes(&f)), Ok(()));
}

#[test]
fn suite_catches_a_cancellation_that_never_reaches_the_server() {
    let f = broken(Flaw::LeaksCancelledCalls);
    let outcome = block_on_case(transport::dropping_the_response_stream_cancels_the_handler(&f));
    let failure = outcome.expect_err("a leaked call must fail the cancellation case");
    assert!(failure.message.contains("not dropped"), "unexpected failure: {failure}");
}
