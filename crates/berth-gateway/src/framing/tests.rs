use std::collections::VecDeque;
use std::task::Waker;

use super::*;
use crate::test_rng::Rng;

const MAX_HEAD: usize = 8192;

/// A valid pipeline: no body, a `Content-Length` body that looks like a conflicting head, chunked bodies
/// with extensions and trailers, and an empty line before a request line.
const PIPELINE: &[u8] = b"GET /a HTTP/1.1\r\nHost: web\r\n\r\n\
POST /b HTTP/1.1\r\nHost: web\r\ncontent-length: 70\r\n\r\n\
GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
POST /c HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n\
5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Checksum: 1\r\n\r\n\
\r\nPUT /d HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n\
POST /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\r\n\r\r\n0\r\n\r\n";

/// Ends every test input: rejected only if the guard followed every message before it.
const CONFLICT: &[u8] =
    b"POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

#[test]
fn pipelined_requests_split_at_every_byte_pass_unchanged() {
    let input = [PIPELINE, CONFLICT].concat();
    let expected = corrupted(&input, &[PIPELINE.len() + conflict_mark()]);
    for split in 0..=input.len() {
        for out_size in [1, 7, 4096] {
            let (out, guard) = run(&[&input[..split], &input[split..]], out_size, MAX_HEAD);
            assert_eq!(out, expected, "split at {split}, reads of {out_size}");
            assert_eq!(guard.framing.state, State::PassThrough);
        }
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(&bytes, 3, MAX_HEAD).0, expected);
}

#[test]
fn bytes_read_before_the_guard_are_inspected_like_the_rest() {
    // However the input is split between what `serve_h1` read first and what follows on the socket, the
    // bytes come out unchanged except for the conflict, whose Transfer-Encoding is corrupted.
    let input = [PIPELINE, CONFLICT].concat();
    let expected = corrupted(&input, &[PIPELINE.len() + conflict_mark()]);
    for split in 0..=input.len() {
        let mut guard = FramingGuard::with_prefix(Script::new(&[&input[split..]], true), MAX_HEAD, &input[..split]);
        assert_eq!(read_available(&mut guard, 4096), expected, "split at {split}");
        assert_eq!(guard.framing.state, State::PassThrough);
    }
}

#[test]
fn a_valid_pipeline_ends_waiting_for_the_next_head() {
    let mut guard = FramingGuard::new(Script::new(&[PIPELINE], false), MAX_HEAD);
    assert_eq!(read_available(&mut guard, 4096), PIPELINE);
    assert_eq!(guard.framing.state, State::between_requests());
}

#[test]
fn each_conflict_shape_is_corrupted() {
    let shapes: [&[u8]; 6] = [
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: gzip\r\nCONTENT-LENGTH: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\n",
        b"GET / HTTP/1.1\r\nUpgrade: echo\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ];
    for shape in shapes {
        let marks: Vec<usize> = find_all(shape, b"transfer-encoding").map(|at| at + 17).collect();
        let (out, guard) = run(&[shape], 4096, MAX_HEAD);
        assert_eq!(out, corrupted(shape, &marks), "{}", String::from_utf8_lossy(shape));
        assert_eq!(guard.framing.state, State::PassThrough);
        let mut lenient = httparse::ParserConfig::default();
        lenient.ignore_invalid_headers_in_requests(true);
        for config in [httparse::ParserConfig::default(), lenient] {
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut headers);
            assert!(config.parse_request(&mut req, &out).is_err(), "httparse accepts the corrupted head");
        }
    }
}

#[test]
fn header_sections_are_held_until_complete_request_lines_are_not() {
    let head = b"GET / HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi";
    let mut guard = FramingGuard::new(Script::new(&[&head[..20]], false), MAX_HEAD);
    assert_eq!(read_available(&mut guard, 4096), b"GET / HTTP/1.1\r\n");
    guard.inner.chunks.push_back(head[20..40].to_vec());
    assert_eq!(read_available(&mut guard, 4096), b"");
    guard.inner.chunks.push_back(head[40..].to_vec());
    assert_eq!(read_available(&mut guard, 4096), &head[16..]);
}

#[test]
fn preface_and_upgrades_switch_to_pass_through() {
    let openings: [&[u8]; 4] = [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nContent-Length: 0\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    ];
    for opening in openings {
        // After the switch, even a conflicting head is only bytes, and an unfinished one is not held.
        let input = [opening, CONFLICT, b"no end of head"].concat();
        let mut guard = FramingGuard::new(Script::new(&[&input], false), MAX_HEAD);
        assert_eq!(read_available(&mut guard, 4096), input, "{}", String::from_utf8_lossy(opening));
        assert_eq!(guard.framing.state, State::PassThrough);
    }
}

#[test]
fn a_header_section_past_the_limit_passes_through_and_buffering_stays_bounded() {
    let max_head = 64;
    let input = [&b"GET / HTTP/1.1\r\nX-Big: "[..], &[b'a'; 100], b"\r\n\r\n", CONFLICT].concat();
    let mut guard = FramingGuard::new(Script::new(&[], false), max_head);
    let mut out = Vec::new();
    for byte in &input {
        guard.inner.chunks.push_back(vec![*byte]);
        out.extend(read_available(&mut guard, 4096));
        assert!(guard.buf.len() <= max_head + 1, "{} bytes buffered", guard.buf.len());
    }
    assert_eq!(out, input);
    assert_eq!(guard.framing.state, State::PassThrough);
}

#[test]
fn refused_heads_and_end_of_input_pass_through() {
    for input in [&b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n"[..], b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n"] {
        let input = [input, CONFLICT].concat();
        assert_eq!(run(&[&input], 4096, MAX_HEAD).0, input);
    }
    // A client that stops mid-head: hyper gets what there was and reports it.
    assert_eq!(run(&[b"GET / HT"], 4096, MAX_HEAD).0, b"GET / HT");
    assert_eq!(run(&[b"GET / HTTP/1.1\r\nHost: w"], 4096, MAX_HEAD).0, b"GET / HTTP/1.1\r\nHost: w");
}

#[test]
fn randomized_splits_of_valid_pipelines_pass_unchanged() {
    let mut rng = Rng::for_case(0x9e37_79b9_7f4a_7c15, 0);
    for _ in 0..300 {
        let mut input = Vec::new();
        for _ in 0..rng.below(6) + 1 {
            input.extend(random_request(&mut rng));
        }
        let conflict_at = input.len() + conflict_mark();
        input.extend_from_slice(CONFLICT);
        let chunks = random_splits(&mut rng, &input);
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let out_size = rng.below(64) + 1;
        let (out, _) = run(&chunks, out_size, MAX_HEAD);
        assert_eq!(out, corrupted(&input, &[conflict_at]), "{}", String::from_utf8_lossy(&input));
    }
}

#[test]
fn random_bytes_never_panic_and_keep_their_length() {
    let mut rng = Rng::for_case(0x2545_f491_4f6c_dd1d, 0);
    let alphabet = b"\r\n:;, 0123456789abcdefABCDEF GET POST HTTP/1.1 Content-Length Transfer-Encoding chunked\x00\xff";
    for _ in 0..2000 {
        let mut input = random_request(&mut rng);
        for _ in 0..rng.below(8) {
            let at = rng.below(input.len());
            input[at] = alphabet[rng.below(alphabet.len())];
        }
        if rng.below(4) == 0 {
            input = (0..rng.below(300)).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        }
        let chunks = random_splits(&mut rng, &input);
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let (out, _) = run(&chunks, rng.below(16) + 1, 256);
        assert_eq!(out.len(), input.len());
        // The only change the guard ever makes is a NUL in place of a header name's `:` or first byte.
        assert!(out.iter().zip(&input).all(|(o, i)| o == i || *o == CORRUPT));
    }
}

/// A scripted client: hands out its chunks (each read takes at most one), with a `Pending` before every
/// chunk when `pauses`; then end of input, or `Pending` forever when more may come.
struct Script {
    chunks: VecDeque<Vec<u8>>,
    pauses: bool,
    paused: bool,
    eof: bool,
}

impl Script {
    fn new(chunks: &[&[u8]], eof: bool) -> Script {
        // An empty read means end of input: empty chunks are not handed out.
        let chunks = chunks.iter().filter(|c| !c.is_empty()).map(|c| c.to_vec()).collect();
        Script { chunks, pauses: false, paused: false, eof }
    }
}

impl AsyncRead for Script {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pauses && !this.paused {
            this.paused = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.paused = false;
        let Some(mut chunk) = this.chunks.pop_front() else {
            return if this.eof { Poll::Ready(Ok(())) } else { Poll::Pending };
        };
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk[..n]);
        if n < chunk.len() {
            this.chunks.push_front(chunk.split_off(n));
        }
        Poll::Ready(Ok(()))
    }
}

/// Feeds `chunks` (pausing between them) then end of input; returns everything read, in reads of `out_size`.
fn run(chunks: &[&[u8]], out_size: usize, max_head: usize) -> (Vec<u8>, FramingGuard<Script>) {
    let mut script = Script::new(chunks, true);
    script.pauses = true;
    let mut guard = FramingGuard::new(script, max_head);
    let out = read_available(&mut guard, out_size);
    (out, guard)
}

/// Reads until end of input, or until the guard waits on a script that has nothing more to give.
fn read_available(guard: &mut FramingGuard<Script>, out_size: usize) -> Vec<u8> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut scratch = vec![0; out_size];
    loop {
        let mut read_buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *guard).poll_read(&mut cx, &mut read_buf) {
            Poll::Ready(Ok(())) if read_buf.filled().is_empty() => return out,
            Poll::Ready(Ok(())) => out.extend_from_slice(read_buf.filled()),
            Poll::Ready(Err(error)) => panic!("scripted reads do not fail: {error}"),
            Poll::Pending if guard.inner.chunks.is_empty() && !guard.inner.paused => return out,
            Poll::Pending => {}
        }
    }
}

/// Where the guard puts its NUL in `CONFLICT`.
fn conflict_mark() -> usize {
    find_all(CONFLICT, b"transfer-encoding").next().expect("CONFLICT has the header") + 17
}

fn corrupted(input: &[u8], marks: &[usize]) -> Vec<u8> {
    let mut res = input.to_vec();
    for mark in marks {
        assert_eq!(res[*mark], b':', "test marks a colon");
        res[*mark] = CORRUPT;
    }
    res
}

fn find_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    (0..haystack.len().saturating_sub(needle.len()) + 1)
        .filter(move |at| haystack[*at..*at + needle.len()].eq_ignore_ascii_case(needle))
}

/// A valid request of any framing: no body, a `Content-Length` body or a chunked one (extensions,
/// trailers), its body bytes chosen to tempt a confused parser.
pub(crate) fn random_request(rng: &mut Rng) -> Vec<u8> {
    let mut res = Vec::new();
    if rng.below(5) == 0 {
        res.extend_from_slice(b"\r\n");
    }
    let method: &[u8] = [&b"GET"[..], b"POST", b"PUT", b"DELETE"][rng.below(4)];
    res.extend_from_slice(method);
    res.extend_from_slice(b" /path?q=1 HTTP/1.1\r\nHost: web.localhost\r\n");
    for idx in 0..rng.below(4) {
        res.extend_from_slice(format!("X-Extra-{idx}: {}\r\n", rng.below(1 << 40)).as_bytes());
    }
    match rng.below(3) {
        0 => res.extend_from_slice(b"\r\n"),
        1 => {
            let body = random_body(rng, 200);
            res.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            res.extend(body);
        }
        _ => {
            res.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for _ in 0..rng.below(4) {
                let data = random_body(rng, 40);
                if data.is_empty() {
                    continue;
                }
                let ext = if rng.below(3) == 0 { ";ext=\"1\"" } else { "" };
                res.extend_from_slice(format!("{:x}{ext}\r\n", data.len()).as_bytes());
                res.extend(data);
                res.extend_from_slice(b"\r\n");
            }
            res.extend_from_slice(b"0\r\n");
            if rng.below(3) == 0 {
                res.extend_from_slice(b"X-Trailer: done\r\n");
            }
            res.extend_from_slice(b"\r\n");
        }
    }
    res
}

/// Body bytes drawn mostly from framing-significant characters, to tempt a confused parser.
fn random_body(rng: &mut Rng, max: usize) -> Vec<u8> {
    let alphabet = b"\r\n\r\n0;:abc GET / HTTP/1.1 Transfer-Encoding: chunked";
    (0..rng.below(max + 1)).map(|_| alphabet[rng.below(alphabet.len())]).collect()
}

fn random_splits(rng: &mut Rng, input: &[u8]) -> Vec<Vec<u8>> {
    let mut res = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = (rng.below(rest.len().min(80)) + 1).min(rest.len());
        res.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    res
}
