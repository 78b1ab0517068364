//! `berth deploy`, `rollback`, `promote`, `abort` and `delete`: releases in and out of service. Progress comes
//! from the daemon as NDJSON events and is printed as it arrives (`--json`: the events themselves).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use berth_api::wire::{DeployBody, DeployEventView, RollbackBody};

use super::args::{DeleteArgs, DeployArgs, RollbackArgs, RolloutArgs, StrategyArg};
use super::client::Client;
use super::error::user;

pub async fn deploy(state_dir: &Path, args: &DeployArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state_dir)?;
    let dir = std::path::absolute(&args.dir)?;
    if !dir.join("app.toml").is_file() {
        return Err(user(
            format!("no app.toml in {}", dir.display()),
            "pass the service directory, or create one with `berth init DIR`",
        ));
    }
    let strategy = args.strategy.map(|strategy| match strategy {
        StrategyArg::Rolling => "rolling",
        StrategyArg::Bluegreen => "bluegreen",
        StrategyArg::Canary => "canary",
    });
    let body = DeployBody {
        dir: dir.display().to_string(),
        strategy: strategy.map(str::to_owned),
        branch: args.branch.clone(),
    };
    follow(&client, "/v1/deploy", serde_json::to_value(body)?, args.json, args.wait).await
}

pub async fn rollback(state_dir: &Path, args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state_dir)?;
    let body = serde_json::to_value(RollbackBody { to: args.to })?;
    follow(&client, &format!("/v1/services/{}/rollback", args.service), body, args.json, true).await
}

pub async fn promote(state_dir: &Path, args: &RolloutArgs) -> anyhow::Result<ExitCode> {
    Client::connect(state_dir)?.post(&format!("/v1/services/{}/promote", args.service), None).await?;
    eprintln!("{}: promoting the rollout under way", args.service);
    Ok(ExitCode::SUCCESS)
}

pub async fn abort(state_dir: &Path, args: &RolloutArgs) -> anyhow::Result<ExitCode> {
    Client::connect(state_dir)?.post(&format!("/v1/services/{}/abort", args.service), None).await?;
    eprintln!("{}: rolling back the rollout under way", args.service);
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(state_dir: &Path, args: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let name = match &args.branch {
        Some(branch) => format!("{}-{branch}", args.service),
        None => args.service.clone(),
    };
    Client::connect(state_dir)?.delete(&format!("/v1/services/{name}")).await?;
    eprintln!("{name}: deleted");
    Ok(ExitCode::SUCCESS)
}

/// Prints the event stream; stops at `done` (or, without `wait`, once the release serves all traffic).
/// Exit status 0 when the release went (or is going) live, 1 when the deploy failed or rolled back.
async fn follow(
    client: &Client,
    path: &str,
    body: serde_json::Value,
    json: bool,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let mut pending = Vec::new();
    let mut ended: Option<bool> = None;
    let stdout = std::io::stdout();
    client
        .stream_request(http::Method::POST, path, Some(body), |chunk| {
            pending.extend_from_slice(chunk);
            let mut out = stdout.lock();
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = pending.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<DeployEventView>(&raw[..end]) else { continue };
                if json {
                    let _ = out.write_all(&raw);
                } else {
                    print_human(&event);
                }
                match event {
                    DeployEventView::Done { ok, .. } => ended = Some(ok),
                    DeployEventView::Live { .. } if !wait => ended = Some(true),
                    _ => {}
                }
                if ended.is_some() {
                    return false;
                }
            }
            let _ = out.flush();
            true
        })
        .await?;
    match ended {
        Some(true) => Ok(ExitCode::SUCCESS),
        Some(false) => Ok(ExitCode::from(1)),
        None => Err(user(
            "the daemon ended the deploy stream without saying how it ended",
            "`berth releases SERVICE` shows the outcome; `berth logs` the details",
        )),
    }
}

fn print_human(event: &DeployEventView) {
    match event {
        DeployEventView::Step { step, detail } => eprintln!("==> {step}: {detail}"),
        DeployEventView::Output { line, .. } => eprintln!("    {line}"),
        DeployEventView::Progress { message } => eprintln!("    {message}"),
        DeployEventView::Live { message } => eprintln!("==> {message}"),
        DeployEventView::Done { ok: true, message, .. } => eprintln!("==> done: {message}"),
        DeployEventView::Done { ok: false, message, .. } => eprintln!("==> failed: {message}"),
    }
}
