//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics` (text format 0.0.4) and
//! `GET /health` (200 "ok"). Hand-rolled on tokio: one request per connection, bounded
//! request head, no keep-alive, no dependencies.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::state::Broker;

/// Largest request head read; anything longer is refused.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A client that does not send its request head within this is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves metrics on `listener` until `stop` turns true.
pub async fn serve_metrics(
    broker: Arc<Broker>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(handle(Arc::clone(&broker), stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn handle(broker: Arc<Broker>, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD_BYTES {
                return Ok(false);
            }
        }
    })
    .await;
    if !matches!(read, Ok(Ok(true))) {
        let _ = respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            b"bad request\n",
        )
        .await;
        return;
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let b = Arc::clone(&broker);
            match tokio::task::spawn_blocking(move || crate::metrics::render(&b)).await {
                Ok(body) => {
                    let _ = respond(
                        &mut stream,
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        body.as_bytes(),
                    )
                    .await;
                }
                Err(_) => {
                    let _ = respond(
                        &mut stream,
                        "500 Internal Server Error",
                        "text/plain",
                        b"error\n",
                    )
                    .await;
                }
            }
        }
        ("GET", "/health") => {
            let _ = respond(&mut stream, "200 OK", "text/plain", b"ok\n").await;
        }
        ("GET", _) => {
            let _ = respond(&mut stream, "404 Not Found", "text/plain", b"not found\n").await;
        }
        _ => {
            let _ = respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                b"GET only\n",
            )
            .await;
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
