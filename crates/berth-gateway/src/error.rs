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
    /// Upstream: the dedicated pool a rate limit sends this key to has no replica in rotation. There is no
    /// fallback to the shared replicas: keeping the pool's load off them is the point of the pool.
    #[error("no replica of pool `{pool}` of `{service}` is available")]
    NoPoolUpstream { service: String, pool: String },
    /// Downstream: the route's rate limit refused the request's key (never reaches a replica).
    #[error("{0}")]
    RateLimited(Box<crate::ratelimit::Rejection>),
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
    /// The status the client gets for this error.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoUpstream { .. } | ProxyError::NoPoolUpstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// What the client is told. A replica's failure stays in the gateway's log: its detail names the
    /// replica's address and what it did wrong, which is nobody's business outside.
    fn client_text(&self) -> String {
        match self {
            ProxyError::Upstream(_) => "replica failed\n".to_owned(),
            other => format!("{other}\n"),
        }
    }

    pub(crate) fn into_response(self) -> Response<ResBody> {
        let status = self.status();
        let mut res = Response::new(Either::Right(Full::new(Bytes::from(self.client_text()))));
        *res.status_mut() = status;
        res.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Answer at once instead of queueing; tell the client when to come back.
            res.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        }
        if let ProxyError::RateLimited(rejection) = &self {
            rejection.write_fields(res.headers_mut());
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_replicas_failure_reaches_the_client_without_its_detail() {
        let error = ProxyError::Upstream("HTTP/1.1 to 10.0.0.7:8081: bad response head: invalid header name".into());
        let res = error.into_response();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        let body = res.into_body().collect().await.expect("a whole body").to_bytes();
        assert_eq!(body, "replica failed\n");
        let limit = ProxyError::BodyTooLarge { limit: 1024 }.into_response().into_body().collect().await;
        assert_eq!(limit.expect("a whole body").to_bytes(), "request body larger than 1024 bytes\n");
    }
}
