//! The CLI's client of the daemon's control API: finds the daemon through its state dir, authenticates
//! with the token there, and speaks HTTP/1.1 over loopback.

use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_api::wire::{DaemonInfo, ErrorBody};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use super::error::user;

pub struct Client {
    pub info: DaemonInfo,
    token: String,
    state_dir: PathBuf,
}

impl Client {
    pub fn connect(state_dir: &Path) -> anyhow::Result<Client> {
        let info = read_daemon_info(state_dir)?.ok_or_else(|| {
            user(
                format!("no berth daemon is running for state dir {}", state_dir.display()),
                "start one with `berth up DIR`, or pass the daemon's --state-dir",
            )
        })?;
        let token_path = state_dir.join("token");
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| format!("failed to read the API token {}", token_path.display()))?;
        Ok(Client { info, token: token.trim().to_owned(), state_dir: state_dir.to_path_buf() })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let res = self.send(http::Method::GET, path, None).await?;
        decode(res).await
    }

    pub async fn post(&self, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<()> {
        let res = self.send(http::Method::POST, path, body).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await.context("failed to read the daemon's answer")?.to_bytes();
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(())
    }

    /// POSTs `body` and decodes the JSON answer.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let res = self.send(http::Method::DELETE, path, None).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await.context("failed to read the daemon's answer")?.to_bytes();
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(())
    }

    pub async fn post_json<T: DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> anyhow::Result<T> {
        let res = self.send(http::Method::POST, path, Some(body)).await?;
        decode(res).await
    }

    /// Streams a response body, calling `on_chunk` for every piece as it arrives.
    pub async fn stream(&self, path: &str, on_chunk: impl FnMut(&[u8]) -> bool) -> anyhow::Result<()> {
        self.stream_request(http::Method::GET, path, None, on_chunk).await
    }

    /// Sends a request and streams the answer's body to `on_chunk` (which returns `false` to stop reading).
    pub async fn stream_request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
        mut on_chunk: impl FnMut(&[u8]) -> bool,
    ) -> anyhow::Result<()> {
        let res = self.send(method, path, body).await?;
        let status = res.status();
        let mut body = res.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.context("failed to read the daemon's answer")?.to_bytes();
            return Err(api_error(status, &bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the daemon closed the stream")?;
            if let Some(data) = frame.data_ref()
                && !on_chunk(data)
            {
                break;
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let stream = TcpStream::connect(self.info.api).await.map_err(|error| {
            user(
                format!("cannot reach the berth daemon at {}: {error}", self.info.api),
                format!(
                    "the daemon may have died; start it again with `berth up` (state dir {})",
                    self.state_dir.display()
                ),
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("failed to talk HTTP to the daemon")?;
        tokio::spawn(conn);
        let body = match body {
            Some(value) => Bytes::from(serde_json::to_vec(&value)?),
            None => Bytes::new(),
        };
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.info.api.to_string())
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        sender.send_request(req).await.context("the daemon did not answer")
    }
}

/// The daemon's address, if one has announced itself in `state_dir`.
pub fn read_daemon_info(state_dir: &Path) -> anyhow::Result<Option<DaemonInfo>> {
    let path = state_dir.join("daemon.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("failed to parse {}", path.display()))?))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("failed to read {}", path.display())),
    }
}

async fn decode<T: DeserializeOwned>(res: hyper::Response<Incoming>) -> anyhow::Result<T> {
    let status = res.status();
    let bytes = res.into_body().collect().await.context("failed to read the daemon's answer")?.to_bytes();
    if !status.is_success() {
        return Err(api_error(status, &bytes));
    }
    serde_json::from_slice(&bytes).context("the daemon's answer is not what this CLI expects (version mismatch?)")
}

fn api_error(status: http::StatusCode, body: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error, hint: Some(hint) }) => user(error, hint),
        Ok(ErrorBody { error, hint: None }) => anyhow::anyhow!("{error}"),
        Err(_) => anyhow::anyhow!("the daemon answered {status}: {}", String::from_utf8_lossy(body)),
    }
}
