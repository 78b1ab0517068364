//! The daemon: wires the store, the supervisor, the platform and the control API together, and runs until
//! SIGINT, SIGTERM or `berth down`. Wiring only; the behaviour lives in the library crates.

mod state_dir;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use berth_api::wire::DaemonInfo;
use berth_api::{ApiState, Webhook};
use berth_deploy::{LoadedService, Platform, Store};
use berth_gateway::{CertificateFiles, Gateway, GatewayConfig, Listeners, TlsConfig};
use berth_supervisor::{RestartBackoff, Supervisor, SupervisorConfig, logs::LogLimits};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{info, warn};

pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub api: SocketAddr,
    /// The plain HTTP listener; `None`: off.
    pub gateway: Option<SocketAddr>,
    /// Log every request the gateway answers (target `berth::access`).
    pub access_log: bool,
    /// The HTTPS listener; `None`: plain HTTP only.
    pub https: Option<SocketAddr>,
    /// HTTP/3 on the HTTPS port (over UDP).
    pub http3: bool,
    /// User certificates for HTTPS and HTTP/3; hosts without one get a self-signed certificate.
    pub certificates: Vec<CertificateFiles>,
    /// Where deploy events are also sent.
    pub webhook: Option<Webhook>,
    /// Services to deploy at startup, besides those stored from earlier runs.
    pub services: Vec<LoadedService>,
}

pub async fn run(options: DaemonOptions) -> anyhow::Result<()> {
    let state_dir = state_dir::prepare(&options.state_dir)?;
    let _lock = state_dir::lock(&state_dir)?;
    let token = state_dir::ensure_token(&state_dir)?;

    // Services without a certificate of their own get a self-signed one, kept in the state dir.
    let tls = options
        .https
        .map(|_| TlsConfig { certificates: options.certificates.clone(), self_signed_dir: state_dir.join("certs") });
    let gateway = Gateway::new(GatewayConfig { tls, access_log: options.access_log, ..GatewayConfig::default() });
    let drain_gateway = gateway.clone();
    let supervisor = Supervisor::start(SupervisorConfig {
        state_dir: state_dir.clone(),
        log_limits: LogLimits::default(),
        backoff: RestartBackoff::default(),
        // A replica stopped in order leaves rotation and finishes its requests before SIGTERM.
        drain: Some(Arc::new(move |instance, timeout| {
            let gateway = drain_gateway.clone();
            Box::pin(async move {
                if !gateway.drain(&instance, timeout).await {
                    warn!(instance = %instance, "requests still in flight after the drain timeout");
                }
            })
        })),
    })?;
    let store = Store::open(&state_dir.join("state.redb"))?;
    let gateway_listener = match options.gateway {
        Some(addr) => Some(bind(addr, "the gateway", "--gateway").await?),
        None => None,
    };
    let gateway_addr = gateway_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let secure = bind_secure(options.https, options.http3).await?;
    let https_addr = secure.as_ref().map(|(https, _)| https.local_addr()).transpose()?;
    let platform = Arc::new(Platform::new(store, supervisor, gateway.clone(), state_dir.clone()));
    for service in &options.services {
        platform.put(service)?;
    }
    // Startup is a deploy from the empty state: the same path as any later change.
    for problem in platform.apply_all()? {
        warn!(problem = %problem, "a stored service could not be started");
        eprintln!("warning: {problem}");
    }

    let listener = bind(options.api, "the control API", "--api").await?;
    let api = listener.local_addr()?;
    let gateway_server = tokio::spawn(async move {
        let (https, http3) = secure.map_or((None, None), |(https, http3)| (Some(https), http3));
        if let Err(error) = gateway.serve(Listeners { http: gateway_listener, https, http3 }).await {
            warn!(error = %error, "gateway stopped");
        }
    });
    let shutdown = Arc::new(Notify::new());
    let api_state = ApiState {
        platform: platform.clone(),
        token: token.into(),
        shutdown: shutdown.clone(),
        webhook: options.webhook.clone(),
    };
    let server = tokio::spawn(async move {
        if let Err(error) = berth_api::serve(listener, api_state).await {
            warn!(error = %error, "control API stopped");
        }
    });
    let info = DaemonInfo { api, gateway: gateway_addr, https: https_addr, pid: std::process::id() };
    state_dir::write_info(&state_dir, &info)?;
    info!(api = %api, gateway = ?gateway_addr, https = ?https_addr, state_dir = %state_dir.display(), "daemon ready");
    if let Some(addr) = gateway_addr {
        eprintln!("berth: gateway on http://{addr} (http://<service>.localhost:{}/)", addr.port());
    }
    if let Some(https_addr) = https_addr {
        eprintln!(
            "berth: HTTPS on https://{https_addr} (self-signed certificates in {})",
            state_dir.join("certs").display()
        );
    }
    eprintln!("berth: control API on {api}, state in {}", state_dir.display());

    wait_for_stop(&shutdown).await;
    eprintln!("berth: stopping every service...");
    // Services drain through the gateway, so it keeps serving until they are gone.
    platform.shutdown().await;
    gateway_server.abort();
    server.abort();
    state_dir::remove_info(&state_dir);
    info!("daemon stopped");
    Ok(())
}

async fn wait_for_stop(shutdown: &Notify) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(term) => term.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = term => info!("SIGTERM received"),
        _ = shutdown.notified() => info!("shutdown requested"),
    }
}

async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|error| {
        anyhow::Error::new(super::cli::error::UserError {
            message: format!("cannot listen on {addr} for {what}: {error}"),
            hint: Some(format!("pass another address with {flag} ADDR, or stop what holds it")),
            code: 1,
        })
    })
}

/// The HTTPS listener and, with `http3`, a UDP socket on the same port.
async fn bind_secure(
    https: Option<SocketAddr>,
    http3: bool,
) -> anyhow::Result<Option<(tokio::net::TcpListener, Option<std::net::UdpSocket>)>> {
    let Some(https) = https else { return Ok(None) };
    let listener = bind(https, "HTTPS", "--https").await?;
    if !http3 {
        return Ok(Some((listener, None)));
    }
    let addr = listener.local_addr()?;
    let udp = std::net::UdpSocket::bind(addr).map_err(|error| {
        anyhow::Error::new(super::cli::error::UserError {
            message: format!("cannot listen on UDP {addr} for HTTP/3: {error}"),
            hint: Some("pass another --https address, or --no-http3 to serve HTTPS without HTTP/3".to_owned()),
            code: 1,
        })
    })?;
    Ok(Some((listener, Some(udp))))
}

/// `berth gateway`: the gateway alone in front of fixed upstreams (for benchmarks and trials).
pub async fn run_gateway(args: crate::cli::args::GatewayArgs) -> anyhow::Result<()> {
    use berth_gateway::{RoutingTable, ServiceRoutes, Upstream};
    let upstreams = args.upstream;
    // Self-signed certificates (and their keys) last as long as this gateway: a directory of its own,
    // removed when it stops on SIGINT or SIGTERM.
    let cert_dir = || {
        tempfile::Builder::new().prefix("berth-gateway-certs-").tempdir().map_err(|error| {
            anyhow::Error::new(super::cli::error::UserError {
                message: format!("cannot create a directory for self-signed certificates: {error}"),
                hint: Some(format!(
                    "{} must be writable; set TMPDIR to another directory",
                    std::env::temp_dir().display()
                )),
                code: 1,
            })
        })
    };
    let self_signed_dir = args.https.map(|_| cert_dir()).transpose()?;
    let tls = self_signed_dir.as_ref().map(|dir| TlsConfig {
        certificates: match (args.cert, args.key) {
            (Some(cert), Some(key)) => vec![CertificateFiles { cert, key }],
            _ => Vec::new(),
        },
        self_signed_dir: dir.path().to_owned(),
    });
    let gateway = Gateway::new(GatewayConfig { tls, ..GatewayConfig::default() });
    let endpoints = upstreams
        .iter()
        .enumerate()
        .map(|(idx, addr)| Upstream {
            instance: format!("upstream-{idx}"),
            addr: *addr,
            group: "stable".into(),
            weight: 100,
        })
        .collect();
    gateway.update(&RoutingTable {
        services: vec![ServiceRoutes {
            name: "upstream".into(),
            hosts: vec![],
            routes: vec![],
            endpoints,
            protocol: Default::default(),
            pools: Vec::new(),
            redirect_https: false,
            sticky: None,
        }],
        default_service: Some("upstream".into()),
    });
    let listener = bind(args.listen, "the gateway", "--listen").await?;
    eprintln!("berth: gateway on http://{} -> {upstreams:?}", listener.local_addr()?);
    let (https, http3) = bind_secure(args.https, !args.no_http3).await?.map_or((None, None), |(l, u)| (Some(l), u));
    if let Some(https) = &https {
        eprintln!("berth: gateway on https://{}", https.local_addr()?);
    }
    let never_notified = Notify::new();
    tokio::select! {
        res = gateway.serve(Listeners { http: Some(listener), https, http3 }) => res?,
        _ = wait_for_stop(&never_notified) => {}
    }
    drop(self_signed_dir); // removes the certificates
    Ok(())
}
