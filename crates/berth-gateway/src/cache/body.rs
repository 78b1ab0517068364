//! Response bodies of cache misses: read into memory up to the per-entry limit so the response can be
//! stored, or, past the limit (or the deadline, or at trailers), handed on as what was read followed by the
//! rest of the stream, so a large body streams through uncached.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::upstream::UpstreamBody;

/// What reading a body into memory gave.
pub(crate) enum Buffered {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Not storable (over the limit, too slow, or with trailers): what was read and the rest.
    Partial(Spliced),
}

/// A body that was partly read: the bytes read so far, then the rest of the replica's stream, then trailers.
pub(crate) struct Spliced {
    prefix: Option<Bytes>,
    rest: Option<UpstreamBody>,
    trailers: Option<HeaderMap>,
}

/// Reads `body` until it ends, passes `limit` bytes, or `deadline` passes.
pub(crate) async fn buffer(mut body: UpstreamBody, limit: usize, deadline: Instant) -> std::io::Result<Buffered> {
    if body.size_hint().lower() > limit as u64 {
        return Ok(Buffered::Partial(Spliced { prefix: None, rest: Some(body), trailers: None }));
    }
    let mut read = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
            Ok(frame) => frame,
            Err(_) => {
                return Ok(Buffered::Partial(Spliced {
                    prefix: Some(read.freeze()),
                    rest: Some(body),
                    trailers: None,
                }));
            }
        };
        let Some(frame) = frame.transpose()? else { return Ok(Buffered::Complete(read.freeze())) };
        match frame.into_data() {
            Ok(data) => {
                read.extend_from_slice(&data);
                if read.len() > limit {
                    let prefix = Some(read.freeze());
                    return Ok(Buffered::Partial(Spliced { prefix, rest: Some(body), trailers: None }));
                }
            }
            Err(frame) => {
                let trailers = frame.into_trailers().ok();
                return Ok(Buffered::Partial(Spliced { prefix: Some(read.freeze()), rest: None, trailers }));
            }
        }
    }
}

impl Body for Spliced {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take().filter(|prefix| !prefix.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(rest) = &mut this.rest {
            match Pin::new(rest).poll_frame(cx) {
                Poll::Ready(None) => this.rest = None,
                other => return other,
            }
        }
        Poll::Ready(this.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_ref().is_none_or(Bytes::is_empty)
            && self.rest.as_ref().is_none_or(UpstreamBody::is_end_stream)
            && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |prefix| prefix.len() as u64);
        let rest = self.rest.as_ref().map_or_else(|| SizeHint::with_exact(0), UpstreamBody::size_hint);
        let mut res = SizeHint::new();
        res.set_lower(rest.lower() + prefix);
        if let Some(upper) = rest.upper() {
            res.set_upper(upper + prefix);
        }
        res
    }
}
