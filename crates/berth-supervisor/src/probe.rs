//! HTTP health probes: one fresh connection per probe, the whole exchange under one timeout.
//!
//! A fresh connection is deliberate: a hung process keeps its listening socket, so the kernel still accepts
//! the connection; only the timeout on the answer catches it.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeOutcome {
    Healthy,
    Failed(String),
}

impl ProbeOutcome {
    pub(crate) fn describe(&self) -> String {
        match self {
            ProbeOutcome::Healthy => "ok".to_owned(),
            ProbeOutcome::Failed(detail) => detail.clone(),
        }
    }
}

pub(crate) async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> ProbeOutcome {
    match tokio::time::timeout(timeout, exchange(addr, path)).await {
        Ok(Ok(status)) if (200..400).contains(&status) => ProbeOutcome::Healthy,
        Ok(Ok(status)) => ProbeOutcome::Failed(format!("status {status}")),
        Ok(Err(error)) => ProbeOutcome::Failed(error),
        Err(_) => ProbeOutcome::Failed(format!("timeout after {}ms", timeout.as_millis())),
    }
}

async fn exchange(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let stream = TcpStream::connect(addr).await.map_err(|error| format!("connect: {}", error.kind()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    // The connection task ends with the probe: dropping `sender` closes it.
    let conn = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "berth-probe")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|error| format!("bad probe request: {error}"))?;
    let res = sender.send_request(req).await.map_err(|error| format!("request: {error}"));
    conn.abort();
    Ok(res?.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn server(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("bound socket has an address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    if !answer.is_empty() {
                        let _ = stream.write_all(answer.as_bytes()).await;
                    }
                    // An empty answer holds the connection open: a hung replica.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn classifies_answers() {
        let ok = server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!(probe(ok, "/healthz", Duration::from_secs(2)).await, ProbeOutcome::Healthy);
        let bad = server("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(probe(bad, "/healthz", Duration::from_secs(2)).await, ProbeOutcome::Failed("status 500".into()));
        let hung = server("").await;
        assert_eq!(
            probe(hung, "/healthz", Duration::from_millis(200)).await,
            ProbeOutcome::Failed("timeout after 200ms".into())
        );
    }

    #[tokio::test]
    async fn refused_connection_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound socket has an address");
        drop(listener);
        let outcome = probe(addr, "/", Duration::from_secs(1)).await;
        assert!(matches!(outcome, ProbeOutcome::Failed(ref d) if d.starts_with("connect")), "{outcome:?}");
    }
}
