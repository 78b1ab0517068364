//! The access log: one structured event per request (target `berth::access`), off by default.
//!
//! Events go through `tracing`, so the daemon's `--log-format json` makes them JSON lines and `RUST_LOG`
//! can route or silence them (`RUST_LOG=info,berth::access=off`). Nothing is formatted when the log is off.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request, Response, Uri};

use crate::headers::{X_REQUEST_ID, request_host};

/// What the access log needs from the request, captured before the request is consumed.
pub(crate) struct AccessRequest {
    method: Method,
    uri: Uri,
    host: String,
    client: SocketAddr,
}

/// Where the gateway sent a request: the service and route prefix, if it found one.
pub(crate) struct Destination<'a> {
    pub(crate) service: &'a str,
    pub(crate) route: &'a str,
}

impl AccessRequest {
    pub(crate) fn new<B>(req: &Request<B>, client: SocketAddr) -> AccessRequest {
        AccessRequest {
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: request_host(req.uri(), req.headers()).unwrap_or("").to_owned(),
            client,
        }
    }

    pub(crate) fn log<B>(self, destination: Option<Destination<'_>>, res: &Response<B>, elapsed: Duration) {
        let text = |value: Option<&http::HeaderValue>| value.and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        tracing::info!(
            target: "berth::access",
            client = %self.client.ip(),
            method = %self.method,
            host = self.host,
            path = self.uri.path_and_query().map_or("/", |p| p.as_str()),
            status = res.status().as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            service = destination.as_ref().map_or("", |d| d.service),
            route = destination.as_ref().map_or("", |d| d.route),
            request_id = text(res.headers().get(X_REQUEST_ID)),
            cache = text(res.headers().get("x-cache")),
            "access"
        );
    }
}
