//! The response cache of routes with a `CachePolicy`: GET and HEAD answers stored in memory, shared by
//! every gateway worker, and served with `X-Cache: HIT|MISS|STALE` and `Age`.
//!
//! - Fresh (younger than the freshness lifetime): served from memory, `HIT`.
//! - Stale but younger than `lifetime + stale_while_revalidate`: served from memory, `STALE`, and one
//!   background refresh starts for the key (single-flight: later stale hits join it rather than start more).
//!   A refresh that fails (5xx, timeout) leaves the stale copy in place, which is served until its bound.
//! - Anything older is never served: a miss. Concurrent misses of one key are coalesced: one request goes
//!   upstream, the others wait for its answer; if that answer cannot be stored, each goes upstream itself.
//!
//! Memory is bounded by `GatewayConfig::cache_max_bytes`: moka's TinyLFU admission and eviction, weighted
//! by each entry's bytes (body, headers, key and a fixed overhead, so entries are bounded too: at most
//! `cache_max_bytes / ENTRY_OVERHEAD`). A body over `cache_max_entry_bytes` streams through uncached.
//!
//! Submodules: `policy` (what is stored, for how long; pure), `key` (keys and `Vary`), `body` (reading a
//! miss's body up to the limit), `metrics`.

mod body;
mod key;
mod metrics;
mod policy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use moka::notification::RemovalCause;
use tracing::debug;

use crate::balance::Groups;
use crate::error::ProxyError;

use crate::headers::{self, X_REQUEST_ID};
use crate::proxy::{self, ClientBody, ResBody, Target};
use crate::table::CachePolicy;

pub(crate) use body::Spliced;
pub use metrics::{CacheMetrics, RouteCacheMetrics};

use body::Buffered;
use key::{Key, vary_values};
use metrics::Lookup;
use policy::Freshness;

pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Bytes charged to every entry on top of its body, headers and key: the `Arc`s, the map slot, moka's
/// bookkeeping. It also bounds the number of entries: `cache_max_bytes / ENTRY_OVERHEAD`.
const ENTRY_OVERHEAD: usize = 512;

/// A route's cache settings and counters, compiled into the routing snapshot.
pub(crate) struct RouteCache {
    pub(crate) policy: CachePolicy,
    pub(crate) metrics: Arc<RouteCacheMetrics>,
}

/// The cache of one gateway, shared by its workers. Cheap to clone; all clones are one cache.
#[derive(Clone)]
pub(crate) struct Cache {
    store: moka::sync::Cache<Key, Slot>,
    /// Misses and refreshes under way, by key: the coalescing point.
    flights: Arc<Mutex<HashMap<Key, Arc<Flight>>>>,
    max_entry_bytes: usize,
    /// Bumped by every purge: a fetch that started before a purge does not store what it got.
    generation: Arc<AtomicU64>,
}

/// What the store holds under a key.
#[derive(Clone)]
enum Slot {
    /// Under a primary key: the response varies on these request headers; look up the variant key.
    Vary(Arc<VaryMarker>),
    Response(Arc<Stored>),
}

struct VaryMarker {
    names: Vec<HeaderName>,
    /// Kept as long as the variant that set it may be served.
    keep_for: Duration,
}

/// A stored response.
pub(crate) struct Stored {
    status: StatusCode,
    /// As the client gets them, without the fetching request's `X-Request-Id`.
    headers: HeaderMap,
    body: Bytes,
    /// When the gateway got it.
    fetched: Instant,
    freshness: Freshness,
    /// The values of the request headers named by `freshness.vary` in the request that fetched it.
    vary_values: Vec<Option<Vec<u8>>>,
}

/// A fetch under way; waiters subscribe to its result.
struct Flight {
    result: tokio::sync::watch::Sender<Option<Fetched>>,
    generation: u64,
}

#[derive(Clone)]
enum Fetched {
    Stored(Arc<Stored>),
    /// The answer could not be stored (status, headers, size, error): waiters go upstream themselves.
    NotStored,
    /// The leading request went away before an answer: waiters look again, and one of them leads.
    Abandoned,
}

/// How fit a stored response is to be served now.
#[derive(Debug, PartialEq, Eq)]
enum Usable {
    Fresh,
    Stale,
    TooOld,
}

enum Role {
    Lead(Box<Lead>),
    Wait(Arc<Flight>),
}

/// The right (and duty) to fetch a key. Dropping it unfinished tells the waiters to look again.
struct Lead {
    cache: Cache,
    key: Key,
    flight: Arc<Flight>,
    finished: bool,
}

/// Serves a request to a route with a cache (`route.cache` is `cached`). Every response carries `X-Cache`
/// and `Age`; errors are answered here too, so they carry them as well.
pub(crate) async fn serve(
    target: Target<'_>,
    cached: &RouteCache,
    req: Request<ClientBody>,
    started: Instant,
) -> Response<ResBody> {
    let Target { shared, service, .. } = target;
    let cache = &shared.cache;
    if !policy::request_uses_cache(&cached.policy, req.method(), req.headers()) {
        cached.metrics.lookup(Lookup::Miss);
        let res = proxy::proxy(target, req.map(Some), started).await;
        return answer_miss(res);
    }
    let host = headers::request_host(req.uri(), req.headers());
    let primary = Key::primary(&service.name, req.method(), host, req.uri());
    loop {
        let (key, found) = cache.lookup(&primary, req.headers());
        if let Some(stored) = found {
            let now = Instant::now();
            match stored.usable(now) {
                Usable::Fresh => {
                    cached.metrics.lookup(Lookup::Hit);
                    return stored.response(now, "HIT", headers::request_id(req.headers()));
                }
                Usable::Stale => {
                    cached.metrics.lookup(Lookup::Stale);
                    cache.refresh(target, key, &req);
                    return stored.response(now, "STALE", headers::request_id(req.headers()));
                }
                Usable::TooOld => {}
            }
        }
        match cache.join_or_lead(key) {
            Role::Lead(lead) => {
                cached.metrics.lookup(Lookup::Miss);
                let fetched = fetch(target, cached, req.map(Some), started, lead).await;
                return answer_miss(fetched);
            }
            Role::Wait(flight) => {
                let mut result = flight.result.subscribe();
                let fetched = match result.wait_for(Option::is_some).await {
                    Ok(fetched) => fetched.clone().unwrap_or(Fetched::Abandoned),
                    Err(_) => Fetched::Abandoned,
                };
                match fetched {
                    Fetched::Abandoned => continue,
                    Fetched::Stored(stored) if stored.matches(req.headers()) => {
                        cached.metrics.lookup(Lookup::Miss);
                        return stored.response(Instant::now(), "MISS", headers::request_id(req.headers()));
                    }
                    Fetched::Stored(_) | Fetched::NotStored => {
                        cached.metrics.lookup(Lookup::Miss);
                        let res = proxy::proxy(target, req.map(Some), started).await;
                        return answer_miss(res);
                    }
                }
            }
        }
    }
}

impl Cache {
    pub(crate) fn new(max_bytes: u64, max_entry_bytes: usize, metrics: Arc<CacheMetrics>) -> Cache {
        let removed = metrics.clone();
        let store = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Key, slot: &Slot| slot.weight(key))
            .expire_after(SlotExpiry)
            .eviction_listener(move |key: Arc<Key>, slot: Slot, cause| {
                let evicted = cause == RemovalCause::Size;
                removed.removed(&key.service, u64::from(slot.weight(&key)), slot.is_response(), evicted);
            })
            .build();
        Cache {
            store,
            flights: Arc::new(Mutex::new(HashMap::new())),
            max_entry_bytes,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Removes the stored responses of `service` (under `path_prefix` only, if given); returns how many.
    pub(crate) fn purge(&self, service: &str, path_prefix: Option<&str>) -> usize {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut n_purged = 0;
        for (key, slot) in self.store.iter() {
            if key.service == service && path_prefix.is_none_or(|prefix| key.path_under(prefix)) {
                self.store.invalidate(&*key);
                n_purged += usize::from(slot.is_response());
            }
        }
        // Apply the removals now, so the byte and entry gauges reflect the purge at once.
        self.store.run_pending_tasks();
        n_purged
    }

    /// The key a request's response is (or would be) stored under, and the response if there is one.
    fn lookup(&self, primary: &Key, headers: &HeaderMap) -> (Key, Option<Arc<Stored>>) {
        match self.store.get(primary) {
            Some(Slot::Response(stored)) => (primary.clone(), Some(stored)),
            Some(Slot::Vary(marker)) => {
                let variant = primary.variant(&marker.names, headers);
                let stored = match self.store.get(&variant) {
                    Some(Slot::Response(stored)) => Some(stored),
                    _ => None,
                };
                (variant, stored)
            }
            None => (primary.clone(), None),
        }
    }

    fn join_or_lead(&self, key: Key) -> Role {
        let mut flights = lock(&self.flights);
        if let Some(flight) = flights.get(&key) {
            return Role::Wait(flight.clone());
        }
        let flight = Arc::new(Flight {
            result: tokio::sync::watch::Sender::new(None),
            generation: self.generation.load(Ordering::SeqCst),
        });
        flights.insert(key.clone(), flight.clone());
        Role::Lead(Box::new(Lead { cache: self.clone(), key, flight, finished: false }))
    }

    /// Starts a background refresh of `key` on this worker's runtime, unless a fetch of it is under way.
    fn refresh(&self, target: Target<'_>, key: Key, req: &Request<ClientBody>) {
        let Role::Lead(lead) = self.join_or_lead(key) else { return };
        let mut refresh = Request::new(None);
        *refresh.method_mut() = req.method().clone();
        *refresh.uri_mut() = req.uri().clone();
        *refresh.version_mut() = req.version();
        *refresh.headers_mut() = req.headers().clone();
        let (shared, client, service, ingress) =
            (target.shared.clone(), target.client.clone(), target.service.clone(), target.ingress.clone());
        let peer = target.peer;
        tokio::spawn(async move {
            let route = service.route_for(refresh.uri().path());
            let Some(cached) = &route.cache else { return };
            let key = lead.key.clone();
            let started = Instant::now();
            // A refresh serves every client of the entry, so it goes to the service's shared replicas.
            let target = Target {
                shared: &shared,
                client: &client,
                service: &service,
                route,
                groups: Groups::Shared,
                ingress: &ingress,
                peer,
            };
            match fetch(target, cached, refresh, started, lead).await {
                Ok((res, stored)) => {
                    // An answer that may not be stored replaces nothing unless the replica meant it (not a
                    // 5xx): then the stale copy must go too.
                    if stored.is_none() && !res.status().is_server_error() {
                        shared.cache.store.invalidate(&key);
                    }
                    debug!(service = %service.name, status = %res.status(), stored = stored.is_some(), "cache refreshed");
                }
                Err(error) => debug!(service = %service.name, error = %error, "cache refresh failed; serving stale"),
            }
        });
    }

    /// Stores `stored` (fetched for `key`) unless a purge happened since the fetch started.
    fn insert(&self, key: &Key, stored: &Arc<Stored>, generation: u64, metrics: &CacheMetrics) {
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let primary = key.primary_key();
        let vary = &stored.freshness.vary;
        let put = |key: Key, slot: Slot| {
            metrics.added(&key.service, u64::from(slot.weight(&key)), slot.is_response());
            self.store.insert(key, slot);
        };
        if vary.is_empty() {
            put(primary, Slot::Response(stored.clone()));
        } else {
            let variant = primary.variant(vary, &values_as_headers(vary, &stored.vary_values));
            let keep_for = stored.freshness.serve_for;
            put(primary, Slot::Vary(Arc::new(VaryMarker { names: vary.clone(), keep_for })));
            put(variant, Slot::Response(stored.clone()));
        }
        // Evict now rather than at moka's next housekeeping, so the byte bound holds after every store (and
        // the gauges say so). Stores are rare (one per key per freshness lifetime), so the cost is too.
        self.store.run_pending_tasks();
    }
}

/// Sends the request upstream as the one fetch of `lead.key`, and stores the answer if it may be.
/// Returns the response for the client and what was stored.
async fn fetch(
    target: Target<'_>,
    cached: &RouteCache,
    req: Request<Option<ClientBody>>,
    started: Instant,
    lead: Box<Lead>,
) -> Result<(Response<ResBody>, Option<Arc<Stored>>), ProxyError> {
    let Target { shared, route, .. } = target;
    let request_headers = req.headers().clone();
    let has_authorization = request_headers.contains_key(header::AUTHORIZATION);
    let mut res = match proxy::proxy(target, req, started).await {
        Ok(res) => res,
        Err(error) => {
            lead.finish(Fetched::NotStored);
            return Err(error);
        }
    };
    proxy::complete_headers(&mut res);
    let Ok(freshness) = policy::freshness(&cached.policy, has_authorization, res.status().as_u16(), res.headers())
    else {
        lead.finish(Fetched::NotStored);
        return Ok((res, None));
    };
    let (parts, body) = res.into_parts();
    let Either::Left(Either::Left(incoming)) = body else {
        lead.finish(Fetched::NotStored);
        return Ok((Response::from_parts(parts, body), None));
    };
    let cache = &shared.cache;
    let deadline = started + route.timeout;
    let body = match body::buffer(incoming, cache.max_entry_bytes, deadline).await {
        Ok(Buffered::Complete(body)) => body,
        Ok(Buffered::Partial(spliced)) => {
            lead.finish(Fetched::NotStored);
            return Ok((Response::from_parts(parts, Either::Left(Either::Right(Box::new(spliced)))), None));
        }
        Err(error) => {
            lead.finish(Fetched::NotStored);
            return Err(ProxyError::Upstream(format!("the replica's response body failed: {error}")));
        }
    };
    let mut stored_headers = parts.headers.clone();
    stored_headers.remove(X_REQUEST_ID);
    let vary_values = vary_values(&freshness.vary, &request_headers);
    let stored = Arc::new(Stored {
        status: parts.status,
        headers: stored_headers,
        body: body.clone(),
        fetched: Instant::now(),
        freshness,
        vary_values,
    });
    cache.insert(&lead.key, &stored, lead.flight.generation, &shared.metrics.cache);
    cached.metrics.stored();
    lead.finish(Fetched::Stored(stored.clone()));
    let mut res = Response::from_parts(parts, Either::Right(Full::new(body)));
    set_cache_headers(res.headers_mut(), "MISS", stored.age(Instant::now()));
    Ok((res, Some(stored)))
}

/// A miss's answer (or error) with `X-Cache: MISS`, and `Age` unless the fetch already set it.
fn answer_miss(res: Result<impl Into<MissAnswer>, ProxyError>) -> Response<ResBody> {
    let mut res = match res {
        Ok(answer) => answer.into().0,
        Err(error) => {
            debug!(error = %error, "request failed");
            error.into_response()
        }
    };
    proxy::complete_headers(&mut res);
    if !res.headers().contains_key(X_CACHE) {
        let age = res.headers().get(header::AGE).cloned().unwrap_or(HeaderValue::from_static("0"));
        res.headers_mut().insert(X_CACHE, HeaderValue::from_static("MISS"));
        res.headers_mut().insert(header::AGE, age);
    }
    res
}

/// A response for `answer_miss`: straight from the proxy, or from a fetch.
struct MissAnswer(Response<ResBody>);

impl From<Response<ResBody>> for MissAnswer {
    fn from(res: Response<ResBody>) -> Self {
        MissAnswer(res)
    }
}

impl From<(Response<ResBody>, Option<Arc<Stored>>)> for MissAnswer {
    fn from((res, _): (Response<ResBody>, Option<Arc<Stored>>)) -> Self {
        MissAnswer(res)
    }
}

fn set_cache_headers(headers: &mut HeaderMap, outcome: &'static str, age: Duration) {
    headers.insert(X_CACHE, HeaderValue::from_static(outcome));
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
}

/// A header map holding `values` under `names` (to rebuild a variant key from a stored response).
fn values_as_headers(names: &[HeaderName], values: &[Option<Vec<u8>>]) -> HeaderMap {
    let mut res = HeaderMap::new();
    for (name, value) in names.iter().zip(values) {
        if let Some(value) = value.as_ref().and_then(|value| HeaderValue::from_bytes(value).ok()) {
            res.insert(name.clone(), value);
        }
    }
    res
}

impl Stored {
    fn age(&self, now: Instant) -> Duration {
        self.freshness.initial_age + now.saturating_duration_since(self.fetched)
    }

    fn usable(&self, now: Instant) -> Usable {
        let age = self.age(now);
        if age < self.freshness.fresh_for {
            Usable::Fresh
        } else if age < self.freshness.serve_for {
            Usable::Stale
        } else {
            Usable::TooOld
        }
    }

    /// Whether this response is the variant a request with `headers` gets.
    fn matches(&self, headers: &HeaderMap) -> bool {
        vary_values(&self.freshness.vary, headers) == self.vary_values
    }

    fn response(&self, now: Instant, outcome: &'static str, request_id: HeaderValue) -> Response<ResBody> {
        let mut res = Response::new(Either::Right(Full::new(self.body.clone())));
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers.clone();
        set_cache_headers(res.headers_mut(), outcome, self.age(now));
        res.headers_mut().insert(X_REQUEST_ID, request_id);
        res
    }
}

impl Slot {
    fn is_response(&self) -> bool {
        matches!(self, Slot::Response(_))
    }

    /// Bytes charged against `cache_max_bytes`.
    fn weight(&self, key: &Key) -> u32 {
        let value = match self {
            Slot::Vary(marker) => marker.names.iter().map(|name| name.as_str().len()).sum(),
            Slot::Response(stored) => {
                let headers: usize =
                    stored.headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum();
                stored.body.len() + headers
            }
        };
        u32::try_from(ENTRY_OVERHEAD + key.weight() + value).unwrap_or(u32::MAX)
    }

    /// How long the entry may still be served, from `now`.
    fn remaining(&self, now: Instant) -> Duration {
        match self {
            Slot::Vary(marker) => marker.keep_for,
            Slot::Response(stored) => stored.freshness.serve_for.saturating_sub(stored.age(now)),
        }
    }
}

/// Expires each entry when it may no longer be served, so dead entries do not hold memory until evicted.
struct SlotExpiry;

impl moka::Expiry<Key, Slot> for SlotExpiry {
    fn expire_after_create(&self, _key: &Key, slot: &Slot, created_at: Instant) -> Option<Duration> {
        Some(slot.remaining(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        slot: &Slot,
        updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.remaining(updated_at))
    }
}

impl Lead {
    fn finish(mut self, fetched: Fetched) {
        self.finished = true;
        self.publish(fetched);
    }

    /// Takes the flight off the map (so later requests look the store up again), then wakes the waiters.
    fn publish(&self, fetched: Fetched) {
        let mut flights = lock(&self.cache.flights);
        if flights.get(&self.key).is_some_and(|flight| Arc::ptr_eq(flight, &self.flight)) {
            flights.remove(&self.key);
        }
        drop(flights);
        self.flight.result.send_replace(Some(fetched));
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if !self.finished {
            self.publish(Fetched::Abandoned);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
