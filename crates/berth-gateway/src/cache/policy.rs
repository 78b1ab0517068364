//! What may be stored and for how long: the route's `CachePolicy` against the replica's answer
//! (`Cache-Control`, `Set-Cookie`, `Vary`, `Age`, status) and the request (`Authorization`). Pure: no clock,
//! no IO, so every rule is a unit test.
//!
//! A hand-written subset of RFC 9111 for a shared cache, because the route's bound must hold whatever the
//! replica says: the replica can shorten the freshness lifetime (`s-maxage`, `max-age`), never lengthen it,
//! and nothing older than `max_age + stale_while_revalidate` is ever served.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};

use crate::table::CachePolicy;

/// How long a stored response may be used, counted from the response's age 0 (see `Freshness::initial_age`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Served as a hit while younger than this.
    pub(crate) fresh_for: Duration,
    /// Served stale (with one background refresh) while younger than this; never older.
    pub(crate) serve_for: Duration,
    /// The age the response already had when the gateway got it (the replica's `Age` header).
    pub(crate) initial_age: Duration,
    /// The request headers (lowercase names) the response varies on.
    pub(crate) vary: Vec<HeaderName>,
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Status,
    NoStore,
    Private,
    NoCache,
    SetCookie,
    Authorization,
    VaryStar,
    /// Already too old to be served, or a lifetime of zero.
    Expired,
}

/// The cacheable statuses (those RFC 9110 lets a cache reuse without explicit freshness, minus 206 and 501,
/// which the gateway does not store).
pub(crate) const CACHEABLE_STATUSES: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];

/// Whether a request may use the cache at all: GET or HEAD, and without `Authorization` unless the route
/// opted in.
pub(crate) fn request_uses_cache(policy: &CachePolicy, method: &http::Method, headers: &HeaderMap) -> bool {
    let method_ok = method == http::Method::GET || method == http::Method::HEAD;
    method_ok && (policy.private || !headers.contains_key(header::AUTHORIZATION))
}

/// Whether the answer of a replica may be stored, and for how long.
pub(crate) fn freshness(
    policy: &CachePolicy,
    request_has_authorization: bool,
    status: u16,
    headers: &HeaderMap,
) -> Result<Freshness, NotStored> {
    if !CACHEABLE_STATUSES.contains(&status) {
        return Err(NotStored::Status);
    }
    let directives = CacheControl::parse(headers);
    // `no-cache` means "revalidate before every use"; without conditional requests that is "do not store".
    if directives.no_cache {
        return Err(NotStored::NoCache);
    }
    if !policy.private {
        if directives.no_store {
            return Err(NotStored::NoStore);
        }
        if directives.private {
            return Err(NotStored::Private);
        }
        if headers.contains_key(header::SET_COOKIE) {
            return Err(NotStored::SetCookie);
        }
        if request_has_authorization {
            return Err(NotStored::Authorization);
        }
    }
    let mut vary = Vec::new();
    for name in headers.get_all(header::VARY).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')) {
        let name = name.trim();
        if name == "*" {
            return Err(NotStored::VaryStar);
        }
        if let Ok(name) = HeaderName::try_from(name.to_ascii_lowercase())
            && !vary.contains(&name)
        {
            vary.push(name);
        }
    }
    vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));

    let replica_says = directives.s_maxage.or(directives.max_age);
    let fresh_for = replica_says.map_or(policy.max_age, |secs| policy.max_age.min(Duration::from_secs(secs)));
    let stale_for = if directives.must_revalidate { Duration::ZERO } else { policy.stale_while_revalidate };
    let serve_for = fresh_for + stale_for;
    let initial_age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, |secs| Duration::from_secs(secs.min(u64::from(u32::MAX))));
    if fresh_for.is_zero() || initial_age >= serve_for {
        return Err(NotStored::Expired);
    }
    Ok(Freshness { fresh_for, serve_for, initial_age, vary })
}

/// The `Cache-Control` directives the gateway acts on.
#[derive(Debug, Default)]
struct CacheControl {
    no_store: bool,
    no_cache: bool,
    private: bool,
    must_revalidate: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
}

impl CacheControl {
    /// Every `Cache-Control` header, directives case-insensitive. A duplicated or malformed `max-age`
    /// counts as 0 (RFC 9111 §4.2.1: treat an invalid freshness lifetime as stale).
    fn parse(headers: &HeaderMap) -> CacheControl {
        let mut res = CacheControl::default();
        let values = headers.get_all(header::CACHE_CONTROL);
        for directive in values.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')) {
            let (name, argument) = match directive.split_once('=') {
                Some((name, argument)) => (name.trim(), Some(argument.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let seconds = |previous: Option<u64>| {
                let parsed = argument.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
                Some(if previous.is_some() { 0 } else { parsed })
            };
            match name.to_ascii_lowercase().as_str() {
                "no-store" => res.no_store = true,
                // `private="field"` and `no-cache="field"` name fields; honoured as the whole response.
                "no-cache" => res.no_cache = true,
                "private" => res.private = true,
                "must-revalidate" | "proxy-revalidate" => res.must_revalidate = true,
                "max-age" => res.max_age = seconds(res.max_age),
                "s-maxage" => res.s_maxage = seconds(res.s_maxage),
                _ => {}
            }
        }
        res
    }
}

#[cfg(test)]
mod tests;
