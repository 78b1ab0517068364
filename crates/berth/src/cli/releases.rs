//! `berth releases SERVICE`: the release feed, newest first, as a table or JSON.

use std::path::Path;
use std::process::ExitCode;

use berth_api::wire::{ReleaseView, unix_ms};

use super::args::ReleasesArgs;
use super::client::Client;
use super::table::table;

pub async fn releases(state_dir: &Path, args: &ReleasesArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state_dir)?;
    let releases: Vec<ReleaseView> = client.get(&format!("/v1/services/{}/releases", args.service)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&releases)?);
    } else {
        print!("{}", render(&args.service, &releases, unix_ms(std::time::SystemTime::now())));
    }
    Ok(ExitCode::SUCCESS)
}

/// The feed as a table; times relative to `now_ms`.
pub fn render(service: &str, releases: &[ReleaseView], now_ms: u64) -> String {
    if releases.is_empty() {
        return format!("`{service}` has no releases yet; `berth deploy` makes one\n");
    }
    let mut rows =
        vec![["RELEASE", "CREATED", "COMMIT", "AUTHOR", "STRATEGY", "DURATION", "OUTCOME"].map(str::to_owned)];
    rows.extend(releases.iter().map(|release| row(release, now_ms)));
    table(&rows)
}

fn row(release: &ReleaseView, now_ms: u64) -> [String; 7] {
    let dash = || "-".to_owned();
    let commit = release.commit.as_ref().map(|sha| {
        let short: String = sha.chars().take(7).collect();
        if release.dirty { format!("{short}+dirty") } else { short }
    });
    let duration = match (release.deploy_started_ms, release.deploy_finished_ms) {
        (Some(started), Some(finished)) => duration_human(finished.saturating_sub(started)),
        (Some(started), None) => format!("{} so far", duration_human(now_ms.saturating_sub(started))),
        _ => dash(),
    };
    let outcome = match &release.reason {
        Some(reason) => format!("{}: {reason}", release.outcome),
        None => release.outcome.clone(),
    };
    [
        release.number.to_string(),
        format!("{} ago", duration_human(now_ms.saturating_sub(release.created_ms))),
        commit.unwrap_or_else(dash),
        release.author.clone(),
        release.strategy.clone().unwrap_or_else(dash),
        duration,
        outcome,
    ]
}

/// `850ms`, `42s`, `3m12s`, `2h5m`, `4d3h`.
fn duration_human(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(number: u32) -> ReleaseView {
        ReleaseView {
            service: "web".into(),
            number,
            artifact_hash: "ab".repeat(32),
            config_hash: "0123456789ab".into(),
            commit: None,
            dirty: false,
            author: "ana".into(),
            created_ms: 1_000_000,
            strategy: None,
            outcome: "built".into(),
            reason: None,
            deploy_started_ms: None,
            deploy_finished_ms: None,
            dir: "/state/releases/web/1".into(),
        }
    }

    #[test]
    fn feed_table() {
        let now_ms = 1_000_000 + 3 * 3600 * 1000;
        let releases = [
            ReleaseView {
                commit: Some("9f8e7d6c5b4a".into()),
                dirty: true,
                created_ms: now_ms - 90_000,
                strategy: Some("canary".into()),
                outcome: "deploying".into(),
                deploy_started_ms: Some(now_ms - 42_000),
                ..release(3)
            },
            ReleaseView {
                commit: Some("1234567890ab".into()),
                strategy: Some("canary".into()),
                outcome: "rolled-back".into(),
                reason: Some("error rate 9.8% > 1%".into()),
                deploy_started_ms: Some(2_000_000),
                deploy_finished_ms: Some(2_095_000),
                ..release(2)
            },
            release(1),
        ];
        let expected = "  \
RELEASE  CREATED    COMMIT         AUTHOR  STRATEGY  DURATION    OUTCOME
  3        1m30s ago  9f8e7d6+dirty  ana     canary    42s so far  deploying
  2        3h0m ago   1234567        ana     canary    1m35s       rolled-back: error rate 9.8% > 1%
  1        3h0m ago   -              ana     -         -           built
";
        assert_eq!(render("web", &releases, now_ms), expected);
        assert_eq!(render("web", &[], now_ms), "`web` has no releases yet; `berth deploy` makes one\n");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_human(850), "850ms");
        assert_eq!(duration_human(59_999), "59s");
        assert_eq!(duration_human(61_000), "1m1s");
        assert_eq!(duration_human(7_322_000), "2h2m");
    }
}
