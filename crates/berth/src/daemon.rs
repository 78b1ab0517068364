//! The daemon: wires the store, the supervisor, the platform and the control API together, and runs until
//! SIGINT, SIGTERM or `berth down`. Wiring only; the behaviour lives in the library crates.

mod state_dir;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use berth_api::ApiState;
use berth_api::wire::DaemonInfo;
use berth_deploy::{LoadedService, Platform, Store};
use berth_gateway::{Gateway, GatewayConfig};
use berth_supervisor::{RestartBackoff, Supervisor, SupervisorConfig, logs::LogLimits};
use tokio::sync::Notify;
use tracing::{info, warn};

pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub api: SocketAddr,
    pub gateway: SocketAddr,
    /// Services to deploy at startup, besides those stored from earlier runs.
    pub services: Vec<LoadedService>,
}

pub async fn run(options: DaemonOptions) -> anyhow::Result<()> {
    let state_dir = state_dir::prepare(&options.state_dir)?;
    let _lock = state_dir::lock(&state_dir)?;
    let token = state_dir::ensure_token(&state_dir)?;

    let gateway = Gateway::new(GatewayConfig::default());
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
    let gateway_listener = bind(options.gateway, "the gateway", "--gateway").await?;
    let gateway_addr = gateway_listener.local_addr()?;
    let platform = Arc::new(Platform::new(store, supervisor, gateway.clone()));
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
        if let Err(error) =
            gateway.serve(berth_gateway::Listeners { http: Some(gateway_listener), ..Default::default() }).await
        {
            warn!(error = %error, "gateway stopped");
        }
    });
    let shutdown = Arc::new(Notify::new());
    let api_state = ApiState { platform: platform.clone(), token: token.into(), shutdown: shutdown.clone() };
    let server = tokio::spawn(async move {
        if let Err(error) = berth_api::serve(listener, api_state).await {
            warn!(error = %error, "control API stopped");
        }
    });
    state_dir::write_info(&state_dir, &DaemonInfo { api, gateway: Some(gateway_addr), pid: std::process::id() })?;
    info!(api = %api, gateway = %gateway_addr, state_dir = %state_dir.display(), "daemon ready");
    eprintln!("berth: gateway on http://{gateway_addr} (http://<service>.localhost:{}/)", gateway_addr.port());
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

/// `berth gateway`: the gateway alone in front of fixed upstreams (for benchmarks and trials).
pub async fn run_gateway(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> anyhow::Result<()> {
    use berth_gateway::{RoutingTable, ServiceRoutes, Upstream};
    let gateway = Gateway::new(GatewayConfig::default());
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
        }],
        default_service: Some("upstream".into()),
    });
    let listener = bind(listen, "the gateway", "--listen").await?;
    eprintln!("berth: gateway on http://{} -> {upstreams:?}", listener.local_addr()?);
    tokio::select! {
        res = gateway.serve(berth_gateway::Listeners { http: Some(listener), ..Default::default() }) => res?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
