//! Gateway errors and their HTTP answers, in one place.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{Either, Full};

use crate::proxy::ResBody;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// Downstream: no service is routed for the request's host.
    #[error("no service is routed for this host")]
    NoRoute,
    /// Upstream: no replica is in rotation (or every one was tried).
    #[error("no replica of `{service}` is available")]
    NoUpstream { service: String },
    /// Upstream: the replica failed (refused, reset, gateway error) and no retry was left.
    #[error("replica failed: {0}")]
    Upstream(String),
    #[error("the replica did not answer in time")]
    Timeout,
    /// Downstream: the body is larger than the gateway accepts.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// Downstream: a request the gateway will not forward.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

impl ProxyError {
    pub(crate) fn into_response(self) -> Response<ResBody> {
        let status = match &self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoUpstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        };
        let mut res = Response::new(Either::Right(Full::new(Bytes::from(format!("{self}\n")))));
        *res.status_mut() = status;
        res.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Answer at once instead of queueing; tell the client when to come back.
            res.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        }
        res
    }
}
