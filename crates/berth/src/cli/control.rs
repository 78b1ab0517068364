//! Commands that change a running service: restart, scale, stop, start, and `down` for the whole daemon.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_api::wire::ServiceView;
use serde_json::json;

use super::args::{DownArgs, ScaleArgs, TargetArgs};
use super::client::{Client, read_daemon_info};
use super::error::user;

pub async fn restart(state_dir: &Path, args: &TargetArgs) -> anyhow::Result<ExitCode> {
    act(state_dir, &args.service, "restart", None, args.wait, args.json, "rolling restart started").await
}

pub async fn stop(state_dir: &Path, args: &TargetArgs) -> anyhow::Result<ExitCode> {
    act(state_dir, &args.service, "stop", None, false, args.json, "stopping").await
}

pub async fn start(state_dir: &Path, args: &TargetArgs) -> anyhow::Result<ExitCode> {
    act(state_dir, &args.service, "start", None, args.wait, args.json, "starting").await
}

pub async fn scale(state_dir: &Path, args: &ScaleArgs) -> anyhow::Result<ExitCode> {
    let body = json!({ "replicas": args.replicas });
    let what = format!("scaling to {} replicas", args.replicas);
    act(state_dir, &args.service, "scale", Some(body), args.wait, args.json, &what).await
}

pub async fn down(state_dir: &Path, args: &DownArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state_dir)?;
    client.post("/v1/shutdown", None).await?;
    if !args.json {
        eprintln!("stopping every service and the daemon...");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_daemon_info(state_dir)?.is_some() {
        if Instant::now() > deadline {
            return Err(user(
                "the daemon did not stop within 120 s",
                format!("see its output; kill it with `kill {}` if it hangs", client.info.pid),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if args.json {
        println!("{}", json!({ "stopped": true }));
    } else {
        eprintln!("stopped");
    }
    Ok(ExitCode::SUCCESS)
}

async fn act(
    state_dir: &Path,
    service: &str,
    verb: &str,
    body: Option<serde_json::Value>,
    wait: bool,
    json: bool,
    what: &str,
) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state_dir)?;
    client.post(&format!("/v1/services/{service}/{verb}"), body).await?;
    if !json {
        eprintln!("{service}: {what}");
    }
    if wait {
        wait_until_settled(&client, service, json).await?;
    }
    if json {
        let view: ServiceView = client.get(&format!("/v1/services/{service}")).await?;
        println!("{}", serde_json::to_string_pretty(&view)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls until every desired replica is healthy and nothing is starting or stopping, printing each change.
async fn wait_until_settled(client: &Client, service: &str, quiet: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = String::new();
    // The daemon acts asynchronously: give it one poll to pick the command up before judging.
    tokio::time::sleep(Duration::from_millis(100)).await;
    loop {
        let view: ServiceView = client.get(&format!("/v1/services/{service}")).await?;
        let busy = view.replicas.iter().any(|r| r.state == "starting" || r.retiring);
        let line = format!("{}/{} healthy, {} rows", view.healthy_replicas, view.desired_replicas, view.replicas.len());
        if line != last && !quiet {
            eprintln!("  {service}: {line}");
            last = line;
        }
        if !busy && view.healthy_replicas == view.desired_replicas {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(user(
                format!("`{service}` did not settle within 300 s"),
                format!("`berth ps {service}` and `berth logs {service}` show what is wrong"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
