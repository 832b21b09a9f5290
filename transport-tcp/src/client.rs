//! The calling side: endpoint parsing, and one TCP connection per call. `connect` dials at once
//! (so an unreachable peer fails there) and keeps that connection for the client's first call,
//! which is the only call most clients make.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use averager_core::transport::frame::{
    FrameWrite, Hold, Outgoing, Pump, ReadBudget, encode_frame, pump_requests, reply_stream,
};
use averager_core::transport::{
    AveragingClient, AveragingData, DownloadData, DownloadRequest, JoinRequest, MessageFromLeader,
    MessageStream, RequestStream, split_endpoint,
};
use averager_core::{Error, Result};
use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::io::{METHOD_AGGREGATE, METHOD_DOWNLOAD, METHOD_JOIN, Recv, Send};

/// The scheme this crate serves and dials.
pub(crate) const SCHEME: &str = "tcp";

/// How long a connection dialed by `connect` waits for the first call before the client dials a
/// fresh one instead: well inside any sensible `first_request_timeout` of the server, which
/// closes a connection that stays silent.
const SPARE_MAX_AGE: Duration = Duration::from_secs(2);

/// Parses `tcp://host:port` into `host:port`.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<String> {
    let (scheme, authority) = split_endpoint(endpoint)?;
    if scheme != SCHEME {
        return Err(Error::Config(format!("endpoint {endpoint:?} is not a {SCHEME}:// endpoint")));
    }
    let valid = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok());
    if !valid {
        return Err(Error::Config(format!("endpoint {endpoint:?} is not tcp://host:port")));
    }
    Ok(authority.to_string())
}

/// Dials `authority` within `timeout`, with Nagle's algorithm off: a call's small frames (an end
/// frame, a join request) must not wait for an acknowledgement of the previous write.
pub(crate) async fn dial(endpoint: &str, authority: &str, timeout: Duration) -> Result<TcpStream> {
    let unreachable = |reason: String| Error::Unreachable { endpoint: endpoint.to_string(), reason };
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable(format!("no TCP connection within {timeout:?}"))),
    };
    stream.set_nodelay(true).map_err(|e| unreachable(format!("setting TCP_NODELAY: {e}")))?;
    crate::io::tune_same_host(&stream);
    Ok(stream)
}

/// A client of one `tcp://` endpoint.
pub(crate) struct TcpClient {
    pub(crate) endpoint: String,
    pub(crate) authority: String,
    pub(crate) limit: usize,
    pub(crate) connect_timeout: Duration,
    /// The transport's budget for frames read at their announced size.
    pub(crate) budget: ReadBudget,
    /// The transport's cap on each part stream's rate.
    pub(crate) rate: crate::io::StreamRateLimit,
    /// The connection `connect` dialed, for the first call.
    pub(crate) spare: Mutex<Option<(TcpStream, Instant)>>,
}

impl TcpClient {
    /// A connection for a call: the spare one if it is fresh and the server has not closed it,
    /// otherwise a new one.
    async fn connection(&self) -> Result<TcpStream> {
        let spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((stream, dialed)) = spare
            && dialed.elapsed() < SPARE_MAX_AGE
        {
            // The server sends nothing before the call's first request: anything readable (its
            // close, a timeout's error frame) means the connection is no longer usable.
            let mut probe = [0u8; 1];
            if matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
                return Ok(stream);
            }
        }
        dial(&self.endpoint, &self.authority, self.connect_timeout).await
    }

    /// Opens a call: a connection, its method byte sent with `first` (the request of a unary
    /// call), in one write.
    async fn open(&self, method: u8, first: Vec<Bytes>) -> Result<(Recv, Send)> {
        let stream = self.connection().await?;
        if method == METHOD_AGGREGATE {
            self.rate.apply(&stream);
        }
        let (recv, send) = stream.into_split();
        let mut send = Send(send);
        let mut chunks = Vec::with_capacity(first.len() + 1);
        chunks.push(Bytes::from_static(match method {
            METHOD_JOIN => &[METHOD_JOIN],
            METHOD_AGGREGATE => &[METHOD_AGGREGATE],
            _ => &[METHOD_DOWNLOAD],
        }));
        chunks.extend(first);
        send.write_chunks(chunks, &self.endpoint).await?;
        Ok((Recv(recv, self.budget.clone()), send))
    }

    async fn unary<Q: Outgoing, R: prost::Message + Default + 'static>(
        &self,
        method: u8,
        request: Q,
    ) -> Result<MessageStream<R>> {
        let chunks = encode_frame(request, self.limit)?;
        let (recv, send) = self.open(method, chunks).await?;
        // The write half stays open: its close would read, on the server, as the caller going
        // away. It is dropped with the reply stream.
        Ok(reply_stream(recv, self.limit, self.endpoint.clone(), Hold::Unary(send), CLOSED))
    }
}

#[async_trait]
impl AveragingClient for TcpClient {
    async fn rpc_join_group(&self, request: JoinRequest) -> Result<MessageStream<MessageFromLeader>> {
        self.unary(METHOD_JOIN, request).await
    }

    async fn rpc_aggregate_part(
        &self,
        requests: RequestStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        let (recv, send) = self.open(METHOD_AGGREGATE, Vec::new()).await?;
        let (cancel, cancelled) = oneshot::channel();
        let (failed_tx, failed) = oneshot::channel();
        tokio::spawn(pump_requests(send, requests, self.limit, self.endpoint.clone(), cancelled, failed_tx));
        let pump = Pump::new(cancel, failed);
        Ok(reply_stream(recv, self.limit, self.endpoint.clone(), Hold::<()>::Pump(pump), CLOSED))
    }

    async fn rpc_download_state(&self, request: DownloadRequest) -> Result<MessageStream<DownloadData>> {
        self.unary(METHOD_DOWNLOAD, request).await
    }
}

/// What a reply stream's error says when the stream closes before the call ended.
const CLOSED: &str = "the connection closed before the call ended (the peer stopped serving or went away)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_to_their_authority() {
        assert_eq!(parse_endpoint("tcp://127.0.0.1:80").ok().as_deref(), Some("127.0.0.1:80"));
        assert_eq!(parse_endpoint("tcp://[::1]:7").ok().as_deref(), Some("[::1]:7"));
        assert_eq!(parse_endpoint("tcp://example.org:443").ok().as_deref(), Some("example.org:443"));
        for bad in ["tcp://127.0.0.1", "tcp://:5", "tcp://h:99999", "quic://h:1", "h:1", "tcp://a/b:1"] {
            assert!(matches!(parse_endpoint(bad), Err(Error::Config(_))), "{bad}");
        }
    }
}
