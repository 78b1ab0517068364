//! Deploy events to an operator's webhook: every event but build/test output, POSTed as JSON in order,
//! best effort (a slow or failing receiver delays nothing but its own deliveries).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tracing::warn;

use crate::wire::DeployEventView;

/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Where deploy events go: an `http://host:port/path` URL.
#[derive(Debug, Clone)]
pub struct Webhook {
    uri: http::Uri,
}

impl Webhook {
    /// Accepts an `http://` URL with a host; says what is wrong otherwise.
    pub fn parse(url: &str) -> Result<Webhook, String> {
        let uri: http::Uri = url.parse().map_err(|error| format!("`{url}` is not a URL: {error}"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(format!("`{url}` is not an http:// URL with a host (HTTPS webhooks are not supported yet)"));
        }
        Ok(Webhook { uri })
    }

    /// A sender whose events are delivered in order by one task.
    pub(crate) fn sender(&self) -> mpsc::UnboundedSender<DeployEventView> {
        let (tx, mut rx) = mpsc::unbounded_channel::<DeployEventView>();
        let uri = self.uri.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if matches!(event, DeployEventView::Output { .. }) {
                    continue;
                }
                let body = serde_json::to_vec(&event).unwrap_or_default();
                match tokio::time::timeout(TIMEOUT, post(&uri, body)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => warn!(webhook = %uri, error = %error, "deploy webhook failed"),
                    Err(_) => warn!(webhook = %uri, "deploy webhook timed out after {TIMEOUT:?}"),
                }
            }
        });
        tx
    }
}

async fn post(uri: &http::Uri, body: Vec<u8>) -> Result<(), String> {
    let authority = uri.authority().ok_or("no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port)).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("answered {}", res.status()));
    }
    Ok(())
}
