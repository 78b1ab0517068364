//! The gateway's handle: configuration, the listeners (plain HTTP and HTTPS on per-core workers, HTTP/3 on
//! one QUIC endpoint), routing-table updates, outlier ejection and draining. The gateway never reads the
//! spec; it is handed `RoutingTable`s (only `tls` reads files: certificates).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::cache::Cache;
use crate::endpoint::EndpointState;
use crate::framing::{self, FramingGuard};
use crate::group_stats::GroupStats;
use crate::metrics::{EjectReason, Metrics, RetryReason};
use crate::proxy::{self, Ingress};
use crate::spread::{Handoff, Spread};
use crate::table::{Registry, RouteEntry, RoutingTable, ServiceEntry, Snapshot};
use crate::tls::{Tls, TlsConfig};
use crate::upstream::UpstreamClient;
use crate::{affinity, attempt_timer, busy_poll};
use crate::{h3, headers, serve_h1};

/// Source of `Shared::id`.
static NEXT_GATEWAY_ID: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest request head (request line + headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body; larger gets 413.
    pub max_body_bytes: u64,
    /// Bodies up to this size are buffered so that a retry can replay them.
    pub replay_buffer_bytes: usize,
    /// A client must send its whole request head within this time (slowloris defence).
    pub header_read_timeout: Duration,
    /// Idle upstream connections are closed after this; keep it below the replicas' own idle timeout.
    pub upstream_idle_timeout: Duration,
    /// Consecutive failures that eject an endpoint.
    pub eject_after_failures: u32,
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// At most this share of a service's endpoints is ejected at once (but always one).
    pub max_ejected_share: f64,
    /// An endpoint with work in flight that answers nothing for this long (or 4x its slowest recent
    /// answer, whichever is longer) is stalled and ejected.
    pub stall_after: Duration,
    /// `X-Source` value for requests through this listener.
    pub source: String,
    /// Worker threads, each with its own runtime and upstream pool.
    pub workers: usize,
    /// Each worker stays on a CPU of its own while it is busy, when there is one CPU per worker (see
    /// `affinity.rs`).
    pub pin_workers: bool,
    /// A worker with nothing else to do waits on the CPU, for up to 100 µs, for a replica that has lately
    /// answered that fast, instead of sleeping until the answer wakes it (see `busy_poll.rs`).
    pub busy_poll: bool,
    /// Bound on the response cache's memory (bodies, headers, keys), shared by every service.
    pub cache_max_bytes: u64,
    /// A response body larger than this is never stored; it streams through.
    pub cache_max_entry_bytes: usize,
    /// One `berth::access` event per request (see `access_log.rs`).
    pub access_log: bool,
    /// Certificates for the HTTPS and HTTP/3 listeners; required when `Listeners` has either.
    pub tls: Option<TlsConfig>,
}

/// The sockets to serve on; any may be absent. HTTP/3 shares the HTTPS certificates.
#[derive(Debug, Default)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
    pub http3: Option<std::net::UdpSocket>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            replay_buffer_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            upstream_idle_timeout: Duration::from_secs(2),
            eject_after_failures: 5,
            eject_base: Duration::from_secs(30),
            eject_max: Duration::from_secs(300),
            max_ejected_share: 0.5,
            stall_after: Duration::from_secs(1),
            source: "external".to_owned(),
            workers: std::thread::available_parallelism().map(usize::from).unwrap_or(2),
            pin_workers: true,
            busy_poll: true,
            access_log: false,
            tls: None,
            cache_max_bytes: 64 * 1024 * 1024,
            cache_max_entry_bytes: 1024 * 1024,
        }
    }
}

/// Cheap to clone; all clones are one gateway.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    /// `config.source` as the `X-Source` header value.
    pub(crate) source: http::HeaderValue,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Moves on with every `update`; until it does, each thread keeps serving from its own copy of the
    /// snapshot (see `snapshot`).
    generation: AtomicU64,
    /// Tells this gateway's snapshots from another's in a thread's copy.
    id: u64,
    registry: Mutex<Registry>,
    pub(crate) metrics: Metrics,
    pub(crate) cache: Cache,
    tls: Option<Arc<Tls>>,
}

impl Gateway {
    pub fn new(config: GatewayConfig) -> Gateway {
        let tls = config.tls.clone().map(|tls| Arc::new(Tls::new(tls)));
        let metrics = Metrics::new();
        let cache = Cache::new(config.cache_max_bytes, config.cache_max_entry_bytes, metrics.cache.clone());
        Gateway {
            shared: Arc::new(Shared {
                source: http::HeaderValue::try_from(config.source.as_str())
                    .unwrap_or(http::HeaderValue::from_static("external")),
                tls,
                config,
                snapshot: RwLock::new(Arc::new(Snapshot::empty())),
                generation: AtomicU64::new(0),
                id: NEXT_GATEWAY_ID.fetch_add(1, Ordering::Relaxed),
                registry: Mutex::new(Registry::new()),
                metrics,
                cache,
            }),
        }
    }

    /// Swaps in a new routing table. Requests in flight finish on the snapshot they started with.
    pub fn update(&self, table: &RoutingTable) {
        let snapshot = lock(&self.shared.registry).compile(table, &self.shared.metrics);
        *self.shared.snapshot.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(snapshot);
        self.shared.generation.fetch_add(1, Ordering::Release);
        if let Some(tls) = &self.shared.tls {
            // New services get their certificates before clients learn of them; user files are re-read.
            tls.update(table);
        }
    }

    /// Accepts connections until the returned future is dropped, watches for stalled endpoints and, with
    /// TLS, for changed certificate files. Fails at once when a listener cannot be used (an HTTPS or
    /// HTTP/3 socket without `GatewayConfig::tls`, a QUIC endpoint that cannot start).
    ///
    /// One thread per core, each with its own single-threaded runtime, accept loop (on the same sockets,
    /// plain and TLS) and upstream connection pool: a request and its upstream exchange stay on one thread,
    /// with no cross-thread wake-ups. Only the routing snapshot, endpoint state and metrics are shared.
    /// HTTP/3 runs on one QUIC endpoint on the caller's runtime.
    pub async fn serve(&self, listeners: Listeners) -> std::io::Result<()> {
        let tls = match (&self.shared.tls, listeners.https.is_some() || listeners.http3.is_some()) {
            (Some(tls), true) => {
                tls.load();
                Some(tls.clone())
            }
            (None, true) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "an HTTPS or HTTP/3 listener needs `GatewayConfig::tls` (user certificates and a directory \
                     for self-signed ones)",
                ));
            }
            (_, false) => None,
        };
        let port_of = |addr: std::io::Result<SocketAddr>| addr.map(|addr| addr.port());
        let https_port = listeners.https.as_ref().map(|listener| port_of(listener.local_addr())).transpose()?;
        let h3_port = listeners.http3.as_ref().map(|socket| port_of(socket.local_addr())).transpose()?;
        let alt_svc = h3_port.map(headers::alt_svc);
        let plain = Arc::new(Ingress { proto: "http", alt_svc: alt_svc.clone(), redirect_port: https_port });
        let secure = Arc::new(Ingress { proto: "https", alt_svc, redirect_port: None });
        let acceptor = match (&tls, listeners.https.is_some()) {
            (Some(tls), true) => Some(TlsAcceptor::from(tls.tcp_config().map_err(std::io::Error::other)?)),
            _ => None,
        };
        let http = listeners.http.map(TcpListener::into_std).transpose()?;
        let https = listeners.https.map(TcpListener::into_std).transpose()?;
        let quic = match (&tls, listeners.http3) {
            (Some(tls), Some(socket)) => {
                let config = tls.quic_config().map_err(std::io::Error::other)?;
                let ingress = Arc::new(Ingress { proto: "https", alt_svc: None, redirect_port: None });
                Some(h3::Server::start(self.shared.clone(), socket, config, ingress)?)
            }
            _ => None,
        };

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let n_workers = self.shared.config.workers.max(1);
        let (spread, inboxes) = Spread::new(n_workers);
        let cpus = affinity::Plan::new(n_workers, self.shared.config.pin_workers);
        let poll_counts =
            (self.shared.config.busy_poll && busy_poll::worth_it()).then(|| self.shared.metrics.busy_polls.clone());
        for (worker, inbox) in inboxes.into_iter().enumerate() {
            let cpu = cpus.as_ref().and_then(|cpus| cpus.for_worker(worker));
            let sockets = WorkerSockets {
                http: http.as_ref().map(|listener| listener.try_clone()).transpose()?.map(|l| (l, plain.clone())),
                https: match (&https, &acceptor) {
                    (Some(listener), Some(acceptor)) => Some((listener.try_clone()?, acceptor.clone(), secure.clone())),
                    _ => None,
                },
            };
            let shared = self.shared.clone();
            let stop_rx = stop_rx.clone();
            let name = format!("berth-gateway-{worker}");
            let worker = Worker { index: worker, spread: spread.clone(), inbox };
            let poll_counts = poll_counts.clone();
            std::thread::Builder::new().name(name).spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                runtime.enable_all().on_thread_park(before_park);
                if let Some(counts) = poll_counts {
                    busy_poll::enable_on_this_thread(counts);
                }
                let runtime = match runtime.build() {
                    Ok(runtime) => runtime,
                    Err(error) => return warn!(error = %error, "cannot start a gateway worker"),
                };
                if let Some(cpu) = cpu {
                    cpu.follow_load_on_this_thread();
                }
                runtime.block_on(async {
                    attempt_timer::keep_on_this_thread();
                    worker_loop(shared, sockets, worker, stop_rx).await;
                    attempt_timer::stop_keeping_on_this_thread();
                });
            })?;
        }
        // Dropping this future (the daemon stopping the gateway) stops the workers and the QUIC endpoint.
        let _stop_workers = StopOnDrop(stop_tx);
        let watch_certs = async {
            match tls {
                Some(tls) => tls.watch().await,
                None => std::future::pending().await,
            }
        };
        let serve_h3 = async {
            match quic {
                Some(quic) => quic.serve().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = watch_stalls(self.shared.clone()) => Ok(()),
            () = watch_certs => Ok(()),
            res = serve_h3 => res,
        }
    }

    /// Waits until `instance` is out of the routing table and has no request in flight, or `timeout`.
    /// Returns whether it drained.
    pub async fn drain(&self, instance: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let in_table = self.shared.snapshot().contains(instance);
            let busy = lock(&self.shared.registry).endpoint(instance).map_or(0, |endpoint| endpoint.outstanding());
            if !in_table && busy == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Prometheus text exposition of the gateway's metrics.
    pub fn render_metrics(&self, out: &mut String) {
        self.shared.metrics.render(out);
        let groups = lock(&self.shared.registry).group_counters();
        crate::group_stats::render(out, &groups);
    }

    /// The cumulative numbers of each replica group `service` has had while in the table, by group name
    /// (empty for an unknown service). Subtract two readings with `GroupStats::since` for a window.
    pub fn group_stats(&self, service: &str) -> Vec<GroupStats> {
        lock(&self.shared.registry).group_stats(service)
    }

    /// Removes the cached responses of `service`, all of them or those whose path falls under `path_prefix`
    /// (on a segment boundary: `/a` covers `/a`, `/a/b` and `/a?x`). Returns how many were removed.
    pub fn purge_cache(&self, service: &str, path_prefix: Option<&str>) -> usize {
        self.shared.cache.purge(service, path_prefix)
    }

    /// Whether outlier detection has ejected the endpoint of `instance` right now (for tests and status).
    pub fn is_ejected(&self, instance: &str) -> bool {
        lock(&self.shared.registry).endpoint(instance).is_some_and(|endpoint| endpoint.is_ejected(Instant::now()))
    }
}

impl Shared {
    /// The current routing snapshot, from this thread's own copy while the table has not changed: a request
    /// then writes to no memory that the other workers' requests write to (no lock, no shared reference
    /// count), which on two busy cores costs more than the lookup itself.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        thread_local! {
            static COPY: RefCell<Option<(u64, u64, Arc<Snapshot>)>> = const { RefCell::new(None) };
        }
        let generation = self.generation.load(Ordering::Acquire);
        COPY.with_borrow_mut(|copy| match copy {
            Some((id, seen, snapshot)) if *id == self.id && *seen == generation => snapshot.clone(),
            _ => {
                let current = self.snapshot.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                let own = Arc::new(Snapshot::clone(&current));
                *copy = Some((self.id, generation, own.clone()));
                own
            }
        })
    }

    /// After a failed attempt: eject the endpoint once its failure streak reaches the threshold.
    pub(crate) fn after_failure(&self, service: &ServiceEntry, endpoint: &EndpointState) {
        if endpoint.consecutive_failures() >= self.config.eject_after_failures {
            self.eject(service, endpoint, EjectReason::ConsecutiveFailures);
        }
    }

    /// Whether a retry may go ahead: time left and the budget says yes. Counts the outcome.
    pub(crate) fn allow_retry(
        &self,
        service: &ServiceEntry,
        route: &RouteEntry,
        reason: RetryReason,
        deadline: Instant,
    ) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if !service.budget.withdraw(now) {
            route.metrics.budget_exhausted();
            return false;
        }
        route.metrics.retry(reason);
        true
    }

    fn eject(&self, service: &ServiceEntry, endpoint: &EndpointState, reason: EjectReason) {
        let now = Instant::now();
        if endpoint.is_ejected(now) {
            return;
        }
        let all = service.groups.iter().flat_map(|group| group.endpoints.iter());
        let n_total = service.n_endpoints();
        let n_ejected = all.filter(|e| e.is_ejected(now)).count();
        let allowed = ((n_total as f64 * self.config.max_ejected_share).floor() as usize).max(1);
        if n_ejected + 1 > allowed {
            return;
        }
        let period = endpoint.eject(self.config.eject_base, self.config.eject_max, now);
        self.metrics.ejection(&service.name, reason);
        warn!(service = %service.name, instance = %endpoint.instance, addr = %endpoint.addr, ?reason, period_s = period.as_secs(), "endpoint ejected");
    }
}

/// The shortest wait between two looks for stalls, however soon an endpoint could stall.
const STALL_RECHECK: Duration = Duration::from_millis(100);

/// Ejects endpoints that hold requests but answer nothing: a hung replica stops getting traffic within
/// about a second, long before health probes notice. Wakes when the first endpoint could stall (the
/// watermark and silence of each, see `EndpointState::stalls_at`), at most `stall_after` apart: about once
/// a second while replicas answer, not ten times.
async fn watch_stalls(shared: Arc<Shared>) {
    let min_stall = shared.config.stall_after;
    loop {
        let now = Instant::now();
        let mut next = now + min_stall;
        for service in shared.snapshot().services() {
            for endpoint in service.groups.iter().flat_map(|group| group.endpoints.iter()) {
                let Some(at) = endpoint.stalls_at(min_stall) else { continue };
                if now >= at && !endpoint.is_ejected(now) {
                    shared.eject(service, endpoint, EjectReason::Stalled);
                }
                next = next.min(at);
            }
        }
        // An endpoint stalled but not ejected (ejected already, or too many are) is looked at again soon.
        tokio::time::sleep_until(next.max(now + STALL_RECHECK).into()).await;
    }
}

/// What one worker accepts on: the plain listener and the TLS one, each with what it tells requests.
struct WorkerSockets {
    http: Option<(std::net::TcpListener, Arc<Ingress>)>,
    https: Option<(std::net::TcpListener, TlsAcceptor, Arc<Ingress>)>,
}

/// What a worker does when it has nothing left to run, just before it sleeps: the wait on the CPU for a
/// fast replica's answer, then its own bookkeeping, unless that answer has come: then the bookkeeping
/// waits for the next park rather than stand between the answer and the client.
fn before_park() {
    if !busy_poll::before_park() {
        affinity::before_park();
    }
}

/// A worker's HTTP server settings, shared by its connections.
struct Servers {
    auto: auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// What plain HTTP/1.1 connections serve without hyper; its `max_head` is hyper's head limit too.
    h1: serve_h1::Limits,
}

/// Which worker this is, and its share of the connections (see `spread.rs`).
struct Worker {
    index: usize,
    spread: Arc<Spread>,
    inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
}

/// One gateway worker: accepts connections on its own runtime and serves them with its own client.
async fn worker_loop(
    shared: Arc<Shared>,
    sockets: WorkerSockets,
    mut worker: Worker,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let to_tokio = |listener: std::net::TcpListener| match TcpListener::from_std(listener) {
        Ok(listener) => Some(listener),
        Err(error) => {
            warn!(error = %error, "gateway worker cannot listen");
            None
        }
    };
    let http = sockets.http.and_then(|(listener, ingress)| Some((to_tokio(listener)?, ingress)));
    let https = sockets.https.and_then(|(listener, acceptor, ingress)| Some((to_tokio(listener)?, acceptor, ingress)));
    let client = UpstreamClient::new(shared.config.upstream_idle_timeout);
    let servers = Arc::new(servers(&shared.config));
    loop {
        let (accepted, tls) = tokio::select! {
            accepted = accept(http.as_ref().map(|(listener, _)| listener)) => (accepted, false),
            accepted = accept(https.as_ref().map(|(listener, _, _)| listener)) => (accepted, true),
            Some(handoff) = worker.inbox.recv() => {
                let Handoff { stream, peer, tls } = handoff;
                (TcpStream::from_std(stream).map(|stream| (stream, peer)), tls)
            }
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly, keep serving.
                warn!(error = %error, "gateway accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let stream = match worker.spread.elsewhere(worker.index) {
            Some(to) => match stream.into_std().map(|stream| worker.spread.hand_off(to, Handoff { stream, peer, tls }))
            {
                Ok(Ok(())) => continue,
                Ok(Err(Handoff { stream, .. })) => match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(_) => continue,
                },
                Err(_) => continue,
            },
            None => stream,
        };
        let _ = stream.set_nodelay(true);
        let live = worker.spread.open(worker.index);
        let shared = shared.clone();
        let client = client.clone();
        let servers = servers.clone();
        match (tls, &http, &https) {
            (false, Some((_, ingress)), _) => {
                let ingress = ingress.clone();
                tokio::spawn(async move {
                    serve_plain(shared, client, servers, ingress, stream, peer).await;
                    drop(live);
                });
            }
            (true, _, Some((_, acceptor, ingress))) => {
                let (acceptor, ingress) = (acceptor.clone(), ingress.clone());
                tokio::spawn(async move {
                    serve_tls(shared, client, servers, ingress, acceptor, stream, peer).await;
                    drop(live);
                });
            }
            _ => {}
        }
    }
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

fn servers(config: &GatewayConfig) -> Servers {
    // hyper's smallest read buffer is 8 KiB; the framing guard inspects every head hyper can accept.
    let max_head = config.max_header_bytes.max(8192);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(max_head)
        .keep_alive(true);
    auto.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(max_head)
        .keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new()).max_header_list_size(config.max_header_bytes as u32).max_concurrent_streams(256);
    let h1 = serve_h1::Limits {
        max_head,
        max_body: config.max_body_bytes.min(config.replay_buffer_bytes as u64),
        header_read_timeout: config.header_read_timeout,
    };
    Servers { auto, http1, http2, h1 }
}

async fn serve_plain(
    shared: Arc<Shared>,
    client: UpstreamClient,
    servers: Arc<Servers>,
    ingress: Arc<Ingress>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let handle = |req| proxy::handle_keeping_fields(&shared, &client, &ingress, peer, req);
    let service = || proxy_service(shared.clone(), client.clone(), ingress.clone(), peer);
    if let Err(error) = serve_plain_with(stream, &servers, handle, service).await {
        debug!(peer = %peer, error = %error, "client connection ended with an error");
    }
}

/// A plain connection: `serve_h1` serves the common request with `handle`; from the first request it
/// leaves, hyper (behind the framing guard) serves the rest of the connection with the service `service`
/// makes. Generic so that tests can watch what each side is handed.
async fn serve_plain_with<H, F, B, M, S, RB>(
    stream: TcpStream,
    servers: &Servers,
    handle: H,
    service: M,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    H: FnMut(http::Request<proxy::ClientBody>) -> F,
    F: Future<Output = Result<http::Response<B>, std::convert::Infallible>>,
    B: http_body::Body<Data = bytes::Bytes> + serve_h1::CarriesFields,
    M: FnOnce() -> S,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<RB>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (stream, read) = match serve_h1::serve(stream, servers.h1, handle).await {
        serve_h1::Ended::Closed => return Ok(()),
        serve_h1::Ended::Handover(stream, read) => (stream, read),
    };
    // hyper sees the connection from the first byte this side did not serve: its header-read timer runs
    // from there (there is at least one byte), and HTTP/2 prior knowledge is told from its preface.
    let io = TokioIo::new(FramingGuard::with_prefix(stream, servers.h1.max_head, &read));
    servers.auto.serve_connection_with_upgrades(io, service()).await
}

/// A TLS connection: the handshake (bounded by the header timeout), then HTTP/2 or HTTP/1.1 as ALPN chose.
async fn serve_tls(
    shared: Arc<Shared>,
    client: UpstreamClient,
    servers: Arc<Servers>,
    ingress: Arc<Ingress>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let stream = match tokio::time::timeout(shared.config.header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return debug!(peer = %peer, error = %error, "TLS handshake failed"),
        Err(_) => return debug!(peer = %peer, "TLS handshake not done in time"),
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let service = proxy_service(shared, client, ingress, peer);
    let io = TokioIo::new(FramingGuard::new(stream, servers.h1.max_head));
    // HTTP/1.1 alone here starts hyper's header-read timer at once, so a silent client is dropped in time.
    let served = if h2 {
        servers.http2.serve_connection(io, service).await
    } else {
        servers.http1.serve_connection(io, service).with_upgrades().await
    };
    if let Err(error) = served {
        debug!(peer = %peer, error = %error, "client connection ended with an error");
    }
}

/// The request path as a hyper service: each request's future owns what it needs.
fn proxy_service(
    shared: Arc<Shared>,
    client: UpstreamClient,
    ingress: Arc<Ingress>,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<proxy::ResBody>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<http::Response<proxy::ResBody>, std::convert::Infallible>> + Send,
> + Clone {
    hyper_service(move |req: http::Request<hyper::body::Incoming>| {
        let (shared, client, ingress) = (shared.clone(), client.clone(), ingress.clone());
        async move {
            let res = proxy::handle(&shared, &client, &ingress, peer, req.map(http_body_util::Either::Left)).await;
            res.unwrap_or_else(|never| match never {})
        }
    })
}

/// `handle` as a hyper service, with the rule the framing guard relies on: an answer to a request that
/// asks to switch protocols closes the connection unless it switches (see `framing::close_unless_switched`).
fn hyper_service<H, F, B>(
    handle: H,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<B>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<http::Response<B>, std::convert::Infallible>> + Send,
> + Clone
where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone,
    F: Future<Output = http::Response<B>> + Send,
    B: http_body::Body,
{
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let upgrade = framing::asks_upgrade(&req).then(|| req.method().clone());
        let answer = handle(req);
        async move {
            let mut res = answer.await;
            if let Some(method) = upgrade {
                framing::close_unless_switched(&method, &mut res);
            }
            Ok(res)
        }
    })
}

struct StopOnDrop(tokio::sync::watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod answers;
#[cfg(test)]
mod one_replica;
#[cfg(test)]
mod over_h2;
#[cfg(test)]
mod smuggling;
