//! A minimal HTTP/1.1 endpoint for Prometheus scrapes: `GET /metrics` (or `/`) answers the text,
//! anything else 404 or 405, and every connection is closed after one answer.
//!
//! Hand-written rather than a web framework: it answers one kind of request, and a scrape is
//! rare. Each connection may send at most [`MAX_REQUEST_BYTES`] within [`REQUEST_TIMEOUT`] and at
//! most [`MAX_CONNECTIONS`] are served at once, so a slow or hostile client costs bounded memory
//! and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Metrics;
use crate::Result;
use crate::failure::Context;

/// The most bytes of request head read before answering.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listener's backlog.
const MAX_CONNECTIONS: usize = 16;

/// Binds `addr` and serves `metrics` until the returned task is aborted; returns the bound address
/// (the real port when `addr` asked for port 0).
///
/// # Errors
/// When `addr` cannot be bound.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await.context(format!("binding --metrics {addr}"))?;
    let bound = listener.local_addr().context("the metrics listener's address")?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics)).await;
            });
        }
    });
    Ok((bound, task))
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_BYTES {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "too large\n")
                .await;
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET /metrics\n").await;
    }
    match path {
        "/metrics" | "/" => {
            let text = metrics.encode();
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &text,
            )
            .await
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "GET /metrics\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn answers_a_scrape_and_refuses_the_rest() {
        let metrics = Metrics::new();
        metrics.state_download("none");
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), metrics).await.unwrap();
        let scrape = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
        assert!(scrape.contains("averager_state_downloads_total{outcome=\"none\"} 1"), "{scrape}");
        assert!(get(addr, "GET /other HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        task.abort();
    }
}
