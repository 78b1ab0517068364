//! A tiny blocking HTTP/1.1 client for tests: one request per connection (`Connection: close`),
//! bodies delimited by `Content-Length`, chunked encoding or the end of the connection.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A response: status code, headers in order (names as sent), body.
pub(crate) type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// `GET path` and the body as (lossy) UTF-8.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let (status, _headers, body) = http_request(addr, "GET", path, &[], &[], timeout)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends one request and reads the whole response. `timeout` bounds the whole exchange,
/// connecting included; running out of it is an error of kind `TimedOut`.
///
/// `Host`, `Connection: close` and `Content-Length` (when there is a body, or the method usually
/// has one) are added unless `headers` sets them.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    exchange(addr, method, path, headers, body, timeout).map_err(|error| annotate(error, addr, method, path))
}

fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(&request_head(addr, method, path, headers, body.len()))?;
    stream.write_all(body)?;
    stream.flush()?;
    read_response(&mut stream, deadline, method.eq_ignore_ascii_case("HEAD"))
}

pub(crate) fn request_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: usize,
) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has("host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    let usually_has_body = ["POST", "PUT", "PATCH"].iter().any(|m| m.eq_ignore_ascii_case(method));
    if !has("content-length") && !has("transfer-encoding") && (body_len > 0 || usually_has_body) {
        head.push_str(&format!("Content-Length: {body_len}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

pub(crate) fn read_response(stream: &mut TcpStream, deadline: Instant, is_head: bool) -> io::Result<Response> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if fill(stream, &mut buf, deadline)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the response head was complete",
                ));
            }
        };
        let (status, headers) = parse_head(&buf[..head_end])?;
        buf.drain(..head_end);
        // Interim answers (100 Continue, 103 Early Hints) precede the real one.
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        if is_head || status == 204 || status == 304 {
            return Ok((status, headers, Vec::new()));
        }
        let chunked = header("transfer-encoding").is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            loop {
                if let Some(body) = decode_chunked(&buf)? {
                    break body;
                }
                if fill(stream, &mut buf, deadline)? == 0 {
                    return Err(eof_in_body());
                }
            }
        } else if let Some(length) = header("content-length") {
            let length: usize =
                length.trim().parse().map_err(|_| invalid_data(format!("invalid Content-Length header {length:?}")))?;
            while buf.len() < length {
                if fill(stream, &mut buf, deadline)? == 0 {
                    return Err(eof_in_body());
                }
            }
            buf.truncate(length);
            buf
        } else {
            while fill(stream, &mut buf, deadline)? > 0 {}
            buf
        };
        return Ok((status, headers, body));
    }
}

fn parse_head(head: &[u8]) -> io::Result<(u16, Vec<(String, String)>)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|code| code.parse::<u16>().ok());
    let status = match status {
        Some(status) if version.starts_with("HTTP/") => status,
        _ => return Err(invalid_data(format!("invalid status line {status_line:?}"))),
    };
    let mut headers = Vec::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid_data(format!("invalid header line {line:?}")));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok((status, headers))
}

/// Decodes a complete chunked body (trailers are skipped), or returns `None` if `buf` ends
/// before the last chunk and the trailer section do.
fn decode_chunked(buf: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_len) = find(&buf[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[pos..pos + line_len]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid_data(format!("invalid chunk size line {line:?}")))?;
        pos += line_len + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(line_len) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += line_len + 2;
                if line_len == 0 {
                    return Ok(Some(body));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(invalid_data("chunk not followed by CRLF".to_string()));
        }
        pos += size + 2;
    }
}

/// Reads once (at most until `deadline`) and appends to `buf`; returns the bytes read, 0 at EOF.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> io::Result<usize> {
    stream.set_read_timeout(Some(remaining(deadline)?))?;
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Err(timed_out()),
        Err(error) => Err(error),
    }
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { Err(timed_out()) } else { Ok(left) }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn annotate(error: io::Error, addr: SocketAddr, method: &str, path: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{method} http://{addr}{path}: {error}"))
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for the response")
}

fn eof_in_body() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the response body was complete")
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests;
