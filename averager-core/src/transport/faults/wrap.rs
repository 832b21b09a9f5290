//! The wrappers that apply a [`FaultPlan`]: around the served service (responses) and around the
//! clients this peer dials (requests).

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use futures::future::{BoxFuture, Fuse};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::watch;

use super::{FaultPlan, PlanInner, Role, Rpc, Selector, Verdict, killed_error, lock};
use crate::error::{Error, Result};
use crate::transport::{
    AveragingClient, AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest,
    JoinRequest, MessageFromLeader, MessageStream, RequestStream, ServerHandle, Transport,
    TransportCapabilities,
};

/// A [`Transport`] that applies the faults of its [`FaultPlan`] to what this peer sends.
pub struct FaultyTransport {
    inner: Arc<dyn Transport>,
    plan: FaultPlan,
}

impl FaultyTransport {
    /// Wraps `inner`; the returned plan (empty: no faults) controls the faults.
    pub fn new(inner: Arc<dyn Transport>) -> (FaultyTransport, FaultPlan) {
        let plan = FaultPlan::new();
        (FaultyTransport { inner, plan: plan.clone() }, plan)
    }

    /// Another handle on this transport's plan.
    pub fn plan(&self) -> FaultPlan {
        self.plan.clone()
    }
}

impl fmt::Debug for FaultyTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyTransport")
            .field("scheme", &self.inner.scheme())
            .field("plan", &self.plan)
            .finish()
    }
}

#[async_trait]
impl Transport for FaultyTransport {
    fn scheme(&self) -> &str {
        self.inner.scheme()
    }

    fn capabilities(&self) -> TransportCapabilities {
        self.inner.capabilities()
    }

    fn set_stream_rate_limit(&self, bytes_per_second: Option<u64>) {
        self.inner.set_stream_rate_limit(bytes_per_second);
    }

    async fn serve(&self, service: Arc<dyn AveragingService>) -> Result<ServerHandle> {
        let plan = self.plan.inner.clone();
        if plan.is_killed() {
            return Err(killed_error());
        }
        let wrapped = Arc::new(FaultyService { inner: service, plan: plan.clone() });
        let handle = self.inner.serve(wrapped).await?;
        let endpoint = handle.endpoint().to_string();
        let id = plan.keep_server(handle).ok_or_else(killed_error)?;
        Ok(ServerHandle::new(endpoint, move || plan.stop_server(id)))
    }

    async fn connect(&self, endpoint: &str) -> Result<Arc<dyn AveragingClient>> {
        if self.plan.is_killed() {
            return Err(killed_error());
        }
        let inner = self.inner.connect(endpoint).await?;
        Ok(Arc::new(FaultyClient { inner, endpoint: endpoint.to_string(), plan: self.plan.inner.clone() }))
    }
}

/// The served service, with server-side faults on its responses.
struct FaultyService {
    inner: Arc<dyn AveragingService>,
    plan: Arc<PlanInner>,
}

impl FaultyService {
    fn check_alive(&self) -> Result<()> {
        if self.plan.is_killed() {
            return Err(Error::Unreachable {
                endpoint: "this peer".into(),
                reason: "injected fault: the peer was killed".into(),
            });
        }
        Ok(())
    }

    fn wrap<T: prost::Message + Send + 'static>(
        &self,
        rpc: Rpc,
        responses: MessageStream<T>,
    ) -> MessageStream<T> {
        let at = Selector { role: Role::Server, rpc, remote: None };
        faulty_responses(responses, self.plan.clone(), at)
    }
}

#[async_trait]
impl AveragingService for FaultyService {
    async fn rpc_join_group(
        &self,
        call: CallContext,
        request: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        self.check_alive()?;
        let responses = self.inner.rpc_join_group(call, request).await?;
        Ok(self.wrap(Rpc::JoinGroup, responses))
    }

    async fn rpc_aggregate_part(
        &self,
        call: CallContext,
        requests: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        self.check_alive()?;
        let responses = self.inner.rpc_aggregate_part(call, requests).await?;
        Ok(self.wrap(Rpc::AggregatePart, responses))
    }

    async fn rpc_download_state(
        &self,
        call: CallContext,
        request: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        self.check_alive()?;
        let responses = self.inner.rpc_download_state(call, request).await?;
        Ok(self.wrap(Rpc::DownloadState, responses))
    }
}

/// A dialled client, with client-side faults on its requests.
struct FaultyClient {
    inner: Arc<dyn AveragingClient>,
    endpoint: String,
    plan: Arc<PlanInner>,
}

impl FaultyClient {
    fn selector(&self, rpc: Rpc) -> Selector {
        Selector { role: Role::Client, rpc, remote: Some(self.endpoint.clone()) }
    }

    /// Applies the faults to the one request of a unary call, then makes the call.
    async fn unary<T: Send + 'static>(
        &self,
        rpc: Rpc,
        call: impl Future<Output = Result<MessageStream<T>>>,
    ) -> Result<MessageStream<T>> {
        let mut killed = self.plan.killed_rx();
        let shared = CallAbort::new();
        match self.plan.verdict(&self.selector(rpc), 0, Some(0)) {
            Verdict::Fail(e) => return Err(e),
            // The request is never sent: the caller gets a stream that never yields.
            Verdict::Stall => return Ok(Box::pin(CutStream::new(shared, killed))),
            Verdict::Send(delay) => {
                tokio::select! {
                    biased;
                    () = wait_killed(&mut killed) => return Err(killed_error()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        let responses = tokio::select! {
            biased;
            () = wait_killed(&mut killed) => return Err(killed_error()),
            responses = call => responses?,
        };
        shared.install(responses);
        Ok(Box::pin(CutStream::new(shared, killed)))
    }

    fn check_alive(&self) -> Result<()> {
        if self.plan.is_killed() {
            return Err(killed_error());
        }
        Ok(())
    }
}

#[async_trait]
impl AveragingClient for FaultyClient {
    async fn rpc_join_group(&self, request: JoinRequest) -> Result<MessageStream<MessageFromLeader>> {
        self.check_alive()?;
        self.unary(Rpc::JoinGroup, self.inner.rpc_join_group(request)).await
    }

    async fn rpc_aggregate_part(
        &self,
        requests: RequestStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        self.check_alive()?;
        let mut killed = self.plan.killed_rx();
        let shared = CallAbort::new();
        let requests = faulty_requests(
            requests,
            self.plan.clone(),
            self.selector(Rpc::AggregatePart),
            Arc::downgrade(&shared),
        );
        let responses = tokio::select! {
            biased;
            () = wait_killed(&mut killed) => return Err(killed_error()),
            responses = self.inner.rpc_aggregate_part(requests) => responses?,
        };
        shared.install(responses);
        Ok(Box::pin(CutStream::new(shared, killed)))
    }

    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>> {
        self.check_alive()?;
        self.unary(Rpc::DownloadState, self.inner.rpc_download_state(request)).await
    }
}

async fn wait_killed(rx: &mut watch::Receiver<bool>) {
    // The sender lives in the plan, which outlives every call holding a receiver; an error would
    // mean the plan is gone, and then nothing is left to kill.
    if rx.wait_for(|killed| *killed).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What the gate says about the next message.
enum Gate {
    Pass,
    Fail(Error),
}

/// Waits out the plan's verdict for message `sent`: returns at once, after the delay, or (on a
/// stall) only when the peer is killed. `bytes` is the size of the message about to be sent;
/// `None` checks for failures before there is a message, and never waits.
async fn gate(
    plan: &PlanInner,
    at: &Selector,
    sent: usize,
    killed: &mut watch::Receiver<bool>,
    bytes: Option<usize>,
) -> Gate {
    let with_delay = bytes.is_some();
    match plan.verdict(at, sent, bytes) {
        Verdict::Fail(e) => Gate::Fail(e),
        Verdict::Stall => {
            wait_killed(killed).await;
            Gate::Fail(killed_error())
        }
        Verdict::Send(delay) if with_delay && !delay.is_zero() => {
            tokio::select! {
                biased;
                () = wait_killed(killed) => Gate::Fail(killed_error()),
                () = tokio::time::sleep(delay) => Gate::Pass,
            }
        }
        Verdict::Send(_) => {
            if plan.is_killed() {
                Gate::Fail(killed_error())
            } else {
                Gate::Pass
            }
        }
    }
}

/// The state of a fault-applying stream, threaded through `unfold`.
struct Gated<S> {
    inner: S,
    sent: usize,
    killed: watch::Receiver<bool>,
}

/// A served response stream with the plan's server-side faults applied.
///
/// A stall keeps the handler's stream alive but unpolled, as a hung peer would.
fn faulty_responses<T: prost::Message + Send + 'static>(
    responses: MessageStream<T>,
    plan: Arc<PlanInner>,
    at: Selector,
) -> MessageStream<T> {
    let state = Gated { inner: responses, sent: 0, killed: plan.killed_rx() };
    let stream = futures::stream::unfold(Some(state), move |state| {
        let plan = plan.clone();
        let at = at.clone();
        async move {
            let mut st = state?;
            // Checked before waiting for the handler, so a failure is not held up by a slow handler.
            if let Gate::Fail(e) = gate(&plan, &at, st.sent, &mut st.killed, None).await {
                return Some((Err(e), None));
            }
            let item = tokio::select! {
                biased;
                () = wait_killed(&mut st.killed) => return Some((Err(killed_error()), None)),
                item = st.inner.next() => item?,
            };
            let bytes = match &item {
                Ok(message) => message.encoded_len(),
                Err(_) => return Some((item, None)),
            };
            if let Gate::Fail(e) = gate(&plan, &at, st.sent, &mut st.killed, Some(bytes)).await {
                return Some((Err(e), None));
            }
            st.sent += 1;
            Some((item, Some(st)))
        }
    });
    Box::pin(stream)
}

/// A caller's request stream with the plan's client-side faults applied. A failure aborts the
/// call through `abort`; the request stream itself then never yields again (ending it would
/// look like a clean end of input).
///
/// `abort` is weak: the inner transport owns this stream for as long as the call's response
/// stream lives, and that response stream sits inside the `CallAbort`, so a strong reference
/// would keep a cancelled call alive forever.
fn faulty_requests(
    requests: RequestStream<AveragingData>,
    plan: Arc<PlanInner>,
    at: Selector,
    abort: Weak<CallAbort<AveragingData>>,
) -> RequestStream<AveragingData> {
    let state = Gated { inner: requests, sent: 0, killed: plan.killed_rx() };
    let stream = futures::stream::unfold(state, move |mut st| {
        let plan = plan.clone();
        let at = at.clone();
        let abort = abort.clone();
        async move {
            if let Gate::Fail(e) = gate(&plan, &at, st.sent, &mut st.killed, None).await {
                if let Some(abort) = abort.upgrade() {
                    abort.fail(e);
                }
                return std::future::pending().await;
            }
            let item = st.inner.next().await?;
            let bytes = prost::Message::encoded_len(&item);
            if let Gate::Fail(e) = gate(&plan, &at, st.sent, &mut st.killed, Some(bytes)).await {
                if let Some(abort) = abort.upgrade() {
                    abort.fail(e);
                }
                return std::future::pending().await;
            }
            st.sent += 1;
            Some((item, st))
        }
    });
    Box::pin(stream)
}

/// A client call's response stream, shared with its request side so that a request fault can
/// abort the call: the inner stream is dropped at once (cancelling the call on the server) and the
/// caller's stream yields the error.
struct CallAbort<T> {
    state: Mutex<AbortState<T>>,
}

struct AbortState<T> {
    inner: Option<MessageStream<T>>,
    error: Option<Error>,
    done: bool,
    waker: Option<Waker>,
}

impl<T> CallAbort<T> {
    fn new() -> Arc<Self> {
        Arc::new(CallAbort {
            state: Mutex::new(AbortState { inner: None, error: None, done: false, waker: None }),
        })
    }

    /// Hands over the inner response stream, unless the call already failed.
    fn install(&self, responses: MessageStream<T>) {
        let mut state = lock(&self.state);
        if state.error.is_none() && !state.done {
            state.inner = Some(responses);
        }
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// Fails the call with `error`.
    fn fail(&self, error: Error) {
        let (inner, waker) = {
            let mut state = lock(&self.state);
            if state.done {
                return;
            }
            state.error.get_or_insert(error);
            (state.inner.take(), state.waker.take())
        };
        // Dropped outside the lock: dropping it may run the inner transport's cancellation.
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The caller's view of a [`CallAbort`], which also ends with an error when the peer is killed.
struct CutStream<T> {
    shared: Arc<CallAbort<T>>,
    /// Fused: it is polled again after it fired.
    killed: Fuse<BoxFuture<'static, ()>>,
}

impl<T> CutStream<T> {
    fn new(shared: Arc<CallAbort<T>>, killed: watch::Receiver<bool>) -> Self {
        let killed = async move {
            let mut killed = killed;
            wait_killed(&mut killed).await;
        }
        .boxed()
        .fuse();
        CutStream { shared, killed }
    }
}

impl<T> Stream for CutStream<T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        let this = self.get_mut();
        if this.killed.poll_unpin(cx).is_ready() {
            this.shared.fail(killed_error());
        }
        let mut inner = {
            let mut state = lock(&this.shared.state);
            if state.done {
                return Poll::Ready(None);
            }
            if let Some(error) = state.error.take() {
                state.done = true;
                state.inner = None;
                return Poll::Ready(Some(Err(error)));
            }
            match state.inner.take() {
                Some(inner) => inner,
                None => {
                    state.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        // Polled outside the lock: a transport may poll the request stream (which locks) from here.
        let polled = inner.poll_next_unpin(cx);
        let mut state = lock(&this.shared.state);
        if state.error.is_some() {
            // The request side failed meanwhile; report that on the next poll.
            drop(state);
            drop(inner);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => state.done = true,
            _ => {
                state.inner = Some(inner);
                state.waker = Some(cx.waker().clone());
            }
        }
        polled
    }
}
