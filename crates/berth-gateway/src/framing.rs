//! Request framing guard: follows HTTP/1.1 request framing (RFC 9112 §6) on the bytes a client sends and
//! makes hyper reject a request that carries both `Content-Length` and `Transfer-Encoding` with 400.
//!
//! hyper accepts such a request: it drops `Content-Length`, de-chunks, and closes the connection after
//! answering, so the handler never sees the conflict. It is the classic request-smuggling shape, and Berth
//! refuses it before any byte reaches a replica. `FramingGuard` wraps the accepted client stream. It passes
//! each request line on at once (it is never changed, and hyper-util's version sniffing and hyper's
//! header-read timer need to see bytes arrive), holds back the header section until it is complete
//! (bounded by the head limit), parses it with `httparse`, and on a conflict overwrites the `:` after
//! every `Transfer-Encoding` name with a NUL byte, which httparse rejects whatever its leniency settings,
//! so hyper answers 400 and closes. Bodies are followed (`Content-Length` bytes, or the chunked framing)
//! without being buffered, so the next pipelined request is found where hyper will find it.
//!
//! The guard stops inspecting and passes bytes through after an upgrade request (`Upgrade` header) or a
//! `CONNECT` (the answer to it closes the connection unless it switches protocols:
//! `close_unless_switched`), the HTTP/2 prior-knowledge preface, a header section larger than the limit
//! (hyper answers 431) and any request hyper itself will refuse (it closes the connection after
//! answering): past any of these, no request reaches the gateway that the guard has not seen.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

/// Wraps the client side of a connection; see the module documentation.
pub(crate) struct FramingGuard<T> {
    inner: T,
    framing: Framing,
    /// Bytes read from the client but not yet handed on: `[handed..released]` are inspected and ready,
    /// `[released..]` are a header section still being received (only in the headers state).
    buf: Vec<u8>,
    handed: usize,
    released: usize,
}

impl<T> FramingGuard<T> {
    /// `max_head` must be at least the server's own head limit, so that any head the server would accept
    /// is inspected.
    pub(crate) fn new(inner: T, max_head: usize) -> FramingGuard<T> {
        FramingGuard { inner, framing: Framing::new(max_head), buf: Vec::new(), handed: 0, released: 0 }
    }

    /// A guard over a connection of which `read` was read already (by `serve_h1`, which hands on what it
    /// does not serve): those bytes come first, inspected like bytes just read.
    pub(crate) fn with_prefix(inner: T, max_head: usize, read: &[u8]) -> FramingGuard<T> {
        let mut guard = FramingGuard::new(inner, max_head);
        guard.buf.extend_from_slice(read);
        guard.inspect();
        guard
    }

    /// Runs the bytes in `buf[released..]` through the framing state machine, releasing what is decided.
    fn inspect(&mut self) {
        while self.released < self.buf.len() {
            let rest = &mut self.buf[self.released..];
            let n = match self.framing.state {
                State::Headers { connect } => match self.framing.headers(rest, connect) {
                    Some(n) => n,
                    None => return,
                },
                _ => self.framing.body(rest),
            };
            if n == 0 {
                // Cannot happen (every other state consumes a byte); stop rather than spin.
                return;
            }
            self.released += n;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.handed < this.released {
                let n = (this.released - this.handed).min(out.remaining());
                out.put_slice(&this.buf[this.handed..this.handed + n]);
                this.handed += n;
                if this.handed == this.released {
                    this.buf.drain(..this.released);
                    this.handed = 0;
                    this.released = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if matches!(this.framing.state, State::Headers { .. }) {
                // Hold the header section back: it is handed on only once inspected (and perhaps corrupted).
                let held = this.buf.len();
                let room = (this.framing.max_head + 1).saturating_sub(held).clamp(1, HEAD_READ_CHUNK);
                this.buf.resize(held + room, 0);
                let mut read_buf = ReadBuf::new(&mut this.buf[held..]);
                let res = Pin::new(&mut this.inner).poll_read(cx, &mut read_buf);
                let n = read_buf.filled().len();
                this.buf.truncate(held + n);
                ready!(res)?;
                if n == 0 {
                    // End of input: hand on what was held (hyper reports the incomplete head).
                    this.framing.state = State::PassThrough;
                    this.released = this.buf.len();
                    if this.released == 0 {
                        return Poll::Ready(Ok(()));
                    }
                } else {
                    this.inspect();
                }
                continue;
            }
            // A request line, a body or pass-through: read straight into the caller's buffer.
            let start = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            let end = out.filled().len();
            if end == start {
                return Poll::Ready(Ok(()));
            }
            let n = this.framing.body(&out.filled()[start..end]);
            if start + n < end {
                // A header section starts inside this read: it is held, and inspected before it is handed on.
                this.buf.extend_from_slice(&out.filled()[start + n..end]);
                out.set_filled(start + n);
                this.inspect();
            }
            if n > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Most bytes read at once while a head is held.
const HEAD_READ_CHUNK: usize = 8 * 1024;
/// The start of the HTTP/2 prior-knowledge connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// Replaces the `:` after a `Transfer-Encoding` name. httparse rejects a NUL in a header name even when
/// told to skip invalid header lines, so the head can never be accepted without that header.
const CORRUPT: u8 = b'\0';
/// Headers parsed without allocating; a head with more is parsed again with room for every line.
const INLINE_HEADERS: usize = 64;

/// The sans-IO core: where in the request stream the next byte falls.
struct Framing {
    state: State,
    max_head: usize,
    /// How far into the held header section the search for its end has looked.
    searched: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before or in a request line; remembers how the line starts.
    RequestLine(LineStart),
    /// Receiving the header section of a request (`connect`: its method is CONNECT).
    Headers {
        connect: bool,
    },
    /// This many body bytes left (never 0).
    Length(u64),
    Chunked(Chunk),
    /// No longer inspecting: upgraded, HTTP/2, or a request the server refuses.
    PassThrough,
}

/// The first bytes of a request line: enough to tell the HTTP/2 preface and `CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct LineStart {
    bytes: [u8; H2_PREFACE.len()],
    len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line: the size so far, whether it has a digit, whether digits are over (extension).
    Size { size: u64, digits: bool, ext: bool },
    /// This many chunk data bytes left (never 0).
    Data(u64),
    /// After chunk data, up to the end of its line.
    DataEnd,
    /// In the trailer section; `blank`: the current line has nothing but `\r` so far.
    Trailer { blank: bool },
}

/// What a header section says about the bytes after it.
enum Verdict {
    /// Both `Content-Length` and `Transfer-Encoding`: the offsets of the bytes to corrupt.
    Conflict(Vec<usize>),
    Next(State),
}

impl Framing {
    fn new(max_head: usize) -> Framing {
        Framing { state: State::RequestLine(LineStart::default()), max_head, searched: 0 }
    }

    /// In the headers state, looks at the held header section. Returns how many bytes to release (the
    /// section, or everything when inspection stops), or `None` to wait for more.
    fn headers(&mut self, held: &mut [u8], connect: bool) -> Option<usize> {
        let from = self.searched.saturating_sub(2);
        let parsed = if ends_header_section(held, from) { parse_headers(held, connect) } else { Ok(None) };
        let (len, verdict) = match parsed {
            Ok(Some(parsed)) => parsed,
            Ok(None) => {
                self.searched = held.len();
                return (held.len() > self.max_head).then(|| self.pass_through(held.len()));
            }
            // hyper parses with the same rules and answers 400.
            Err(()) => return Some(self.pass_through(held.len())),
        };
        self.searched = 0;
        match verdict {
            Verdict::Conflict(marks) => {
                for mark in &marks {
                    held[*mark] = CORRUPT;
                }
                debug!(
                    n_transfer_encoding = marks.len(),
                    "request with both content-length and transfer-encoding rejected"
                );
                self.state = State::PassThrough;
            }
            Verdict::Next(next) => self.state = next,
        }
        Some(len)
    }

    /// Outside the headers state, follows `bytes`. Returns how many belong to the current request line or
    /// body (all when passing through); when fewer, a header section starts there.
    fn body(&mut self, bytes: &[u8]) -> usize {
        let mut idx = 0;
        while idx < bytes.len() {
            match self.state {
                State::Headers { .. } => break,
                State::PassThrough => return bytes.len(),
                State::RequestLine(line) => idx += self.request_line(line, &bytes[idx..]),
                State::Length(left) => {
                    let n = take(left, bytes.len() - idx);
                    idx += n;
                    self.state =
                        if left == n as u64 { State::between_requests() } else { State::Length(left - n as u64) };
                }
                State::Chunked(Chunk::Data(left)) => {
                    let n = take(left, bytes.len() - idx);
                    idx += n;
                    let next = if left == n as u64 { Chunk::DataEnd } else { Chunk::Data(left - n as u64) };
                    self.state = State::Chunked(next);
                }
                State::Chunked(chunk) => {
                    self.state = chunk_byte(chunk, bytes[idx]);
                    idx += 1;
                }
            }
        }
        idx
    }

    /// Follows a request line (and the empty lines allowed before it, RFC 9112 §2.2). Returns how many
    /// bytes it took (at least one).
    fn request_line(&mut self, mut line: LineStart, bytes: &[u8]) -> usize {
        let mut idx = 0;
        while line.len == 0 && idx < bytes.len() && matches!(bytes[idx], b'\r' | b'\n') {
            idx += 1;
        }
        while line.len < line.bytes.len() && idx < bytes.len() && bytes[idx] != b'\n' {
            line.bytes[line.len] = bytes[idx];
            line.len += 1;
            idx += 1;
        }
        if line.bytes[..line.len] == *H2_PREFACE {
            self.state = State::PassThrough;
            return idx.max(1);
        }
        match bytes[idx..].iter().position(|b| *b == b'\n') {
            Some(at) => {
                self.state = State::Headers { connect: line.bytes[..line.len].starts_with(b"CONNECT ") };
                idx + at + 1
            }
            None => {
                self.state = State::RequestLine(line);
                bytes.len()
            }
        }
    }

    fn pass_through(&mut self, len: usize) -> usize {
        self.state = State::PassThrough;
        self.searched = 0;
        len
    }
}

impl State {
    fn between_requests() -> State {
        State::RequestLine(LineStart::default())
    }
}

/// One byte of the chunked framing outside chunk data. hyper is stricter (it wants CRLF everywhere); where
/// it refuses what this accepts, it closes the connection, so leniency here never lets a head through.
fn chunk_byte(chunk: Chunk, byte: u8) -> State {
    match chunk {
        Chunk::Size { size, digits, ext } => match byte {
            b'\n' if !digits => State::PassThrough,
            b'\n' if size == 0 => State::Chunked(Chunk::Trailer { blank: true }),
            b'\n' => State::Chunked(Chunk::Data(size)),
            b'\r' => State::Chunked(chunk),
            _ if !ext && byte.is_ascii_hexdigit() => {
                let digit = u64::from(char::from(byte).to_digit(16).unwrap_or(0));
                match size.checked_mul(16).and_then(|size| size.checked_add(digit)) {
                    Some(size) => State::Chunked(Chunk::Size { size, digits: true, ext }),
                    None => State::PassThrough,
                }
            }
            _ => State::Chunked(Chunk::Size { size, digits, ext: true }),
        },
        Chunk::DataEnd => match byte {
            b'\n' => State::Chunked(Chunk::Size { size: 0, digits: false, ext: false }),
            _ => State::Chunked(chunk),
        },
        Chunk::Trailer { blank } => match byte {
            b'\n' if blank => State::between_requests(),
            b'\n' => State::Chunked(Chunk::Trailer { blank: true }),
            b'\r' => State::Chunked(chunk),
            _ => State::Chunked(Chunk::Trailer { blank: false }),
        },
        // Handled by the caller, many bytes at a time.
        Chunk::Data(_) => State::Chunked(chunk),
    }
}

/// Parses a header section that looks complete. `Ok(None)`: httparse wants more bytes; `Err`: not a
/// header section.
fn parse_headers(held: &[u8], connect: bool) -> Result<Option<(usize, Verdict)>, ()> {
    let mut inline = [httparse::EMPTY_HEADER; INLINE_HEADERS];
    match parse_with(held, connect, &mut inline) {
        Err(httparse::Error::TooManyHeaders) => {
            // Every header is on its own line: that many slots are always enough.
            let n_lines = held.iter().filter(|b| **b == b'\n').count();
            let mut headers = vec![httparse::EMPTY_HEADER; n_lines];
            parse_with(held, connect, &mut headers).map_err(|_| ())
        }
        res => res.map_err(|_| ()),
    }
}

fn parse_with<'b>(
    held: &'b [u8],
    connect: bool,
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<(usize, Verdict)>, httparse::Error> {
    let (len, headers) = match httparse::parse_headers(held, headers)? {
        httparse::Status::Complete(parsed) => parsed,
        httparse::Status::Partial => return Ok(None),
    };
    let mut content_length: Option<u64> = None;
    let mut n_content_length = 0;
    let mut bad_length = false;
    let mut te_marks = Vec::new();
    let mut chunked = false;
    let mut upgrade = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            n_content_length += 1;
            match digits(header.value) {
                Some(n) if content_length.is_none_or(|prev| prev == n) => content_length = Some(n),
                _ => bad_length = true,
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // httparse ends a request header name at its `:`; should it not, the name's first byte goes.
            let name_start = header.name.as_ptr() as usize - held.as_ptr() as usize;
            let colon = name_start + header.name.len();
            te_marks.push(if held.get(colon) == Some(&b':') { colon } else { name_start });
            // As hyper does: the last Transfer-Encoding line decides, by its last coding.
            chunked = last_coding_is_chunked(header.value);
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if n_content_length > 0 && !te_marks.is_empty() {
        return Ok(Some((len, Verdict::Conflict(te_marks))));
    }
    let next = if upgrade || connect {
        State::PassThrough
    } else if !te_marks.is_empty() {
        // hyper refuses a request whose last coding is not chunked.
        if chunked { State::Chunked(Chunk::Size { size: 0, digits: false, ext: false }) } else { State::PassThrough }
    } else if bad_length {
        State::PassThrough
    } else {
        match content_length {
            Some(n) if n > 0 => State::Length(n),
            _ => State::between_requests(),
        }
    };
    Ok(Some((len, Verdict::Next(next))))
}

/// Whether `held` (a header section) has its end in view: an empty line at its start, or a line feed
/// followed by an empty line at or after `from`.
fn ends_header_section(held: &[u8], from: usize) -> bool {
    if held.starts_with(b"\n") || held.starts_with(b"\r\n") {
        return true;
    }
    let tail = held.get(from..).unwrap_or_default();
    tail.iter().enumerate().any(|(idx, byte)| {
        *byte == b'\n'
            && matches!((tail.get(idx + 1), tail.get(idx + 2)), (Some(&b'\n'), _) | (Some(&b'\r'), Some(&b'\n')))
    })
}

/// A `Content-Length` value as hyper reads it: decimal digits only, no sign, no overflow.
pub(crate) fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |acc, byte| {
        let digit = char::from(*byte).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// hyper's test: the value is visible ASCII and its last comma-separated coding is `chunked`.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    let visible = value.iter().all(|b| *b == b'\t' || (b' '..0x7f).contains(b));
    visible
        && std::str::from_utf8(value)
            .ok()
            .and_then(|value| value.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// Whether an HTTP/1 request asks to switch protocols by the guard's rule (`parse_with`): an `Upgrade`
/// field, or `CONNECT`. The guard stops following the connection after such a request. (HTTP/2 has no
/// `Connection` to close with, and its frames need no guard.)
pub(crate) fn asks_upgrade<B>(req: &http::Request<B>) -> bool {
    req.version() < http::Version::HTTP_2
        && (req.method() == http::Method::CONNECT || req.headers().contains_key(http::header::UPGRADE))
}

/// The rule that makes passing through after an upgrade request safe: the answer to it closes the
/// connection unless it switches protocols (`101`, or a `2xx` to `CONNECT`, as hyper upgrades), so no
/// request the guard has not seen can follow it. Every hyper service the gateway runs applies it
/// (`gateway::hyper_service`).
pub(crate) fn close_unless_switched<B>(method: &http::Method, res: &mut http::Response<B>) {
    let status = res.status();
    let switched =
        status == http::StatusCode::SWITCHING_PROTOCOLS || (method == http::Method::CONNECT && status.is_success());
    if !switched {
        res.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    }
}

fn take(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |left| left.min(available))
}

#[cfg(test)]
pub(crate) mod tests;
