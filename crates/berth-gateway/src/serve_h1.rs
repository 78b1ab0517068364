//! Plain HTTP/1.1 client connections, served without hyper for the common request, handed to hyper for
//! everything else.
//!
//! A request is served here when its head is plain HTTP/1.1 that httparse accepts as it is: not `CONNECT`,
//! no `Transfer-Encoding`, `Upgrade`, `Expect` or `TE`, at most one `Content-Length`, a head within the
//! limit, and a body small enough to replay that has already arrived whole. Anything else (HTTP/1.0, the
//! HTTP/2 preface, upgrades, chunked or large uploads, every malformed or oversize head) is left where it
//! is: the connection, with the bytes read so far in front of it, goes to hyper and the framing guard for
//! the rest of its life, so that hyper's answers and checks (400, 431, the smuggling guard) stay the only
//! ones. What this side takes from hyper's behaviour: the header-read timeout runs from the moment a head
//! is awaited (an idle keep-alive connection is closed after it too), a client that closes its side while
//! its request is being served cancels the request, a response without a known length is chunked, and a
//! `Date` is added when the response has none.
//!
//! Why not hyper for these too: the gateway's own work per request is small, and hyper's server side (its
//! dispatcher, buffered IO, a timer per head, the response encoder) was about a third of the instructions
//! a proxied request costs; see `docs/benchmarks.md`.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Empty, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::io::poll_read_buf;

use crate::headers::list_tokens;
use crate::proxy::ClientBody;
use crate::upstream::h1::{ReplicaFields, write_field};

/// What this side accepts; anything beyond goes to hyper.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest head served here (hyper's own limit, so that hyper answers 431 past it).
    pub(crate) max_head: usize,
    /// Largest body served here (the replay buffer, and never past the body limit).
    pub(crate) max_body: u64,
    pub(crate) header_read_timeout: Duration,
}

/// How a connection left this side.
pub(crate) enum Ended {
    Closed,
    /// For hyper: the connection, and what was read of it and not served.
    Handover(TcpStream, Bytes),
}

/// Header fields a head may have to be served here (hyper's default limit; more go to hyper, which answers
/// 431).
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// Body chunks up to this size are copied behind the head and written with it; larger ones go out as
/// they are, in the same `writev`.
const COPY_BELOW: usize = 16 * 1024;

/// A response body that may carry its replica's header fields as read, to be written ahead of the
/// response's map (`proxy::handle_keeping_fields`).
pub(crate) trait CarriesFields {
    fn take_fields(&mut self) -> Option<Box<ReplicaFields>>;
}

/// Serves requests on `stream` with `handle` until the connection closes or needs hyper.
pub(crate) async fn serve<H, F, B>(stream: TcpStream, limits: Limits, mut handle: H) -> Ended
where
    H: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + CarriesFields,
{
    let mut conn = Conn { stream, buf: BytesMut::new(), out: Vec::new(), spare_headers: None, timer: None, limits };
    loop {
        let Head { req, close } = match conn.next_request().await {
            Ok(head) => head,
            Err(Stop::Closed) => return Ended::Closed,
            Err(Stop::Handover) => return Ended::Handover(conn.stream, conn.buf.freeze()),
        };
        let head_only = req.method() == Method::HEAD;
        // Made in place: a request's future is large, and moving it costs more than the rest of this side.
        let fut = pin!(handle(req));
        let Some(Ok(res)) = conn.run(fut).await else { return Ended::Closed };
        match conn.respond(res, head_only, close).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = conn.stream.shutdown().await;
                return Ended::Closed;
            }
            Err(_) => return Ended::Closed,
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Read from the client and not yet taken as a request.
    buf: BytesMut,
    /// The response head (and small body chunks) being written.
    out: Vec<u8>,
    /// The last response's header map, cleared: the next request's fields go into its allocation.
    spare_headers: Option<HeaderMap>,
    /// The header-read deadline; made once, then moved on (moving a tokio timer later is cheap).
    timer: Option<Pin<Box<Sleep>>>,
    limits: Limits,
}

/// A request read, and whether the client asked to close after it.
struct Head {
    req: Request<ClientBody>,
    close: bool,
}

/// Why no request comes next.
enum Stop {
    Closed,
    /// The buffer starts with a request (or bytes) for hyper.
    Handover,
}

impl Conn {
    /// Reads until the buffer starts with a request served here, hyper's kind of request, or the end.
    async fn next_request(&mut self) -> Result<Head, Stop> {
        let mut deadline = None;
        loop {
            if !self.buf.is_empty() {
                match parse_request(&mut self.buf, &self.limits, &mut self.spare_headers) {
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) if self.buf.len() <= self.limits.max_head => {}
                    Ok(None) | Err(Unusual) => return Err(Stop::Handover),
                }
            }
            match self.read_more(&mut deadline).await {
                // A head cut short: hyper tells the client, as it would have.
                Some(Ok(0)) if self.buf.is_empty() => return Err(Stop::Closed),
                Some(Ok(0)) => return Err(Stop::Handover),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(Stop::Closed),
            }
        }
    }

    /// Reads what the client has sent; `None` when `deadline` (set, and the timer armed, the first time the
    /// client keeps the wait going) passes first.
    ///
    /// Reads go through `AsyncRead`, not `try_read`: after a short read tokio knows the socket is drained
    /// and the next wait costs no `recv` that only says `EAGAIN`.
    async fn read_more(&mut self, deadline: &mut Option<Instant>) -> Option<io::Result<usize>> {
        self.buf.reserve(READ_CHUNK);
        poll_fn(|cx| {
            if let Poll::Ready(read) = poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf) {
                return Poll::Ready(Some(read));
            }
            let timer = match (deadline.is_some(), &mut self.timer) {
                (true, Some(timer)) => timer,
                (_, timer) => {
                    let at = tokio::time::Instant::from_std(
                        *deadline.insert(Instant::now() + self.limits.header_read_timeout),
                    );
                    match timer {
                        Some(timer) => {
                            timer.as_mut().reset(at);
                            timer
                        }
                        None => timer.insert(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
            };
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await
    }

    /// Runs a request's future while watching the client: bytes it sends meanwhile (a pipelined request)
    /// are kept, up to a head's worth; `None` when it closes (with nothing pipelined) or fails first, which
    /// drops the future.
    async fn run<F: Future>(&mut self, mut fut: Pin<&mut F>) -> Option<F::Output> {
        let mut watching = true;
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            while watching {
                self.buf.reserve(READ_CHUNK);
                match poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf) {
                    Poll::Pending => break,
                    // The end of input after pipelined requests is the end of the pipeline, as for hyper.
                    Poll::Ready(Ok(0)) if !self.buf.is_empty() => watching = false,
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => watching = self.buf.len() <= self.limits.max_head,
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Writes a response. `Ok(true)`: the connection can take the next request.
    async fn respond<B: Body<Data = Bytes> + CarriesFields>(
        &mut self,
        res: Response<B>,
        head_only: bool,
        client_close: bool,
    ) -> io::Result<bool> {
        let (mut parts, mut body) = res.into_parts();
        let replica = body.take_fields();
        let status = parts.status;
        let has_body = !(head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED);
        let framing = match (has_body, body.size_hint().exact()) {
            (false, _) => Framing::None,
            (true, Some(length)) => Framing::Length(length),
            (true, None) => Framing::Chunked,
        };
        let close = client_close || wants_close(&parts.headers);
        encode_head(&mut self.out, &parts, replica.as_deref(), framing, client_close);
        parts.headers.clear();
        self.spare_headers = Some(parts.headers);
        let complete = match framing {
            Framing::None => {
                self.flush(None).await?;
                true
            }
            Framing::Length(_) | Framing::Chunked => self.write_body(body, framing == Framing::Chunked).await?,
        };
        Ok(complete && !close)
    }

    /// Streams `body` behind the head in `out`. `Ok(false)`: the body failed midway, and the client must
    /// see the connection end (it is never told a cut-off body is whole).
    async fn write_body<B: Body<Data = Bytes>>(&mut self, body: B, chunked: bool) -> io::Result<bool> {
        let mut body = pin!(body);
        loop {
            let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Nothing more for now: what is ready goes out while the replica sends the rest.
                    self.flush(None).await?;
                    poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => {
                    if chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.flush(None).await?;
                    return Ok(true);
                }
                Some(Err(_)) => {
                    self.flush(None).await?;
                    return Ok(false);
                }
                // Trailers are not sent over HTTP/1.1 (requests that ask for them with `TE` go to hyper).
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
            };
            if chunked {
                write_hex(&mut self.out, data.len());
                self.out.extend_from_slice(b"\r\n");
            }
            if data.len() < COPY_BELOW {
                self.out.extend_from_slice(&data);
            } else {
                self.flush(Some(data)).await?;
            }
            if chunked {
                self.out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Writes `out`, then `data`, in one `writev` when the socket takes it all.
    async fn flush(&mut self, data: Option<Bytes>) -> io::Result<()> {
        let mut chained = self.out.as_slice().chain(data.unwrap_or_default());
        while chained.has_remaining() {
            self.stream.write_buf(&mut chained).await?;
        }
        self.out.clear();
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Takes the request at the start of `buf` out of it, head and body. The read bytes are frozen first, so
/// field values and the body are slices of them, not copies; what follows goes back into the buffer.
/// `Ok(None)`: the head is not all there yet.
fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
    spare_headers: &mut Option<HeaderMap>,
) -> Result<Option<Head>, Unusual> {
    let read = buf.split().freeze();
    let parsed = parse_frozen(&read, limits, spare_headers);
    let taken = match &parsed {
        Ok(Some((_, taken))) => *taken,
        _ => 0,
    };
    buf.extend_from_slice(&read[taken..]);
    parsed.map(|parsed| parsed.map(|(head, _)| head))
}

/// A head this side leaves to hyper.
struct Unusual;

/// The request at the start of `read`, and how many bytes it took (head and body).
fn parse_frozen(
    read: &Bytes,
    limits: &Limits,
    spare_headers: &mut Option<HeaderMap>,
) -> Result<Option<(Head, usize)>, Unusual> {
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len =
        match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, read, &mut fields) {
            Ok(httparse::Status::Complete(len)) if len <= limits.max_head => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            _ => return Err(Unusual),
        };
    if parsed.version != Some(1) {
        return Err(Unusual);
    }
    let method = match parsed.method.map(|method| Method::from_bytes(method.as_bytes())) {
        Some(Ok(method)) if method != Method::CONNECT => method,
        _ => return Err(Unusual),
    };
    let Some(Ok(uri)) = parsed.path.map(|path| Uri::from_maybe_shared(read.slice_ref(path.as_bytes()))) else {
        return Err(Unusual);
    };
    let mut headers = spare_headers.take().unwrap_or_default();
    headers.reserve(parsed.headers.len());
    let mut close = false;
    let mut length = None;
    for field in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else { return Err(Unusual) };
        if name == header::CONTENT_LENGTH {
            match (length, crate::framing::digits(field.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return Err(Unusual),
            }
        } else if name == header::CONNECTION {
            for token in list_tokens(field.value) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Err(Unusual);
                }
                close |= token.eq_ignore_ascii_case(b"close");
            }
        } else if [header::TRANSFER_ENCODING, header::UPGRADE, header::EXPECT, header::TE].contains(&name) {
            return Err(Unusual);
        }
        let Ok(value) = HeaderValue::from_maybe_shared(read.slice_ref(field.value)) else { return Err(Unusual) };
        headers.append(name, value);
    }
    let body_len = length.unwrap_or(0);
    let Ok(body_len) = usize::try_from(body_len) else { return Err(Unusual) };
    if body_len as u64 > limits.max_body || read.len() - head_len < body_len {
        return Err(Unusual);
    }
    let body = match body_len {
        0 => UnsyncBoxBody::new(Empty::new().map_err(|never| match never {})),
        _ => UnsyncBoxBody::new(Full::new(read.slice(head_len..head_len + body_len)).map_err(|never| match never {})),
    };
    let mut req = Request::new(Either::Right(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(Some((Head { req, close }, head_len + body_len)))
}

fn write_hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (shift * 4)) & 0xf]);
    }
}

/// Whether a response's own `Connection` says `close`.
fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| list_tokens(value.as_bytes()).any(|token| token.eq_ignore_ascii_case(b"close")))
}

/// The status line and header section: the replica's fields as read (when the response has them), the
/// response map's, and the framing fields this side decides on.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    replica: Option<&ReplicaFields>,
    framing: Framing,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // A response without a body keeps its own `Content-Length` (a HEAD or 304 says what a GET would get).
    let own_length = framing != Framing::None;
    let replica_date = replica.is_some_and(|replica| replica.write(out, &parts.headers, own_length));
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING || (own_length && name == header::CONTENT_LENGTH) {
            continue;
        }
        write_field(out, name, value);
    }
    match framing {
        Framing::None => {}
        Framing::Length(length) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !replica_date && !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        with_date(|date| out.extend_from_slice(date));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The current `Date` value, formatted once a second per thread.
fn with_date(write: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(at, date)| {
        if *at != secs {
            *at = secs;
            *date = httpdate::fmt_http_date(now);
        }
        write(date.as_bytes());
    });
}

#[cfg(test)]
pub(crate) mod agreement;
#[cfg(test)]
mod tests;
