//! The request path: pick an endpoint, send, and hide what can be hidden of a failure.
//!
//! Retry rules: a request that never reached a replica (connect failure) is retried elsewhere whatever its
//! method; 502/503/504, resets and per-try timeouts are retried only for idempotent methods and only within
//! the retry budget; a request whose endpoint gets ejected while it waits moves elsewhere (idempotent only).
//! A body can only be replayed when it was small enough to buffer; otherwise there is one attempt.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use smallvec::SmallVec;
use tracing::debug;

use crate::access_log::{AccessRequest, Destination};
use crate::attempt_timer;
use crate::balance::{self, Groups};
use crate::endpoint::{EndpointState, Outcome};
use crate::error::ProxyError;
use crate::gateway::Shared;
use crate::group_stats::GroupRecord;
use crate::headers::{self, Forwarding, X_REQUEST_ID};
use crate::metrics::RetryReason;
use crate::ratelimit;
use crate::serve_h1::CarriesFields;
use crate::table::{RouteEntry, ServiceEntry, Sticky};
use crate::upstream::h1::ReplicaFields;
use crate::upstream::{SendError, UpstreamBody, UpstreamClient};

/// How long an attempt runs before it also listens for its endpoint's ejection (well below the stall
/// threshold, so a stalled endpoint's requests still move on at once).
const EJECTION_WATCH_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// A client's request body: hyper's (HTTP/1.1 and HTTP/2), or any other stream (HTTP/3), boxed. The boxed
/// error is a concrete type: with `Box<dyn Error>` there, rustc cannot prove the request future `Send`.
pub(crate) type ClientBody = Either<Incoming, UnsyncBoxBody<Bytes, std::io::Error>>;
pub(crate) type ReqBody = Either<Full<Bytes>, Limited<ClientBody>>;
/// A replica's body as it comes (or, from the cache, what was read of it then the rest: boxed, as it is
/// rare and large, and every response moves a few times on its way), or one in memory.
pub(crate) type ResBody = Either<Either<UpstreamBody, Box<crate::cache::Spliced>>, Full<Bytes>>;

/// What a listener adds to the request path: the scheme clients used, and what it tells them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ingress {
    /// `X-Forwarded-Proto`: `http` or `https`.
    pub(crate) proto: &'static str,
    /// `Alt-Svc` for every response (HTTP/3 is on and this is a TCP listener).
    pub(crate) alt_svc: Option<HeaderValue>,
    /// The HTTPS port that `redirect_https` services send plain requests to; `None`: no redirect.
    pub(crate) redirect_port: Option<u16>,
}

/// A client's request to its answer, with every field in the response's map, and no content when the
/// request was a HEAD (RFC 9110 §9.3.2): hyper's HTTP/1 server leaves such content out itself, its HTTP/2
/// server and HTTP/3 would send it.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    client: &UpstreamClient,
    ingress: &Arc<Ingress>,
    peer: SocketAddr,
    req: Request<ClientBody>,
) -> Result<Response<ResBody>, Infallible> {
    let head = req.method() == Method::HEAD;
    let mut res = handle_keeping_fields(shared, client, ingress, peer, req).await?;
    complete_headers(&mut res);
    if head && !res.body().is_end_stream() {
        // The gateway's own answers and the cache's have content; the length a GET would get stays.
        if let Some(length) = res.body().size_hint().exact()
            && !res.headers().contains_key(header::CONTENT_LENGTH)
        {
            res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        *res.body_mut() = Either::Right(Full::new(Bytes::new()));
    }
    Ok(res)
}

/// `handle` for `serve_h1`, which writes a replica's HTTP/1.1 fields as they were read: the response
/// may still carry them in its body (`CarriesFields`) rather than in its map.
pub(crate) async fn handle_keeping_fields(
    shared: &Arc<Shared>,
    client: &UpstreamClient,
    ingress: &Arc<Ingress>,
    peer: SocketAddr,
    req: Request<ClientBody>,
) -> Result<Response<ResBody>, Infallible> {
    let started = Instant::now();
    crate::affinity::on_request(started);
    let access = shared.config.access_log.then(|| AccessRequest::new(&req, peer));
    let snapshot = shared.snapshot();
    let host = headers::request_host(req.uri(), req.headers());
    let Some(service) = snapshot.service_for(host) else {
        let res = with_alt_svc(ProxyError::NoRoute.into_response(), ingress);
        if let Some(access) = access {
            access.log(None, &res, started.elapsed());
        }
        return Ok(res);
    };
    let route = service.route_for(req.uri().path());
    let location = match ingress.redirect_port {
        Some(port) if service.redirect_https => headers::https_location(host, port, req.uri()),
        _ => None,
    };
    let res = match location {
        Some(location) => redirect_response(location),
        None => handle_route(shared, client, service, route, ingress, peer, req, started).await,
    };
    let res = with_alt_svc(res, ingress);
    if let Some(access) = access {
        access.log(Some(Destination { service: &service.name, route: &route.prefix }), &res, started.elapsed());
    }
    Ok(res)
}

/// A request whose service and route are known: rate limit, then proxy.
#[allow(clippy::too_many_arguments)]
async fn handle_route(
    shared: &Arc<Shared>,
    client: &UpstreamClient,
    service: &Arc<ServiceEntry>,
    route: &RouteEntry,
    ingress: &Arc<Ingress>,
    peer: SocketAddr,
    req: Request<ClientBody>,
    started: Instant,
) -> Response<ResBody> {
    let in_flight = route.metrics.start_at(req.method(), started);
    let admission = match ratelimit::admit(route, req.headers(), peer.ip(), &shared.config.source) {
        Ok(admission) => admission,
        Err(rejected) => {
            in_flight.finish(StatusCode::TOO_MANY_REQUESTS.as_u16());
            return rejected.into_response();
        }
    };
    let mut groups = admission.groups();
    let (pinned, set_cookie) = match groups {
        Groups::Shared => sticky_group(service, req.headers()),
        _ => (None, None),
    };
    let set_cookie = set_cookie.map(str::to_owned);
    if let Some(group) = pinned.as_deref() {
        groups = Groups::Prefer(group);
    }
    let target = Target { shared, client, service, route, groups, ingress, peer };
    let res = match &route.cache {
        // Boxed: the cache path's future is large, and inline it would make every request's future as large.
        Some(cached) => Ok(Box::pin(crate::cache::serve(target, cached, req, started)).await),
        None => proxy(target, req.map(Some), started).await,
    };
    let mut res = match res {
        Ok(res) => res,
        Err(error) => {
            debug!(service = %service.name, error = %error, "request failed");
            error.into_response()
        }
    };
    admission.write_fields(res.headers_mut());
    if let (Some(name), Some(ServedBy(group))) = (set_cookie, res.extensions().get::<ServedBy>()) {
        let cookie = format!("{name}={group}; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax");
        if let Ok(cookie) = HeaderValue::try_from(cookie) {
            res.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
    in_flight.finish(res.status().as_u16());
    res
}

/// The replica's fields (kept as read, see `upstream::h1::ReplicaFields`) into the response's map, ahead
/// of the gateway's: for every consumer but `serve_h1`, which writes them as they are.
pub(crate) fn complete_headers(res: &mut Response<ResBody>) {
    if let Some(fields) = res.body_mut().take_fields() {
        fields.merge_into(res.headers_mut());
    }
}

impl CarriesFields for ResBody {
    fn take_fields(&mut self) -> Option<Box<ReplicaFields>> {
        match self {
            Either::Left(Either::Left(UpstreamBody::Http1(body))) => body.take_fields(),
            _ => None,
        }
    }
}

fn with_alt_svc(mut res: Response<ResBody>, ingress: &Ingress) -> Response<ResBody> {
    if let Some(alt_svc) = &ingress.alt_svc {
        res.headers_mut().insert(header::ALT_SVC, alt_svc.clone());
    }
    res
}

/// `308 Permanent Redirect`: the method and body are kept on the way to HTTPS.
fn redirect_response(location: HeaderValue) -> Response<ResBody> {
    let mut res = Response::new(Either::Right(Full::default()));
    *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
    res.headers_mut().insert(header::LOCATION, location);
    res
}

enum Attempted {
    Response(Response<UpstreamBody>),
    NeverSent(String),
    Failed(String),
    Ejected,
    TimedOut,
}

/// A request body: buffered (replayable) or streamed (one attempt only).
enum RequestBody {
    Buffered(Bytes),
    Streaming(Option<Limited<ClientBody>>),
}

/// Where a request goes and what it goes through: everything the request path needs besides the request.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    /// This worker's upstream connections.
    pub(crate) client: &'a UpstreamClient,
    pub(crate) service: &'a Arc<ServiceEntry>,
    pub(crate) route: &'a RouteEntry,
    /// Which of the service's replica groups may answer.
    pub(crate) groups: Groups<'a>,
    /// The listener the request came in on.
    pub(crate) ingress: &'a Arc<Ingress>,
    pub(crate) peer: SocketAddr,
}

/// Sends `req` to a replica of `target.service`; a request without a body (`None`) is a cache refresh. The
/// outcome counts for the replica group that answered (see `group_stats.rs`).
pub(crate) async fn proxy(
    target: Target<'_>,
    req: Request<Option<ClientBody>>,
    started: Instant,
) -> Result<Response<ResBody>, ProxyError> {
    let service = target.service;
    let mut group = GroupRecord::new(service, started);
    let mut res = attempt_all(target, req, started, &mut group.endpoint).await;
    if let (Ok(res), Some(Sticky::Cookie { .. })) = (&mut res, &service.sticky)
        && let Some(served) = group.endpoint.as_ref().and_then(|endpoint| service.group_of(endpoint))
    {
        res.extensions_mut().insert(ServedBy(served.name.clone()));
    }
    group.finish(match &res {
        Ok(res) => res.status().as_u16(),
        Err(error) => error.status().as_u16(),
    });
    res
}

/// The replica group that answered, on a response to a service with a sticky cookie.
#[derive(Clone)]
struct ServedBy(String);

/// The group a sticky client goes to (owned: the request moves on), and whether it still needs a cookie.
fn sticky_group<'s>(service: &'s ServiceEntry, headers: &http::HeaderMap) -> (Option<String>, Option<&'s str>) {
    match &service.sticky {
        Some(Sticky::Header { name, group }) if headers.contains_key(name.as_str()) => (Some(group.clone()), None),
        Some(Sticky::Cookie { name }) => match cookie(headers, name) {
            Some(group) if service.groups.iter().any(|g| g.name == group) => (Some(group.to_owned()), None),
            _ => (None, Some(name)),
        },
        _ => (None, None),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The attempt loop; `last_endpoint` follows the endpoint of the latest attempt.
async fn attempt_all<'a>(
    target: Target<'a>,
    mut req: Request<Option<ClientBody>>,
    started: Instant,
    last_endpoint: &mut Option<&'a Arc<EndpointState>>,
) -> Result<Response<ResBody>, ProxyError> {
    let Target { shared, client, service, route, groups, ingress, peer } = target;
    let deadline = started + route.timeout;
    let upgrade = headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let idempotent = parts.method.is_idempotent();
    let forwarding = Forwarding { client_ip: peer.ip(), proto: ingress.proto, source: &shared.source };
    // The host the request was routed by is the one the replica and `X-Forwarded-Host` see: a target's
    // authority replaces `Host` (HTTP/2 and HTTP/3 carry none, HTTP/1.1 upstreams need one).
    if let Some(host) = headers::host_from_target(&parts.uri) {
        parts.headers.insert(header::HOST, host);
    }
    let (request_id, added) = headers::rewrite_request(&mut parts.headers, &forwarding, upgrade);
    let mut body = match body {
        Some(body) => prepare_body(body, &parts.headers, shared, deadline).await?,
        None => RequestBody::Buffered(Bytes::new()),
    };
    let replayable = matches!(body, RequestBody::Buffered(_));
    service.budget.deposit();

    // Replicas get the origin form (`/path?query`), whatever form the client used.
    let path_and_query =
        parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    parts.uri = http::Uri::from(path_and_query);
    let mut tried: SmallVec<[&Arc<EndpointState>; 4]> = SmallVec::new();
    // The error to answer with when no attempt can be made; made only then (it copies names).
    let no_upstream = || match groups {
        Groups::Shared | Groups::Prefer(_) => ProxyError::NoUpstream { service: service.name.clone() },
        Groups::Pool(pool) => ProxyError::NoPoolUpstream { service: service.name.clone(), pool: pool.to_owned() },
    };
    let mut last_error: Option<ProxyError> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ProxyError::Timeout);
        }
        let Some(endpoint) = balance::pick(service, groups, &tried, now) else {
            return Err(last_error.unwrap_or_else(no_upstream));
        };
        let attempt_body = match &mut body {
            RequestBody::Buffered(bytes) => Either::Left(Full::new(bytes.clone())),
            RequestBody::Streaming(stream) => match stream.take() {
                Some(stream) => Either::Right(stream),
                None => return Err(last_error.unwrap_or_else(no_upstream)),
            },
        };

        let attempt = endpoint.begin_at(now);
        *last_endpoint = Some(endpoint);
        let remaining = deadline - now;
        let per_try = route.per_try_timeout.map_or(remaining, |t| t.min(remaining));
        let watch_ejection = idempotent && replayable;
        let send = client.send(endpoint.addr, &endpoint.authority, service.protocol, (&parts, &added), attempt_body);
        tokio::pin!(send);
        let classify = |res: Result<Response<UpstreamBody>, SendError>| match res {
            // A replica may switch protocols only when asked to (RFC 9110 §15.2.2); a client that was not
            // asking would take the connection for switched.
            Ok(res) if res.status() == StatusCode::SWITCHING_PROTOCOLS && !upgrade => {
                Attempted::Failed("the replica switched protocols unasked".to_owned())
            }
            Ok(res) => Attempted::Response(res),
            Err(SendError::NeverSent(detail)) => Attempted::NeverSent(detail),
            Err(SendError::Failed(detail)) => Attempted::Failed(detail),
        };
        // Most answers come quickly: only a slow one waits on the endpoint's ejection signal, which
        // costs a registration on a lock shared by every request to that endpoint.
        let quick = per_try.min(EJECTION_WATCH_AFTER);
        let outcome = match attempt_timer::before(now + quick, &mut send).await {
            Some(res) => classify(res),
            None if quick == per_try => Attempted::TimedOut,
            None => {
                // Register before looking at the flag, so an ejection in between is not missed.
                let ejected = endpoint.ejected.notified();
                tokio::pin!(ejected);
                ejected.as_mut().enable();
                if watch_ejection && endpoint.is_ejected(Instant::now()) {
                    Attempted::Ejected
                } else {
                    tokio::select! {
                        res = &mut send => classify(res),
                        _ = ejected, if watch_ejection => Attempted::Ejected,
                        _ = tokio::time::sleep(per_try - quick) => Attempted::TimedOut,
                    }
                }
            }
        };
        tried.push(endpoint);
        // A retry needs somewhere to go: with every replica tried, the replica's own answer stands and no
        // budget is spent.
        let retry_ok = |reason| {
            idempotent
                && replayable
                && balance::pick(service, groups, &tried, Instant::now()).is_some()
                && shared.allow_retry(service, route, reason, deadline)
        };
        match outcome {
            Attempted::Response(res) => {
                let status = res.status();
                if status.is_server_error() {
                    attempt.finish(Outcome::Failure);
                    shared.after_failure(service, endpoint);
                } else {
                    attempt.finish(Outcome::Success);
                }
                let gateway_error = matches!(status.as_u16(), 502..=504);
                if gateway_error && retry_ok(RetryReason::Status5xx) {
                    last_error = Some(ProxyError::Upstream(format!("replica answered {status}")));
                    continue;
                }
                return Ok(respond(res, request_id, client_upgrade));
            }
            Attempted::NeverSent(detail) => {
                attempt.finish(Outcome::Failure);
                shared.after_failure(service, endpoint);
                if !replayable {
                    return Err(ProxyError::Upstream(detail));
                }
                last_error = Some(ProxyError::Upstream(detail));
                route.metrics.retry(RetryReason::NeverSent);
            }
            Attempted::Failed(detail) => {
                attempt.finish(Outcome::Failure);
                shared.after_failure(service, endpoint);
                if !retry_ok(RetryReason::Status5xx) {
                    return Err(ProxyError::Upstream(detail));
                }
                last_error = Some(ProxyError::Upstream(detail));
            }
            Attempted::Ejected => {
                drop(attempt);
                route.metrics.retry(RetryReason::Ejected);
                last_error = Some(ProxyError::Upstream("replica ejected while answering".to_owned()));
            }
            Attempted::TimedOut => {
                attempt.finish(Outcome::Failure);
                shared.after_failure(service, endpoint);
                if per_try >= remaining || !retry_ok(RetryReason::PerTryTimeout) {
                    return Err(ProxyError::Timeout);
                }
                last_error = Some(ProxyError::Timeout);
            }
        }
    }
}

/// Buffers a small body (so a retry can replay it) or passes a large one through, bounded either way.
async fn prepare_body(
    body: ClientBody,
    headers: &http::HeaderMap,
    shared: &Shared,
    deadline: Instant,
) -> Result<RequestBody, ProxyError> {
    use http_body::Body;
    let max_body = shared.config.max_body_bytes;
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|length| length > max_body) {
        return Err(ProxyError::BodyTooLarge { limit: max_body });
    }
    if body.is_end_stream() {
        return Ok(RequestBody::Buffered(Bytes::new()));
    }
    let limited = Limited::new(body, max_body as usize);
    match length {
        Some(length) if length <= shared.config.replay_buffer_bytes as u64 => {
            let collected = tokio::time::timeout_at(deadline.into(), limited.collect())
                .await
                .map_err(|_| ProxyError::Timeout)?
                .map_err(|_| ProxyError::BadRequest("the request body ended early or was too large"))?;
            Ok(RequestBody::Buffered(collected.to_bytes()))
        }
        _ => Ok(RequestBody::Streaming(Some(limited))),
    }
}

fn respond(
    res: Response<UpstreamBody>,
    request_id: HeaderValue,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResBody> {
    let switching = res.status() == StatusCode::SWITCHING_PROTOCOLS;
    let (mut parts, body) = res.into_parts();
    let body = match (switching, client_upgrade) {
        (true, Some(client_upgrade)) => {
            if let Some(upstream) = body.into_upgraded() {
                tokio::spawn(tunnel(client_upgrade, upstream));
            }
            Either::Right(Full::default())
        }
        _ => Either::Left(Either::Left(body)),
    };
    headers::rewrite_response(&mut parts.headers, switching);
    parts.headers.insert(X_REQUEST_ID, request_id);
    Response::from_parts(parts, body)
}

/// Copies bytes both ways between an upgraded client connection and the replica (WebSocket and the like),
/// starting with what the replica sent right after its `101`.
async fn tunnel(client: hyper::upgrade::OnUpgrade, (mut upstream, early): (tokio::net::TcpStream, Bytes)) {
    use tokio::io::AsyncWriteExt;
    let Ok(client) = client.await else { return };
    let mut client = hyper_util::rt::TokioIo::new(client);
    if !early.is_empty() && client.write_all(&early).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
