//! HTTP/1.1 to a replica, driven inside the request's own task: the request is written, the response head
//! read and parsed (httparse), and the body is read as the client side asks for it. No connection task and
//! no channel between the two: the gateway proxies one exchange at a time per connection, so the exchange can
//! own the connection. A body read to its end hands the connection back to the pool (`Pool::checkin`); one
//! dropped early takes it down with it.
//!
//! Framing follows RFC 9112 §6: `Transfer-Encoding` (chunked, else read to close) over `Content-Length`, no
//! body for `HEAD`, 1xx, 204 and 304. An unparsable length or head, or an HTTP/1.0 response with a
//! `Transfer-Encoding`, is an error, never a response. A connection never goes back to the pool after a
//! response with both headers or a close-delimited body, or when the replica answered before a streamed
//! upload was done.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full, Limited};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

mod fields;

use self::fields::Kind;
pub(crate) use self::fields::ReplicaFields;
use super::Pool;
use crate::busy_poll::{self, AnswerTime};
use crate::headers::Added;
use crate::proxy::{ClientBody, ReqBody};

/// Largest response head accepted from a replica.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Largest chunk-size line or trailer section of a chunked body.
const MAX_CHUNK_META_BYTES: usize = 16 * 1024;
const READ_CHUNK: usize = 8 * 1024;

/// A connection to a replica and what was read from it but not used yet.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The replica, and the pool the connection goes back to when a response is read whole.
    addr: SocketAddr,
    pool: Weak<Pool>,
    /// How fast this connection's replica answers: whether its worker waits for the answer on the CPU.
    answers: AnswerTime,
}

/// How far a request got when it failed.
pub(crate) enum Failure {
    /// Not a byte of it was written: it may go on another connection.
    Unsent(io::Error),
    /// It may have reached the replica.
    Sent(io::Error),
}

impl Conn {
    /// Boxed: it moves between the pool and response bodies, which stay small.
    pub(crate) fn new(stream: TcpStream, addr: SocketAddr, pool: Weak<Pool>) -> Box<Conn> {
        Box::new(Conn { stream, buf: BytesMut::new(), addr, pool, answers: AnswerTime::default() })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether an idle connection can carry a request: nothing arrived on it (no close, no stray bytes).
    /// Looks at the readiness tokio already has; reads only when that says there is something.
    pub(crate) fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // A read that filled the buffer exactly leaves readiness set: find out.
            Poll::Ready(Ok(())) => {
                matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes the request and reads the response head. On `Failure::Unsent`, `out` is whole and can go on
    /// another connection.
    pub(crate) async fn exchange(mut self: Box<Self>, out: &mut Outgoing) -> Result<Response<Body>, Failure> {
        let written = self.stream.write(&out.wire).await.map_err(Failure::Unsent)?;
        if written == 0 {
            return Err(Failure::Unsent(io::ErrorKind::WriteZero.into()));
        }
        self.stream.write_all(&out.wire[written..]).await.map_err(Failure::Sent)?;
        // Until the head is read, a worker with nothing else to do may wait for it on the CPU (`busy_poll`).
        let sent = Instant::now();
        let spin = out.body.is_none() && self.answers.is_fast();
        let waiting = busy_poll::Waiting::start(self.stream.as_fd(), spin);
        // A streamed body goes out while the replica may already answer (a 413 to a large upload, say):
        // its answer ends the upload, and the connection, which is then mid-request, is not reused.
        let mut early = None;
        let mut unfinished = None;
        if let Some((body, chunked)) = out.body.take() {
            let conn = &mut *self;
            let (mut rd, mut wr) = conn.stream.split();
            let write = write_body(&mut wr, body, chunked);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    biased;
                    written = &mut write => match written {
                        Ok(()) => break,
                        Err(Upload::Client(error)) => return Err(Failure::Sent(error)),
                        Err(Upload::Replica(error)) => {
                            unfinished = Some(error);
                            break;
                        }
                    },
                    head = read_head(&mut rd, &mut conn.buf) => {
                        let head = head.map_err(Failure::Sent)?;
                        if is_interim(head.status) {
                            continue;
                        }
                        early = Some(head);
                        break;
                    }
                }
            }
        }
        let whole = early.is_none() && unfinished.is_none();
        let (head, framing) = loop {
            let mut head = match early.take() {
                Some(head) => head,
                // A failed upload still gets the replica's answer when there is one, else the write error.
                None => read_head(&mut self.stream, &mut self.buf)
                    .await
                    .map_err(|error| Failure::Sent(unfinished.take().unwrap_or(error)))?,
            };
            if is_interim(head.status) {
                continue;
            }
            let framing = framing(&mut head, out.head_request).map_err(Failure::Sent)?;
            break (head, framing);
        };
        drop(waiting);
        self.answers.note(sent.elapsed());
        let mut res = Response::new(());
        *res.status_mut() = head.status;
        *res.version_mut() = head.version;
        let fields = match head.fields {
            Fields::Raw(fields) => Some(fields),
            Fields::Map(headers) => {
                *res.headers_mut() = headers;
                None
            }
        };
        let (state, reuse) = match framing {
            Framing::Upgrade => (State::Upgraded, false),
            Framing::Body { kind, keep_alive } => (kind, keep_alive && whole),
        };
        let mut body = Body { conn: Some(self), state, reuse, fields };
        body.finish_if_done();
        Ok(res.map(|()| body))
    }
}

/// 100 Continue, 102, 103: informational, the answer follows (a 101 is the answer).
fn is_interim(status: StatusCode) -> bool {
    status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS
}

/// Why a streamed upload stopped.
enum Upload {
    /// The client's body failed (it went away, or sent too much): nothing to wait for.
    Client(io::Error),
    /// Writing to the replica failed: it may have answered already.
    Replica(io::Error),
}

/// A streamed request body: as is after a `Content-Length`, else chunked, trailers included.
async fn write_body<W: AsyncWrite + Unpin>(
    replica: &mut W,
    mut body: Limited<ClientBody>,
    chunked: bool,
) -> Result<(), Upload> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| Upload::Client(io::Error::other(format!("client body: {error}"))))?;
        let out = match frame.into_data() {
            Ok(data) if data.is_empty() => continue,
            Ok(data) if chunked => {
                let mut out = Vec::with_capacity(data.len() + 20);
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
                Bytes::from(out)
            }
            Ok(data) => data,
            Err(frame) => match (chunked, frame.into_trailers()) {
                (true, Ok(trailers)) => {
                    let mut out = b"0\r\n".to_vec();
                    write_fields(&mut out, &trailers);
                    out.extend_from_slice(b"\r\n");
                    return replica.write_all(&out).await.map_err(Upload::Replica);
                }
                _ => continue,
            },
        };
        replica.write_all(&out).await.map_err(Upload::Replica)?;
    }
    if chunked {
        replica.write_all(b"0\r\n\r\n").await.map_err(Upload::Replica)?;
    }
    Ok(())
}

/// Reads until a whole response head is in `buf`, and takes it out.
async fn read_head<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut BytesMut) -> io::Result<Head> {
    loop {
        if !buf.is_empty()
            && let Some(head) = parse_head(buf)?
        {
            return Ok(head);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response head larger than 64 KiB"));
        }
        buf.reserve(READ_CHUNK);
        if stream.read_buf(buf).await? == 0 {
            let detail = if buf.is_empty() {
                "the replica closed the connection without answering"
            } else {
                "the replica closed the connection in the middle of the response head"
            };
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, detail));
        }
    }
}

/// The response head at the start of the buffer, taken out of it; `None`: not all there yet. The read
/// bytes are frozen first, so the fields are ranges of them, not copies; what follows the head goes back
/// into the buffer (its spare room, no allocation).
fn parse_head(buf: &mut BytesMut) -> io::Result<Option<Head>> {
    let read = buf.split().freeze();
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, &read, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                buf.extend_from_slice(&read);
                return Ok(None);
            }
            Err(error) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad response head: {error}")));
            }
        };
    let status = parsed.code.and_then(|code| StatusCode::from_u16(code).ok());
    let status = status.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad response status"))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut kept = ReplicaFields::new(read.slice(..len));
    let mut framing = FramingFields::default();
    // A 101 keeps every field (`headers::rewrite_response` leaves its `Connection: upgrade`); so does a
    // head whose `Connection` names other fields, for `rewrite_response` to remove those. Both need a map.
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut needs_map = switching;
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        match framing.see(name, field.value) {
            Seen::Keep(kind) => kept.push(name, field.value, kind),
            Seen::KeepForMap => {
                needs_map = true;
                kept.push(name, field.value, Kind::Other);
            }
            Seen::Drop if switching => kept.push(name, field.value, Kind::Other),
            Seen::Drop => {}
        }
    }
    buf.extend_from_slice(&read[len..]);
    let fields = match needs_map {
        true => Fields::Map(kept.into_map()),
        false => Fields::Raw(Box::new(kept)),
    };
    Ok(Some(Head { status, version, fields, framing }))
}

struct Head {
    status: StatusCode,
    version: Version,
    fields: Fields,
    framing: FramingFields,
}

/// A response head's fields: as read (the common head), or in a map.
enum Fields {
    Raw(Box<ReplicaFields>),
    Map(HeaderMap),
}

impl Fields {
    fn drop_length(&mut self) {
        match self {
            Fields::Raw(fields) => fields.drop_length(),
            Fields::Map(headers) => drop(headers.remove(header::CONTENT_LENGTH)),
        }
    }
}

enum Framing {
    Body { kind: State, keep_alive: bool },
    Upgrade,
}

/// What the framing fields of a response head say, gathered while the head is parsed (one pass over its
/// fields, no lookups).
#[derive(Default)]
struct FramingFields {
    connection_close: bool,
    connection_keep_alive: bool,
    /// `Some(last coding is chunked)` when there is a `Transfer-Encoding`.
    transfer_encoding: Option<bool>,
    /// `Some(Ok(length))` when every `Content-Length` value agrees.
    content_length: Option<Result<u64, ()>>,
}

/// What becomes of a response field.
enum Seen {
    Keep(Kind),
    /// A `Connection` that names other fields: it stays, and the head needs a map.
    KeepForMap,
    /// Hop-by-hop (RFC 9110 §7.6.1): never forwarded.
    Drop,
}

impl FramingFields {
    /// Takes note of a field; says whether it goes on to the client. The hop-by-hop fields stop here, which
    /// leaves the common response nothing to rewrite.
    fn see(&mut self, name: &[u8], value: &[u8]) -> Seen {
        let tokens = || crate::headers::list_tokens(value);
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        // Compared by length first: most names match none of these.
        match name.len() {
            10 if is("connection") => {
                let mut only_framing = true;
                for token in tokens() {
                    let close = token.eq_ignore_ascii_case(b"close");
                    let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                    self.connection_close |= close;
                    self.connection_keep_alive |= keep_alive;
                    only_framing &= close || keep_alive || token.is_empty();
                }
                if only_framing { Seen::Drop } else { Seen::KeepForMap }
            }
            17 if is("transfer-encoding") => {
                self.transfer_encoding =
                    Some(tokens().next_back().is_some_and(|last| last.eq_ignore_ascii_case(b"chunked")));
                Seen::Drop
            }
            14 if is("content-length") => {
                for token in tokens() {
                    let length = crate::framing::digits(token);
                    self.content_length = match (self.content_length, length) {
                        (None, Some(length)) => Some(Ok(length)),
                        (Some(Ok(seen)), Some(length)) if seen == length => Some(Ok(length)),
                        _ => Some(Err(())),
                    };
                }
                Seen::Keep(Kind::ContentLength)
            }
            4 if is("date") => Seen::Keep(Kind::Date),
            10 if is("keep-alive") => Seen::Drop,
            16 if is("proxy-connection") => Seen::Drop,
            2 if is("te") => Seen::Drop,
            7 if is("trailer") || is("upgrade") => Seen::Drop,
            _ => Seen::Keep(Kind::Other),
        }
    }
}

/// How the body of `head` is delimited, and whether the connection can carry another request after it.
/// Drops a `Content-Length` that a `Transfer-Encoding` overrides, so the client never sees both.
fn framing(head: &mut Head, head_request: bool) -> io::Result<Framing> {
    let status = head.status.as_u16();
    if status == 101 {
        return Ok(Framing::Upgrade);
    }
    let fields = &head.framing;
    let mut keep_alive = match head.version {
        Version::HTTP_10 => fields.connection_keep_alive,
        _ => !fields.connection_close,
    };
    if head_request || status == 204 || status == 304 {
        // No content follows. A `Content-Length` may still say what a GET would get (HEAD, 304), but a
        // 204 has none (RFC 9110 §8.6), and a bad one is not passed on: an HTTP/2 client refuses it.
        if status == 204 || matches!(fields.content_length, Some(Err(()))) {
            head.fields.drop_length();
        }
        return Ok(Framing::Body { kind: State::Length(0), keep_alive });
    }
    if head.version == Version::HTTP_10 && fields.transfer_encoding.is_some() {
        // RFC 9112 §6.1: faulty framing, most likely an HTTP/1.1 body forwarded by an HTTP/1.0 hop.
        return Err(io::Error::new(io::ErrorKind::InvalidData, "Transfer-Encoding in an HTTP/1.0 response"));
    }
    let kind = match (fields.transfer_encoding, fields.content_length) {
        (Some(chunked), length) => {
            if length.is_some() {
                head.fields.drop_length();
                keep_alive = false;
            }
            if chunked { State::Chunked(Chunked::Size) } else { State::UntilClose }
        }
        (None, Some(Ok(length))) => State::Length(length),
        (None, Some(Err(()))) => {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length in the response"));
        }
        (None, None) => State::UntilClose,
    };
    if matches!(kind, State::UntilClose) {
        keep_alive = false;
    }
    Ok(Framing::Body { kind, keep_alive })
}

/// A request ready to write: its head (and a buffered body) as bytes to send in one go, and a streamed body
/// if there is one, with whether it goes chunked.
pub(crate) struct Outgoing {
    wire: Vec<u8>,
    body: Option<(Limited<ClientBody>, bool)>,
    head_request: bool,
}

impl Outgoing {
    /// `req` as HTTP/1.1: origin-form target, its fields (`Host` included) in order, and framing of the
    /// gateway's own (`Content-Length` for a known size, else chunked).
    pub(crate) fn new(parts: &http::request::Parts, added: &Added<'_>, body: ReqBody) -> Outgoing {
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let declared =
            parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let (length, buffered, streamed) = match body {
            Either::Left(full) => {
                let bytes = full_bytes(full);
                let with_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
                let length = (!bytes.is_empty() || with_body || declared.is_some()).then_some(bytes.len() as u64);
                (length, bytes, None)
            }
            Either::Right(stream) => {
                let length = declared.or(stream.size_hint().exact());
                (length, Bytes::new(), Some((stream, length.is_none())))
            }
        };
        let mut wire = Vec::with_capacity(256 + buffered.len());
        wire.extend_from_slice(parts.method.as_str().as_bytes());
        wire.push(b' ');
        wire.extend_from_slice(path.as_bytes());
        wire.extend_from_slice(b" HTTP/1.1\r\n");
        // An HTTP/2 or HTTP/3 client may split its cookies over several fields; an HTTP/1.1 replica gets
        // them on one line, joined with "; " (RFC 9113 §8.2.3, RFC 9114 §4.2.1). A map yields the values of
        // one name together, so the fields to join follow each other.
        let mut after_cookie = false;
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH {
                continue;
            }
            let cookie = name == header::COOKIE;
            if cookie && after_cookie {
                wire.truncate(wire.len() - 2);
                wire.extend_from_slice(b"; ");
                wire.extend_from_slice(value.as_bytes());
                wire.extend_from_slice(b"\r\n");
            } else {
                write_field(&mut wire, name, value);
            }
            after_cookie = cookie;
        }
        for (name, value) in added.iter() {
            write_raw_field(&mut wire, &name, value);
        }
        match (length, &streamed) {
            (Some(length), _) => {
                wire.extend_from_slice(b"content-length: ");
                wire.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            (None, Some(_)) => wire.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            (None, None) => {}
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&buffered);
        Outgoing { wire, body: streamed, head_request: parts.method == Method::HEAD }
    }
}

fn full_bytes(mut full: Full<Bytes>) -> Bytes {
    // A `Full` is ready at once with its one frame (or none when empty).
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// One `name: value` line of an HTTP/1.1 head (the client side's response heads too, `serve_h1.rs`).
pub(crate) fn write_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    write_raw_field(out, name, value.as_bytes());
}

fn write_raw_field(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn write_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        write_field(out, name, value);
    }
}

/// Where a body is in its framing.
enum State {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the replica closes.
    UntilClose,
    /// A `101 Switching Protocols`: the connection now belongs to the tunnel (`Body::into_upgraded`).
    Upgraded,
    Done,
}

/// Where a chunked body is.
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// This many data bytes of the current chunk to come, then its CRLF.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
}

/// A replica's response body over HTTP/1.1.
pub(crate) struct Body {
    conn: Option<Box<Conn>>,
    state: State,
    /// Whether the connection goes back to the pool when the body ends cleanly.
    reuse: bool,
    /// The response's fields until someone takes them (`take_fields`); `None` when the head needed a map.
    fields: Option<Box<ReplicaFields>>,
}

impl Body {
    /// The replica's fields as read, which belong in front of the response's map (see `fields.rs`).
    pub(crate) fn take_fields(&mut self) -> Option<Box<ReplicaFields>> {
        self.fields.take()
    }

    /// The connection of a `101 Switching Protocols` answer, with whatever the replica sent after the head.
    pub(crate) fn into_upgraded(mut self) -> Option<(TcpStream, Bytes)> {
        if !matches!(self.state, State::Upgraded) {
            return None;
        }
        self.conn.take().map(|conn| {
            let conn = *conn;
            (conn.stream, conn.buf.freeze())
        })
    }

    /// At the body's end: the connection back to the pool when it can carry another request.
    fn finish_if_done(&mut self) {
        if matches!(self.state, State::Length(0)) {
            self.state = State::Done;
        }
        if !matches!(self.state, State::Done) {
            return;
        }
        if let Some(conn) = self.conn.take()
            && self.reuse
            && conn.buf.is_empty()
            && let Some(pool) = conn.pool.upgrade()
        {
            pool.checkin(conn);
        }
    }

    fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf)
    }

    /// The next frame of a chunked body from the buffer; `Ok(None)`: more bytes needed first.
    fn next_chunked(conn: &mut Conn, state: &mut Chunked) -> io::Result<Option<Frame<Bytes>>> {
        let bad = |what: &str| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad chunked body from the replica: {what}"))
        };
        loop {
            match state {
                Chunked::Size => {
                    let Some(end) = find_crlf(&conn.buf) else {
                        return if conn.buf.len() > MAX_CHUNK_META_BYTES {
                            Err(bad("chunk-size line too long"))
                        } else {
                            Ok(None)
                        };
                    };
                    let line = &conn.buf[..end];
                    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                    let rest = &line[digits..];
                    if digits == 0 || digits > 15 || !(rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t')) {
                        return Err(bad("chunk size"));
                    }
                    let size = std::str::from_utf8(&line[..digits])
                        .ok()
                        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                        .ok_or_else(|| bad("chunk size"))?;
                    conn.buf.advance(end + 2);
                    *state = if size == 0 { Chunked::Trailers } else { Chunked::Data(size) };
                }
                Chunked::Data(remaining) => {
                    if conn.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (*remaining).min(conn.buf.len() as u64) as usize;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        *state = Chunked::DataEnd;
                    }
                    return Ok(Some(Frame::data(conn.buf.split_to(n).freeze())));
                }
                Chunked::DataEnd => {
                    if conn.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return Err(bad("no CRLF after chunk data"));
                    }
                    conn.buf.advance(2);
                    *state = Chunked::Size;
                }
                Chunked::Trailers => {
                    if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        return Ok(Some(Frame::trailers(HeaderMap::new())));
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(&conn.buf, &mut fields) {
                        // Lines end in CRLF here, as the chunk-size lines must (and as hyper wants).
                        Ok(httparse::Status::Complete((len, _))) if has_bare_lf(&conn.buf[..len]) => {
                            return Err(bad("a trailer line not ended by CRLF"));
                        }
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for field in fields {
                                let name =
                                    HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| bad("trailer name"))?;
                                let value = HeaderValue::from_bytes(field.value).map_err(|_| bad("trailer value"))?;
                                trailers.append(name, value);
                            }
                            conn.buf.advance(len);
                            return Ok(Some(Frame::trailers(trailers)));
                        }
                        Ok(httparse::Status::Partial) if conn.buf.len() <= MAX_CHUNK_META_BYTES => return Ok(None),
                        Ok(httparse::Status::Partial) => return Err(bad("trailers too long")),
                        Err(_) => return Err(bad("trailers")),
                    }
                }
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|pair| pair == b"\r\n")
}

/// Whether a line in `buf` ends in a LF without a CR before it.
fn has_bare_lf(buf: &[u8]) -> bool {
    buf.iter().enumerate().any(|(at, &byte)| byte == b'\n' && (at == 0 || buf[at - 1] != b'\r'))
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match &mut this.state {
                State::Done | State::Upgraded => return Poll::Ready(None),
                State::Length(0) => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                State::Length(remaining) => {
                    if !conn.buf.is_empty() {
                        let n = (*remaining).min(conn.buf.len() as u64) as usize;
                        *remaining -= n as u64;
                        let data = conn.buf.split_to(n).freeze();
                        this.finish_if_done();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(Self::poll_fill(conn, cx))? == 0 {
                        this.conn = None;
                        let detail = "the replica closed the connection in the middle of the body";
                        return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, detail))));
                    }
                }
                State::UntilClose => {
                    if !conn.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                    }
                    if ready!(Self::poll_fill(conn, cx))? == 0 {
                        this.state = State::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                }
                State::Chunked(chunked) => {
                    match Self::next_chunked(conn, chunked) {
                        Ok(Some(frame)) => {
                            if frame.is_trailers() {
                                this.state = State::Done;
                                this.finish_if_done();
                                // An empty trailer section is the plain end of the body.
                                if frame.trailers_ref().is_some_and(HeaderMap::is_empty) {
                                    return Poll::Ready(None);
                                }
                            }
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        Ok(None) => {}
                        Err(error) => {
                            this.conn = None;
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                    if ready!(Self::poll_fill(conn, cx))? == 0 {
                        this.conn = None;
                        let detail = "the replica closed the connection in the middle of a chunked body";
                        return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, detail))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Upgraded | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(remaining) => SizeHint::with_exact(remaining),
            State::Done | State::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
pub(crate) mod agreement;
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Request;
    use http_body_util::BodyExt;

    use super::*;
    use crate::upstream::tests::scripted;
    use crate::upstream::{UpstreamBody, UpstreamClient};

    fn request(method: Method, body: &'static str) -> Request<ReqBody> {
        Request::builder()
            .method(method)
            .uri("/p?q=1")
            .header(header::HOST, "svc")
            .body(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))))
            .expect("request")
    }

    async fn try_send(
        client: &UpstreamClient,
        addr: SocketAddr,
        req: Request<ReqBody>,
    ) -> Result<Response<UpstreamBody>, crate::upstream::SendError> {
        let authority: http::uri::Authority = addr.to_string().parse().expect("authority");
        let (head, body) = req.into_parts();
        let added = crate::upstream::tests::added();
        let send = client.send(addr, &authority, crate::table::UpstreamProtocol::Http1, (&head, &added), body);
        tokio::time::timeout(Duration::from_secs(5), send).await.expect("answer in time")
    }

    /// The replica's answer, its fields in its map (as every listener but `serve_h1` sees them).
    async fn send(client: &UpstreamClient, addr: SocketAddr, req: Request<ReqBody>) -> Response<UpstreamBody> {
        let mut res = try_send(client, addr, req).await.unwrap_or_else(|error| panic!("send failed: {error:?}"));
        let fields = match res.body_mut() {
            UpstreamBody::Http1(body) => body.take_fields(),
            UpstreamBody::H2c(_) => None,
        };
        if let Some(fields) = fields {
            fields.merge_into(res.headers_mut());
        }
        res
    }

    /// A GET answered by a fresh scripted replica.
    async fn get(script: &'static [u8], close: bool) -> (UpstreamClient, SocketAddr, Response<UpstreamBody>) {
        let addr = scripted(script, close).await.addr;
        let client = UpstreamClient::new(Duration::from_secs(30));
        let res = send(&client, addr, request(Method::GET, "")).await;
        (client, addr, res)
    }

    fn idle(client: &UpstreamClient, addr: SocketAddr) -> usize {
        client.pool.http1.lock().expect("pool").get(&addr).map_or(0, |stack| stack.len())
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_with_their_trailers_and_the_connection_comes_back() {
        let script = b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n";
        let crate::upstream::tests::Replica { addr, mut heads, .. } = scripted(script, false).await;
        let client = UpstreamClient::new(Duration::from_secs(30));
        let res = send(&client, addr, request(Method::POST, "abc")).await;
        let head = heads.recv().await.expect("request head");
        assert!(head.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("host: svc\r\n") && head.contains("content-length: 3\r\n"), "{head}");
        // Framing fields of the replica's connection stop at the gateway.
        assert!(
            !res.headers().contains_key(header::TRANSFER_ENCODING) && !res.headers().contains_key(header::CONNECTION)
        );
        let collected = res.into_body().collect().await.expect("body");
        assert_eq!(collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(collected.to_bytes(), "hello world");
        assert_eq!(idle(&client, addr), 1, "a body read whole gives its connection back");
    }

    #[tokio::test]
    async fn informational_answers_are_skipped_and_head_answers_have_no_body() {
        let script = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n";
        let addr = scripted(script, false).await.addr;
        let client = UpstreamClient::new(Duration::from_secs(30));
        let res = send(&client, addr, request(Method::HEAD, "")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_LENGTH], "50");
        assert!(res.body().is_end_stream());
        assert_eq!(idle(&client, addr), 1);
    }

    #[tokio::test]
    async fn a_body_until_close_is_read_whole_and_the_connection_is_not_kept() {
        let (client, addr, res) = get(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true).await;
        assert_eq!(res.into_body().collect().await.expect("body").to_bytes(), "until the end");
        assert_eq!(idle(&client, addr), 0);
    }

    #[tokio::test]
    async fn both_framing_headers_mean_chunked_and_no_reuse() {
        let script = b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let (client, addr, res) = get(script, false).await;
        assert!(!res.headers().contains_key(header::CONTENT_LENGTH), "the overridden length must not reach the client");
        assert_eq!(res.into_body().collect().await.expect("body").to_bytes(), "ok");
        assert_eq!(idle(&client, addr), 0);
    }

    #[tokio::test]
    async fn bad_framing_from_a_replica_is_an_error_not_a_response() {
        for script in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok"[..],
            &b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"[..],
            &b"HTTP/1.1 2OO OK\r\n\r\n"[..],
            // Kept alive and chunked, it would have gone back to the pool.
            &b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        ] {
            let script: &'static [u8] = Box::leak(script.to_vec().into_boxed_slice());
            let addr = scripted(script, false).await.addr;
            let client = UpstreamClient::new(Duration::from_secs(30));
            let res = try_send(&client, addr, request(Method::GET, "")).await;
            assert!(matches!(res, Err(crate::upstream::SendError::Failed(_))), "{}", String::from_utf8_lossy(script));
        }
    }

    #[tokio::test]
    async fn a_broken_chunked_body_fails_the_stream() {
        for script in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-trailer: 1\r\n\n"[..],
        ] {
            let script: &'static [u8] = Box::leak(script.to_vec().into_boxed_slice());
            let (client, addr, res) = get(script, false).await;
            assert!(res.into_body().collect().await.is_err(), "{}", String::from_utf8_lossy(script));
            assert_eq!(idle(&client, addr), 0);
        }
    }

    #[tokio::test]
    async fn an_upgrade_hands_over_the_connection_with_what_followed_the_head() {
        let script = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nearly";
        let (_client, _addr, res) = get(script, false).await;
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        let (_stream, early) = res.into_body().into_upgraded().expect("the connection");
        assert_eq!(early, "early");
    }

    /// A client upload that sends one chunk, then nothing more.
    struct Stalled(bool);

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part of a large upload")))))
            }
        }
    }

    #[tokio::test]
    async fn an_answer_before_the_upload_is_done_ends_the_upload() {
        let script = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n";
        let crate::upstream::tests::Replica { addr, mut heads, .. } = scripted(script, false).await;
        let client = UpstreamClient::new(Duration::from_secs(30));
        let body = Limited::new(Either::Right(Stalled(false).boxed_unsync()), 1 << 20);
        let req = Request::builder().method(Method::POST).uri("/upload").header(header::HOST, "svc");
        let res = send(&client, addr, req.body(Either::Right(body)).expect("request")).await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(heads.recv().await.expect("head").contains("transfer-encoding: chunked\r\n"));
        assert!(res.into_body().collect().await.expect("body").to_bytes().is_empty());
        assert_eq!(idle(&client, addr), 0, "a connection left mid-upload is not reused");
    }
}
