//! `hello`: the example service Berth runs. A small HTTP server with a health endpoint,
//! Prometheus metrics and fault switches (crash, hang, leak, fail health, flaky answers), so the
//! platform's supervision, healing and alerting can be exercised against a real process.
//!
//! See `examples/hello/README.md` for the endpoints and the environment switches.

mod config;
mod faults;
mod log;
mod metrics;
mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use config::Config;
use server::AppState;

/// Exit code for a configuration error (missing or invalid environment variable).
const EXIT_CONFIG: u8 = 2;
/// Exit code when the server cannot start or fails while serving.
const EXIT_SERVE: u8 = 1;

fn main() -> ExitCode {
    let started = Instant::now();
    match config::fail_start_code(config::env_lookup) {
        Ok(None) => {}
        Ok(Some(code)) => {
            eprintln!("failing at start");
            std::process::exit(code);
        }
        Err(error) => return config_error(&error),
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => return config_error(&error),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hello: error: failed to start the async runtime: {error}");
            return ExitCode::from(EXIT_SERVE);
        }
    };
    match runtime.block_on(serve(config, started)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hello: error: {message}");
            ExitCode::from(EXIT_SERVE)
        }
    }
}

async fn serve(config: Config, started: Instant) -> Result<(), String> {
    if !config.start_delay.is_zero() {
        tokio::time::sleep(config.start_delay).await;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|error| format!("failed to listen on {addr}: {error}"))?;
    let local_addr = listener.local_addr().map_err(|error| format!("failed to read the listening address: {error}"))?;

    let state = Arc::new(AppState::new(&config, started));
    state.logger.event("info", &format!("listening on {local_addr}"));
    if config.leak_mib_per_sec > 0.0 {
        tokio::spawn(server::leak_continuously(state.clone(), config.leak_mib_per_sec));
    }

    let shutdown_state = state.clone();
    axum::serve(listener, server::router(state.clone()))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            shutdown_state.logger.event("info", "shutting down, finishing in-flight requests");
        })
        .await
        .map_err(|error| format!("server failed: {error}"))?;
    state.logger.event("info", "stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. A signal that cannot be watched never resolves, rather than
/// stopping the server at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let wait_for = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                eprintln!("hello: warning: cannot watch signal {}: {error}", kind.as_raw_value());
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = wait_for(SignalKind::terminate()) => {}
        _ = wait_for(SignalKind::interrupt()) => {}
    }
}

fn config_error(error: &config::ConfigError) -> ExitCode {
    eprintln!("hello: error: {error}");
    ExitCode::from(EXIT_CONFIG)
}
