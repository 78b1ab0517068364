//! The daemon: wires the store, the supervisor, the platform and the control API together, and runs until
//! SIGINT, SIGTERM or `berth down`. Wiring only; the behaviour lives in the library crates.

mod state_dir;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_api::ApiState;
use berth_api::wire::DaemonInfo;
use berth_deploy::{LoadedService, Platform, Store};
use berth_supervisor::{RestartBackoff, Supervisor, SupervisorConfig, logs::LogLimits};
use tokio::sync::Notify;
use tracing::{info, warn};

pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub api: SocketAddr,
    /// Services to deploy at startup, besides those stored from earlier runs.
    pub services: Vec<LoadedService>,
}

pub async fn run(options: DaemonOptions) -> anyhow::Result<()> {
    let state_dir = state_dir::prepare(&options.state_dir)?;
    let _lock = state_dir::lock(&state_dir)?;
    let token = state_dir::ensure_token(&state_dir)?;

    let supervisor = Supervisor::start(SupervisorConfig {
        state_dir: state_dir.clone(),
        log_limits: LogLimits::default(),
        backoff: RestartBackoff::default(),
    })?;
    let store = Store::open(&state_dir.join("state.redb"))?;
    let platform = Arc::new(Platform::new(store, supervisor));
    for service in &options.services {
        platform.put(service)?;
    }
    // Startup is a deploy from the empty state: the same path as any later change.
    for problem in platform.apply_all()? {
        warn!(problem = %problem, "a stored service could not be started");
        eprintln!("warning: {problem}");
    }

    let listener = tokio::net::TcpListener::bind(options.api)
        .await
        .with_context(|| format!("failed to listen on {} for the control API", options.api))
        .map_err(|error| {
            error.context(super::cli::error::UserError {
                message: "the control API address is taken".into(),
                hint: Some("pass another with --api ADDR (or stop what holds it)".into()),
                code: 1,
            })
        })?;
    let api = listener.local_addr()?;
    let shutdown = Arc::new(Notify::new());
    let api_state = ApiState { platform: platform.clone(), token: token.into(), shutdown: shutdown.clone() };
    let server = tokio::spawn(async move {
        if let Err(error) = berth_api::serve(listener, api_state).await {
            warn!(error = %error, "control API stopped");
        }
    });
    state_dir::write_info(&state_dir, &DaemonInfo { api, pid: std::process::id() })?;
    info!(api = %api, state_dir = %state_dir.display(), "daemon ready");
    eprintln!("berth: control API on {api}, state in {}", state_dir.display());

    wait_for_stop(&shutdown).await;
    eprintln!("berth: stopping every service...");
    platform.shutdown().await;
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
