//! A replica's response fields as they were read: lines of the head's bytes, not a `HeaderMap`.
//!
//! Most responses go back to an HTTP/1.1 client served by `serve_h1`, which writes these lines out as they
//! are (runs of adjacent lines in one copy) ahead of the fields the gateway adds to the response's map. Every
//! other consumer (hyper's listeners, HTTP/3, the cache) first merges them into the map
//! (`proxy::complete_headers`). Either way the same rule decides what the client sees: the replica's fields
//! first, minus any the gateway sets itself (a name in the map replaces the replica's, except `Set-Cookie`,
//! which adds to them), then the gateway's.
//!
//! Hop-by-hop fields never get here: the head's parser (`parse_head`) drops them, and falls back to a map
//! for the rare head that needs more (a `101`, or a `Connection` naming other fields).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// The kept fields of one response head.
pub(crate) struct ReplicaFields {
    /// The whole head as read (status line included); lines are ranges of it.
    head: Bytes,
    lines: SmallVec<[Line; 8]>,
}

/// One field: its name at `start..name_end`, its value at `value_start..value_end` (trimmed).
#[derive(Clone, Copy)]
struct Line {
    start: u32,
    name_end: u32,
    value_start: u32,
    value_end: u32,
    /// Whether a CRLF follows the value directly (the line can be copied with the next one in one go).
    crlf: bool,
    kind: Kind,
}

/// What the writers need to know of a field without comparing its name again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Other,
    ContentLength,
    Date,
}

impl ReplicaFields {
    pub(super) fn new(head: Bytes) -> ReplicaFields {
        ReplicaFields { head, lines: SmallVec::new() }
    }

    /// Adds a field whose name and value are slices of the head.
    pub(super) fn push(&mut self, name: &[u8], value: &[u8], kind: Kind) {
        let base = self.head.as_ptr() as usize;
        let at = |slice: &[u8]| (slice.as_ptr() as usize - base) as u32;
        let (start, value_start) = (at(name), at(value));
        let value_end = value_start + value.len() as u32;
        let crlf = self.head.get(value_end as usize..value_end as usize + 2) == Some(b"\r\n");
        self.lines.push(Line { start, name_end: start + name.len() as u32, value_start, value_end, crlf, kind });
    }

    /// Drops the `Content-Length` fields (a `Transfer-Encoding` overrides them, a 204 has none).
    pub(super) fn drop_length(&mut self) {
        self.lines.retain(|line| line.kind != Kind::ContentLength);
    }

    fn name(&self, line: &Line) -> &[u8] {
        &self.head[line.start as usize..line.name_end as usize]
    }

    /// The lines the client gets beside `gateway`'s fields.
    fn kept<'a>(&'a self, gateway: &'a HeaderMap) -> impl Iterator<Item = &'a Line> + 'a {
        let replacing: SmallVec<[&HeaderName; 4]> = gateway.keys().filter(|name| *name != header::SET_COOKIE).collect();
        self.lines.iter().filter(move |line| {
            let name = self.name(line);
            !replacing.iter().any(|replacing| replacing.as_str().as_bytes().eq_ignore_ascii_case(name))
        })
    }

    /// Writes the kept lines as HTTP/1.1 fields, without `Content-Length` when the writer frames the body
    /// itself (`own_length`). Returns whether a `Date` was among them.
    pub(crate) fn write(&self, out: &mut Vec<u8>, gateway: &HeaderMap, own_length: bool) -> bool {
        let mut has_date = false;
        // A run of adjacent lines, copied in one go: `start..end` of the head, without the last CRLF.
        let mut run: Option<(usize, usize)> = None;
        let mut joins = false;
        for line in self.kept(gateway) {
            if own_length && line.kind == Kind::ContentLength {
                continue;
            }
            has_date |= line.kind == Kind::Date;
            let (start, end) = (line.start as usize, line.value_end as usize);
            run = match run {
                Some((run_start, run_end)) if joins && start == run_end + 2 => Some((run_start, end)),
                Some((run_start, run_end)) => {
                    out.extend_from_slice(&self.head[run_start..run_end]);
                    out.extend_from_slice(b"\r\n");
                    Some((start, end))
                }
                None => Some((start, end)),
            };
            joins = line.crlf;
        }
        if let Some((run_start, run_end)) = run {
            out.extend_from_slice(&self.head[run_start..run_end]);
            out.extend_from_slice(b"\r\n");
        }
        has_date
    }

    /// Puts the kept fields into `headers`, ahead of the gateway's fields already there.
    pub(crate) fn merge_into(self, headers: &mut HeaderMap) {
        let gateway = std::mem::take(headers);
        headers.reserve(self.lines.len() + gateway.len());
        for line in self.kept(&gateway) {
            let name = HeaderName::from_bytes(self.name(line));
            let value =
                HeaderValue::from_maybe_shared(self.head.slice(line.value_start as usize..line.value_end as usize));
            // httparse checked both with the same rules; a field that still fails is left out.
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        let mut last = None;
        for (name, value) in gateway {
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                headers.append(name.clone(), value);
            }
        }
    }

    /// The fields as a map of their own (a head that needs one).
    pub(super) fn into_map(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.merge_into(&mut headers);
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of `head` as `parse_head` would keep them: every field, lengths and dates marked.
    fn fields(head: &'static [u8]) -> ReplicaFields {
        let head = Bytes::from_static(head);
        let mut parsed = [httparse::EMPTY_HEADER; 16];
        let mut res = httparse::Response::new(&mut parsed);
        assert!(res.parse(&head).expect("head").is_complete());
        let mut fields = ReplicaFields::new(head.clone());
        for field in res.headers.iter() {
            let kind = match field.name.to_ascii_lowercase().as_str() {
                "content-length" => Kind::ContentLength,
                "date" => Kind::Date,
                _ => Kind::Other,
            };
            fields.push(field.name.as_bytes(), field.value, kind);
        }
        fields
    }

    fn written(fields: &ReplicaFields, gateway: &HeaderMap, own_length: bool) -> (String, bool) {
        let mut out = Vec::new();
        let has_date = fields.write(&mut out, gateway, own_length);
        (String::from_utf8(out).expect("text"), has_date)
    }

    const HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d\r\nX-Request-Id: theirs\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nAge:  7 \r\n\r\n";

    #[test]
    fn lines_go_out_as_read_less_what_the_gateway_sets_or_frames_itself() {
        let fields = fields(HEAD);
        let (out, has_date) = written(&fields, &HeaderMap::new(), false);
        assert_eq!(
            out,
            "Server: s\r\nDate: d\r\nX-Request-Id: theirs\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nAge:  7\r\n"
        );
        assert!(has_date);

        let mut gateway = HeaderMap::new();
        gateway.insert("x-request-id", HeaderValue::from_static("ours"));
        gateway.insert(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        let (out, _) = written(&fields, &gateway, true);
        assert_eq!(out, "Server: s\r\nDate: d\r\nSet-Cookie: a=1\r\nAge:  7\r\n", "replaced, framed, and kept");
    }

    #[test]
    fn a_dropped_length_and_a_missing_date_show() {
        let mut fields = fields(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nvia: x\r\n\r\n");
        fields.drop_length();
        assert_eq!(written(&fields, &HeaderMap::new(), false), ("via: x\r\n".to_owned(), false));
    }

    #[test]
    fn merged_fields_come_first_and_the_gateway_replaces_all_but_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("ours"));
        headers.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        headers.append(header::SET_COOKIE, HeaderValue::from_static("c=3"));
        fields(HEAD).merge_into(&mut headers);
        let all: Vec<(String, String)> =
            headers.iter().map(|(name, value)| (name.to_string(), value.to_str().expect("text").to_owned())).collect();
        let pairs: Vec<(&str, &str)> = all.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("server", "s"),
                ("date", "d"),
                ("content-length", "5"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("set-cookie", "c=3"),
                ("age", "7"),
                ("x-request-id", "ours"),
            ]
        );
    }
}
