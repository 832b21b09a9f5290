//! The calling side: endpoint parsing, dialing with an optional pin, one cached connection per
//! endpoint, and one bidirectional stream per call.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use averager_core::transport::{
    AveragingClient, AveragingData, DownloadData, DownloadRequest, JoinRequest, MessageFromLeader,
    MessageStream, RequestStream, split_endpoint,
};
use averager_core::{Error, Result};
use futures::FutureExt;
use futures::StreamExt;
use futures::future::{BoxFuture, Shared};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::oneshot;

use averager_core::transport::frame::{Frame, FrameWrite, Outgoing, decode, encode_frame, read_frame};

use crate::frame::{
    CODE_CANCELLED, CODE_TOO_LARGE, METHOD_AGGREGATE, METHOD_DOWNLOAD, METHOD_JOIN, Recv, Send,
    connection_lost, write_error,
};
use crate::tls;

/// The scheme this crate serves and dials.
pub(crate) const SCHEME: &str = "quic";

/// A parsed `quic://host:port[#sha256]` endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `host:port`.
    pub(crate) authority: String,
    /// The pinned certificate fingerprint, lowercase hex.
    pub(crate) pin: Option<String>,
}

/// Checks a fingerprint: 64 hex digits, returned lowercase.
pub(crate) fn parse_pin(pin: &str) -> Result<String> {
    if pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(pin.to_ascii_lowercase())
    } else {
        Err(Error::Config(format!("{pin:?} is not a SHA-256 fingerprint (64 hex digits)")))
    }
}

/// Parses `quic://host:port` or `quic://host:port#<sha256 hex>`.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<Target> {
    let (scheme, rest) = split_endpoint(endpoint)?;
    if scheme != SCHEME {
        return Err(Error::Config(format!("endpoint {endpoint:?} is not a {SCHEME}:// endpoint")));
    }
    let (authority, pin) = match rest.split_once('#') {
        Some((authority, pin)) => (authority, Some(parse_pin(pin)?)),
        None => (rest, None),
    };
    let valid = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok());
    if !valid {
        return Err(Error::Config(format!("endpoint {endpoint:?} is not quic://host:port")));
    }
    Ok(Target { authority: authority.to_string(), pin })
}

/// The dialing state one transport shares between its clients.
pub(crate) struct Dialer {
    pub(crate) connect_timeout: Duration,
    pub(crate) default_pin: Option<String>,
    /// Client endpoints, IPv4 then IPv6, made on first use.
    endpoints: Mutex<[Option<Endpoint>; 2]>,
    /// The connection, or the dial under way, per dialed endpoint string.
    connections: Mutex<HashMap<String, Slot>>,
}

/// A handshake shared by every caller that wants the same endpoint meanwhile.
type Dialing = Shared<BoxFuture<'static, Result<Connection>>>;

enum Slot {
    Dialing(Dialing),
    Connected(Connection),
}

impl Dialer {
    pub(crate) fn new(connect_timeout: Duration, default_pin: Option<String>) -> Self {
        Dialer {
            connect_timeout,
            default_pin,
            endpoints: Mutex::new([None, None]),
            connections: Mutex::new(HashMap::new()),
        }
    }

    fn client_endpoint(&self, ipv6: bool) -> Result<Endpoint> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut endpoints[usize::from(ipv6)];
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let bind: SocketAddr =
            if ipv6 { (Ipv6Addr::UNSPECIFIED, 0).into() } else { (Ipv4Addr::UNSPECIFIED, 0).into() };
        let endpoint = Endpoint::client(bind)
            .map_err(|e| Error::Transport(format!("binding a QUIC client socket on {bind}: {e}")))?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// The live connection to `endpoint`, dialing when there is none (or it closed).
    ///
    /// The handshake runs in a task of its own: a caller that gives up (its `request_timeout`
    /// fired) does not throw the handshake away, so the next caller joins it instead of starting
    /// over, which under load could otherwise never finish within any caller's patience.
    pub(crate) async fn connection(self: &Arc<Self>, endpoint: &str, target: &Target) -> Result<Connection> {
        let dialing = {
            let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget endpoints whose connection is gone.
            connections.retain(|_, slot| match slot {
                Slot::Connected(c) => c.close_reason().is_none(),
                Slot::Dialing(_) => true,
            });
            match connections.get(endpoint) {
                Some(Slot::Connected(connection)) => return Ok(connection.clone()),
                Some(Slot::Dialing(dialing)) => dialing.clone(),
                None => {
                    let (this, name, target) = (Arc::clone(self), endpoint.to_string(), target.clone());
                    let task = tokio::spawn(async move { this.dial(&name, &target).await });
                    let dialing = async move {
                        task.await.unwrap_or_else(|e| Err(Error::Internal(format!("QUIC dial task: {e}"))))
                    }
                    .boxed()
                    .shared();
                    connections.insert(endpoint.to_string(), Slot::Dialing(dialing.clone()));
                    dialing
                }
            }
        };
        let outcome = dialing.clone().await;
        let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        // Whoever sees the handshake end first records it (unless a newer dial replaced it).
        if let Some(Slot::Dialing(current)) = connections.get(endpoint)
            && current.ptr_eq(&dialing)
        {
            match &outcome {
                Ok(connection) => {
                    connections.insert(endpoint.to_string(), Slot::Connected(connection.clone()));
                }
                Err(_) => {
                    connections.remove(endpoint);
                }
            }
        }
        outcome
    }

    async fn dial(&self, endpoint: &str, target: &Target) -> Result<Connection> {
        let unreachable = |reason: String| Error::Unreachable { endpoint: endpoint.to_string(), reason };
        let attempt = async {
            let addr = tokio::net::lookup_host(target.authority.as_str())
                .await
                .map_err(|e| unreachable(format!("resolving {}: {e}", target.authority)))?
                .next()
                .ok_or_else(|| unreachable(format!("{} resolves to no address", target.authority)))?;
            let pin = target.pin.clone().or_else(|| self.default_pin.clone());
            let (config, mismatch) = tls::client_config(pin)?;
            let connecting = self
                .client_endpoint(addr.is_ipv6())?
                .connect_with(config, addr, tls::SERVER_NAME)
                .map_err(|e| unreachable(e.to_string()))?;
            connecting.await.map_err(|e| match tls::take_mismatch(&mismatch) {
                Some(mismatch) => unreachable(mismatch),
                None => unreachable(e.to_string()),
            })
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(unreachable(format!("no QUIC handshake within {:?}", self.connect_timeout))),
        }
    }
}

/// A client of one `quic://` endpoint.
pub(crate) struct QuicClient {
    pub(crate) dialer: Arc<Dialer>,
    pub(crate) endpoint: String,
    pub(crate) target: Target,
    pub(crate) limit: usize,
}

impl QuicClient {
    /// Opens a call's stream and sends its method byte.
    async fn open(&self, method: u8) -> Result<(SendStream, RecvStream)> {
        let connection = self.dialer.connection(&self.endpoint, &self.target).await?;
        let (mut send, recv) = connection.open_bi().await.map_err(|e| connection_lost(&self.endpoint, &e))?;
        send.write_all(&[method]).await.map_err(|e| write_error(&self.endpoint, &e))?;
        Ok((send, recv))
    }

    async fn unary<Q: Outgoing, R: prost::Message + Default + 'static>(
        &self,
        method: u8,
        request: Q,
    ) -> Result<MessageStream<R>> {
        let chunks = encode_frame(request, self.limit)?;
        let (send, recv) = self.open(method).await?;
        let mut send = Send(send);
        send.write_chunks(chunks, &self.endpoint).await?;
        let _ = send.0.finish();
        Ok(response_stream(recv, self.limit, self.endpoint.clone(), None))
    }
}

#[async_trait]
impl AveragingClient for QuicClient {
    async fn rpc_join_group(&self, request: JoinRequest) -> Result<MessageStream<MessageFromLeader>> {
        self.unary(METHOD_JOIN, request).await
    }

    async fn rpc_aggregate_part(
        &self,
        requests: RequestStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let (send, recv) = self.open(METHOD_AGGREGATE).await?;
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let (failed_tx, failed_rx) = oneshot::channel();
        tokio::spawn(pump_requests(send, requests, self.limit, cancel_rx, failed_tx));
        Ok(response_stream(
            recv,
            self.limit,
            self.endpoint.clone(),
            Some(Pump { _cancel: cancel_tx, failed: Some(failed_rx) }),
        ))
    }

    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>> {
        self.unary(METHOD_DOWNLOAD, request).await
    }
}

/// The reply stream's link to the request pump of `rpc_aggregate_part`.
struct Pump {
    /// Dropped with the reply stream (or at its end): the pump resets its stream and drops the
    /// caller's request stream.
    _cancel: oneshot::Sender<()>,
    /// The pump's report of a request over the cap.
    failed: Option<oneshot::Receiver<Error>>,
}

/// Sends the caller's requests until they end (finish), the reply stream goes away (reset), the
/// server stops reading, or a request is over the cap (reset, reported on `failed`).
async fn pump_requests(
    mut send: SendStream,
    mut requests: RequestStream<AveragingData>,
    limit: usize,
    mut cancel: oneshot::Receiver<()>,
    failed: oneshot::Sender<Error>,
) {
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut cancel => {
                let _ = send.reset(CODE_CANCELLED);
                return;
            }
            _ = &mut stopped => return,
            next = requests.next() => next,
        };
        let Some(message) = next else {
            drop(requests);
            let _ = send.finish();
            return;
        };
        let mut chunks = match encode_frame(message, limit) {
            Ok(chunks) => chunks,
            Err(e) => {
                drop(requests);
                let _ = failed.send(e);
                let _ = send.reset(CODE_TOO_LARGE);
                return;
            }
        };
        tokio::select! {
            biased;
            _ = &mut cancel => {
                let _ = send.reset(CODE_CANCELLED);
                return;
            }
            written = send.write_all_chunks(&mut chunks) => if written.is_err() { return },
        }
    }
}

/// The caller's reply stream: frames read from `recv` until the server finishes (clean end), sends
/// an error frame, or the stream fails. Dropping it stops the stream (the server's handler is
/// dropped) and cancels the request pump.
fn response_stream<R: prost::Message + Default + 'static>(
    recv: RecvStream,
    limit: usize,
    peer: String,
    pump: Option<Pump>,
) -> MessageStream<R> {
    struct State {
        recv: Recv,
        limit: usize,
        peer: String,
        pump: Option<Pump>,
    }
    async fn pump_failure(pump: &mut Option<Pump>) -> Error {
        if let Some(rx) = pump.as_mut().and_then(|p| p.failed.as_mut()) {
            let received = rx.await;
            if let Some(p) = pump.as_mut() {
                p.failed = None;
            }
            if let Ok(e) = received {
                return e;
            }
        }
        std::future::pending().await
    }
    let state = State { recv: Recv(recv), limit, peer, pump };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        let read = tokio::select! {
            biased;
            e = pump_failure(&mut state.pump) => Err(e),
            read = read_frame(&mut state.recv, state.limit, true, &state.peer) => read,
        };
        match read {
            Ok(Frame::Message(bytes)) => match decode::<R>(bytes, &state.peer) {
                Ok(message) => Some((Ok(message), Some(state))),
                Err(e) => Some((Err(e), None)),
            },
            // The server ends its replies when our reset reaches it; the pump reported the
            // oversize request before resetting, so a clean end may still owe the caller that error.
            Ok(Frame::End | Frame::Closed) => {
                match state.pump.as_mut().and_then(|p| p.failed.as_mut()).map(|rx| rx.try_recv()) {
                    Some(Ok(e)) => Some((Err(e), None)),
                    _ => None,
                }
            }
            Ok(Frame::Failure(e)) | Err(e) => Some((Err(e), None)),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller that gives up mid-handshake leaves the handshake running, and the next caller for
    /// that endpoint joins it instead of starting another.
    #[tokio::test]
    async fn a_handshake_outlives_a_caller_that_gave_up() {
        let dialer = Arc::new(Dialer::new(Duration::from_secs(60), None));
        // Nothing answers on the discard port, so the handshake stays under way.
        let endpoint = "quic://127.0.0.1:9";
        let target = parse_endpoint(endpoint).expect("a valid endpoint");
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), dialer.connection(endpoint, &target)).await;
        assert!(gave_up.is_err(), "the dial cannot have finished");
        let first = match dialer.connections.lock().unwrap_or_else(PoisonError::into_inner).get(endpoint) {
            Some(Slot::Dialing(dialing)) => dialing.clone(),
            _ => panic!("the handshake was dropped with its caller"),
        };
        let second = Arc::clone(&dialer);
        let target2 = target.clone();
        let waiting = tokio::spawn(async move { second.connection(endpoint, &target2).await });
        tokio::task::yield_now().await;
        match dialer.connections.lock().unwrap_or_else(PoisonError::into_inner).get(endpoint) {
            Some(Slot::Dialing(dialing)) => assert!(dialing.ptr_eq(&first), "a second handshake was started"),
            _ => panic!("the shared handshake disappeared"),
        }
        waiting.abort();
    }
}
