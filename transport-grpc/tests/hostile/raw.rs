//! A raw HTTP/2 caller (the h2 crate) that writes gRPC frames by hand, so a test can send what an
//! honest `GrpcTransport` never would.

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use tokio::net::TcpStream;

/// `rpc_join_group`'s path.
pub(crate) const JOIN: &str = "/DecentralizedAveraging/rpc_join_group";
/// `rpc_aggregate_part`'s path.
pub(crate) const AGGREGATE: &str = "/DecentralizedAveraging/rpc_aggregate_part";
/// `rpc_download_state`'s path.
pub(crate) const DOWNLOAD: &str = "/DecentralizedAveraging/rpc_download_state";

/// gRPC status codes the tests expect.
pub(crate) const DEADLINE_EXCEEDED: u32 = 4;
/// The status of a message over the cap.
pub(crate) const OUT_OF_RANGE: u32 = 11;
/// The status of a path nobody serves.
pub(crate) const UNIMPLEMENTED: u32 = 12;

/// How a raw call ended, as the caller saw it.
#[derive(Debug)]
pub(crate) enum End {
    /// A gRPC status, from the trailers or a trailers-only response.
    Status { code: u32, message: String },
    /// The HTTP/2 stream or connection failed.
    Broken(String),
}

impl End {
    /// The status code and message; panics on a broken stream.
    pub(crate) fn status(&self) -> (u32, &str) {
        match self {
            End::Status { code, message } => (*code, message),
            End::Broken(reason) => panic!("expected a gRPC status, the stream broke: {reason}"),
        }
    }
}

/// An HTTP/2 connection to the server of `endpoint` (`grpc://host:port`).
pub(crate) async fn connect(endpoint: &str) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(endpoint.trim_start_matches("grpc://")).await.expect("a TCP connection");
    let (client, connection) = h2::client::handshake(tcp).await.expect("the HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Starts a call to `path` and sends `body` as its request data; ends the request when `end`.
pub(crate) async fn call(
    client: &SendRequest<Bytes>,
    path: &str,
    body: Vec<u8>,
    end: bool,
) -> (ResponseFuture, h2::SendStream<Bytes>) {
    let request = http::Request::post(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a request");
    let mut client = client.clone().ready().await.expect("the connection takes a stream");
    let (response, mut send) = client.send_request(request, false).expect("a stream");
    if !body.is_empty() || end {
        send.send_data(Bytes::from(body), end).expect("the request data");
    }
    (response, send)
}

/// A gRPC frame: no compression, a `u32` big-endian length, then `body`.
pub(crate) fn frame(len: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0];
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// Reads the response to its end.
pub(crate) async fn end(response: ResponseFuture) -> End {
    let response = match response.await {
        Ok(response) => response,
        Err(e) => return End::Broken(e.to_string()),
    };
    let (head, mut body) = response.into_parts();
    if let Some(end) = status_in(&head.headers) {
        return end;
    }
    while let Some(data) = body.data().await {
        match data {
            Ok(data) => {
                let _ = body.flow_control().release_capacity(data.len());
            }
            Err(e) => return End::Broken(e.to_string()),
        }
    }
    match body.trailers().await {
        Ok(Some(trailers)) => status_in(&trailers)
            .unwrap_or_else(|| End::Broken(format!("trailers without grpc-status: {trailers:?}"))),
        Ok(None) => End::Broken("no trailers".into()),
        Err(e) => End::Broken(e.to_string()),
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<End> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message =
        headers.get("grpc-message").and_then(|m| m.to_str().ok()).map(percent_decoded).unwrap_or_default();
    Some(End::Status { code, message })
}

/// gRPC percent-encodes its status messages.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A hostile server on a free port: answers every call with response headers, `reply` as its
/// data, and an OK status. Returns its endpoint; it serves until the runtime ends.
pub(crate) async fn hostile_server(reply: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a listener");
    let address = listener.local_addr().expect("an address");
    let reply = Bytes::from(reply);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else { return };
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    let response = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(())
                        .expect("a response");
                    let Ok(mut send) = respond.send_response(response, false) else { continue };
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let _ = send.send_data(reply.clone(), false);
                    let _ = send.send_trailers(trailers);
                }
            });
        }
    });
    format!("grpc://{address}")
}
