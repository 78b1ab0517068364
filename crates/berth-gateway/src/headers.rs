//! Header rewriting at the edge: hop-by-hop headers removed, `X-Forwarded-*`, `X-Request-Id` and W3C
//! `traceparent` kept or created, and `X-Source` set to the calling side (never trusted from outside).
//! Also what the edge itself says: `Alt-Svc` for HTTP/3 and the `Location` of an HTTPS redirect.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_SOURCE: HeaderName = HeaderName::from_static("x-source");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The elements of a comma-separated field value (RFC 9110 §5.6.1), trimmed; empty ones included.
pub(crate) fn list_tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// The host a request is for: its target's authority when it has one (the absolute form of HTTP/1.1, which
/// wins over `Host` by RFC 9112 §3.2.2, or HTTP/2's and HTTP/3's `:authority`), else its `Host`.
pub(crate) fn request_host<'r>(uri: &'r http::Uri, headers: &'r HeaderMap) -> Option<&'r str> {
    uri.host().or_else(|| headers.get(header::HOST).and_then(|host| host.to_str().ok()))
}

/// `Host` for the replica when the target has an authority: that authority, without any user part.
pub(crate) fn host_from_target(uri: &http::Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?.as_str();
    HeaderValue::from_str(authority.rsplit('@').next().unwrap_or(authority)).ok()
}

/// Who is calling: ingress traffic is `external`.
pub(crate) struct Forwarding<'a> {
    pub(crate) client_ip: IpAddr,
    pub(crate) proto: &'static str,
    /// The `X-Source` value (made once per gateway, not per request).
    pub(crate) source: &'a HeaderValue,
}

/// The fields the gateway adds to a request on its way to a replica. They stay out of the request's map:
/// the HTTP/1.1 encoder writes them straight after the client's fields (`upstream/h1.rs`), h2c puts them
/// into its copy of the map (`insert_into`).
/// New ids are bytes in place, not `HeaderValue`s: nothing is allocated for them on the way to a replica.
pub(crate) struct Added<'a> {
    forwarded_for: Option<HeaderValue>,
    proto: &'static str,
    forwarded_host: Option<HeaderValue>,
    source: &'a HeaderValue,
    /// Only when the client sent none (or a bad one); a good one stays in the map.
    request_id: Option<[u8; REQUEST_ID_LEN]>,
    traceparent: Option<[u8; TRACEPARENT_LEN]>,
}

impl Added<'_> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = (HeaderName, &[u8])> {
        [
            (X_FORWARDED_FOR, self.forwarded_for.as_ref().map(HeaderValue::as_bytes)),
            (X_FORWARDED_PROTO, Some(self.proto.as_bytes())),
            (X_FORWARDED_HOST, self.forwarded_host.as_ref().map(HeaderValue::as_bytes)),
            (X_SOURCE, Some(self.source.as_bytes())),
            (X_REQUEST_ID, self.request_id.as_ref().map(|id| &id[..])),
            (TRACEPARENT, self.traceparent.as_ref().map(|value| &value[..])),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }

    pub(crate) fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.insert(name, value);
            }
        }
    }
}

const REQUEST_ID_LEN: usize = 32;
/// `00-<32 hex trace id>-<16 hex parent id>-01`
const TRACEPARENT_LEN: usize = 55;

/// Rewrites a request's headers for the upstream: hop-by-hop fields and whatever a client may not set
/// (`X-Forwarded-*`, `X-Source`, a bad `X-Request-Id` or `traceparent`) leave the map, and what the gateway
/// sets instead comes back as `Added`, with the request id (kept or new) to echo to the client.
pub(crate) fn rewrite_request<'a>(
    headers: &mut HeaderMap,
    forwarding: &Forwarding<'a>,
    upgrade: bool,
) -> (HeaderValue, Added<'a>) {
    let te_trailers = headers.get(header::TE).is_some_and(|te| te.to_str().is_ok_and(|te| te.contains("trailers")));
    remove_hop_by_hop(headers, upgrade);
    if te_trailers {
        // gRPC needs `TE: trailers` end to end; it is the one TE value that may pass.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // One pass over the names says which of the gateway's own fields the client sent (usually none).
    let (mut prior_xff, mut xfp, mut xfh, mut source, mut request_id, mut traceparent) =
        (false, false, false, false, false, false);
    for name in headers.keys() {
        prior_xff |= name == X_FORWARDED_FOR;
        xfp |= name == X_FORWARDED_PROTO;
        xfh |= name == X_FORWARDED_HOST;
        source |= name == X_SOURCE;
        request_id |= name == X_REQUEST_ID;
        traceparent |= name == TRACEPARENT;
    }
    let forwarded_for = match prior_xff.then(|| headers.remove(&X_FORWARDED_FOR)).flatten() {
        Some(prior) => match prior.to_str() {
            Ok(prior) => HeaderValue::try_from(format!("{prior}, {}", forwarding.client_ip)).ok(),
            Err(_) => Some(ip_value(forwarding.client_ip)),
        },
        None => Some(client_ip_value(forwarding.client_ip)),
    };
    for (present, name) in [(xfp, X_FORWARDED_PROTO), (xfh, X_FORWARDED_HOST), (source, X_SOURCE)] {
        if present {
            headers.remove(name);
        }
    }
    let kept_id = if request_id { headers.get(&X_REQUEST_ID).filter(|id| is_sane_id(id)).cloned() } else { None };
    let (request_id, new_id) = match kept_id {
        Some(id) => (id, None),
        None => {
            if request_id {
                headers.remove(&X_REQUEST_ID);
            }
            let id = new_request_id();
            (id_value(&id), Some(id))
        }
    };
    let trace_ok =
        traceparent && headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok()).is_some_and(is_valid_traceparent);
    let new_traceparent = if trace_ok {
        None
    } else {
        if traceparent {
            headers.remove(&TRACEPARENT);
        }
        let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
        fill_hex(&mut value[3..35]);
        fill_hex(&mut value[36..52]);
        Some(value)
    };
    let added = Added {
        forwarded_for,
        proto: forwarding.proto,
        forwarded_host: headers.get(header::HOST).cloned(),
        source: forwarding.source,
        request_id: new_id,
        traceparent: new_traceparent,
    };
    (request_id, added)
}

/// `Alt-Svc` advertising HTTP/3 on `port` (of the same host) for a day.
pub(crate) fn alt_svc(port: u16) -> HeaderValue {
    HeaderValue::try_from(format!("h3=\":{port}\"; ma=86400")).unwrap_or(HeaderValue::from_static("clear"))
}

/// Where a plain request goes on HTTPS: `https://<host>[:<port>]<path and query>`, the port left out when
/// it is 443. `None` when the request names no usable host.
pub(crate) fn https_location(host: Option<&str>, port: u16, uri: &http::Uri) -> Option<HeaderValue> {
    let host = host?;
    let name = match host.strip_prefix('[') {
        Some(rest) => &host[..rest.find(']')? + 2],
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'@')) {
        return None;
    }
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 { format!("https://{name}{path}") } else { format!("https://{name}:{port}{path}") };
    HeaderValue::try_from(location).ok()
}

/// Removes hop-by-hop headers from an upstream response.
pub(crate) fn rewrite_response(headers: &mut HeaderMap, upgrade: bool) {
    remove_hop_by_hop(headers, upgrade);
}

/// Connection-scoped headers (RFC 9110 §7.6.1), and any header the `Connection` header names. An upgrade
/// keeps `Connection: upgrade` and `Upgrade`.
fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the (few) names finds which are there: most requests carry none, most responses only
    // `Connection: keep-alive`, and a lookup per name costs a hash each.
    let always: [HeaderName; 6] =
        [header::CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, header::TE, header::TRAILER, header::TRANSFER_ENCODING];
    let mut present = [false; 6];
    let mut has_upgrade = false;
    for name in headers.keys() {
        if let Some(idx) = always.iter().position(|always| always == name) {
            present[idx] = true;
        }
        has_upgrade |= name == header::UPGRADE;
    }
    if present[0] {
        // Names `Connection` lists beyond the ones removed anyway (rare: collected only when there).
        let is_other = |token: &str| {
            let token = token.trim();
            !(token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("upgrade")
                || always.iter().any(|always| token.eq_ignore_ascii_case(always.as_str())))
        };
        let tokens = || {
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
        };
        if tokens().any(is_other) {
            let named: Vec<HeaderName> = tokens()
                .filter(|token| is_other(token))
                .filter_map(|name| HeaderName::try_from(name.trim()).ok())
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
    for (name, present) in always.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// An IP address as a header value, without `fmt` for IPv4 (on every request for `X-Forwarded-For`).
/// `ip_value` of the client, kept per thread for the last address seen: a connection's requests (and a
/// busy client's connections) share one value instead of formatting and allocating it each time.
fn client_ip_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((seen, value)) if *seen == ip => value.clone(),
        _ => {
            let value = ip_value(ip);
            *last = Some((ip, value.clone()));
            value
        }
    })
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
    };
    let mut out = [0u8; 15];
    let mut len = 0;
    for (idx, octet) in v4.octets().into_iter().enumerate() {
        if idx > 0 {
            out[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for digit in &digits[skip..] {
            out[len] = b'0' + digit;
            len += 1;
        }
    }
    HeaderValue::from_bytes(&out[..len]).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The request id of an answer the gateway gives itself (a cache hit): the client's if sane, else a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(id) if is_sane_id(id) => id.clone(),
        _ => id_value(&new_request_id()),
    }
}

/// 32 lowercase hex digits.
/// A new request id: 32 random lowercase hex digits.
fn new_request_id() -> [u8; REQUEST_ID_LEN] {
    let mut id = [0u8; REQUEST_ID_LEN];
    fill_hex(&mut id);
    id
}

/// An id of hex digits as a header value (always valid; "0" would only stand in for a broken generator).
fn id_value(id: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(id).unwrap_or(HeaderValue::from_static("0"))
}

pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade")))
}

fn is_sane_id(id: &HeaderValue) -> bool {
    (1..=200).contains(&id.len()) && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// `version-traceid-parentid-flags`, lowercase hex, ids not all zero (W3C Trace Context).
fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// Fills `out` with lowercase hex digits of a fast per-thread generator: unique for correlation, not secret.
fn fill_hex(out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for chunk in out.chunks_mut(16) {
        let word = crate::balance::random();
        for (idx, digit) in chunk.iter_mut().enumerate() {
            *digit = HEX[((word >> (idx * 4)) & 0xf) as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static EXTERNAL: HeaderValue = HeaderValue::from_static("external");

    fn forwarding() -> Forwarding<'static> {
        Forwarding { client_ip: [10, 0, 0, 7].into(), proto: "http", source: &EXTERNAL }
    }

    /// `rewrite_request`, then the added fields put into the map, as a replica sees them.
    fn rewrite(headers: &mut HeaderMap, upgrade: bool) -> HeaderValue {
        let (id, added) = rewrite_request(headers, &forwarding(), upgrade);
        added.insert_into(headers);
        id
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn forwarding_headers_are_added_and_source_cannot_be_forged() {
        let mut h = headers(&[("host", "web.example"), ("x-source", "billing"), ("x-forwarded-for", "1.2.3.4")]);
        rewrite(&mut h, false);
        assert_eq!(h["x-source"], "external");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "web.example");
    }

    #[test]
    fn request_id_and_traceparent_are_kept_when_valid_and_created_otherwise() {
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut kept = headers(&[("x-request-id", "abc-123"), ("traceparent", trace)]);
        let id = rewrite(&mut kept, false);
        assert_eq!(id, "abc-123");
        assert_eq!(kept["traceparent"], trace);
        let mut made = headers(&[("traceparent", "garbage")]);
        let id = rewrite(&mut made, false);
        assert_eq!(id.len(), 32);
        assert!(is_valid_traceparent(made["traceparent"].to_str().expect("ascii")));
        let other = rewrite(&mut HeaderMap::new(), false);
        assert_ne!(id, other);
    }

    #[test]
    fn hop_by_hop_headers_are_removed_but_te_trailers_passes() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
        ]);
        rewrite(&mut h, false);
        for gone in ["connection", "x-secret", "keep-alive", "upgrade"] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn ip_values_match_display() {
        for ip in
            ["0.0.0.0", "10.0.0.7", "127.0.0.1", "192.168.100.255", "1.20.255.9", "::1", "2001:db8::8a2e:370:7334"]
        {
            let ip: IpAddr = ip.parse().expect("test ip");
            assert_eq!(ip_value(ip), ip.to_string().as_str());
        }
    }

    #[test]
    fn https_location_keeps_host_and_path_and_swaps_the_port() {
        let check = |host: Option<&str>, port: u16, uri: &str, expected: Option<&str>| {
            let uri: http::Uri = uri.parse().expect("test uri");
            let got = https_location(host, port, &uri);
            assert_eq!(got.as_ref().map(|v| v.to_str().expect("ascii")), expected, "{host:?} {port} {uri}");
        };
        check(Some("web.example:8080"), 8443, "/a/b?c=d", Some("https://web.example:8443/a/b?c=d"));
        check(Some("web.example"), 443, "/", Some("https://web.example/"));
        check(Some("[::1]:80"), 8443, "/x", Some("https://[::1]:8443/x"));
        check(Some("evil.example/x"), 443, "/", None);
        check(None, 443, "/", None);
        assert_eq!(alt_svc(8443), "h3=\":8443\"; ma=86400");
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        rewrite(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }
}
