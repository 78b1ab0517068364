//! `berth ps`: services and replicas as a table, or JSON.

use std::path::Path;
use std::process::ExitCode;

use berth_api::wire::{ReplicaView, ServiceView};
use berth_spec::format_size_rounded;

use super::args::PsArgs;
use super::client::Client;
use super::table::table;

pub async fn ps(state_dir: &Path, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state_dir)?;
    let services: Vec<ServiceView> = match &args.service {
        Some(name) => vec![client.get(&format!("/v1/services/{name}")).await?],
        None => client.get("/v1/status").await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&services)?);
    } else {
        print!("{}", render(&services));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn render(services: &[ServiceView]) -> String {
    if services.is_empty() {
        return "no services; start some with `berth up DIR`\n".to_owned();
    }
    let mut out = String::new();
    for service in services {
        let limit = service
            .memory_limit_bytes
            .map(|bytes| format!("memory limit {} ({})", format_size_rounded(bytes), service.memory_enforcement))
            .unwrap_or_else(|| "no memory limit".to_owned());
        // Instances of another release are running: a rollout (or a rollback) is under way.
        let other_release =
            service.replicas.iter().any(|r| r.release.as_ref().is_some_and(|rel| *rel != service.release));
        let rolling = if other_release {
            format!(" (rolling out: {}/{} updated)", service.updated_replicas, service.desired_replicas)
        } else {
            String::new()
        };
        out += &format!(
            "{}  {}  {}/{} healthy  release {}{rolling}  {}\n",
            service.name, service.state, service.healthy_replicas, service.desired_replicas, service.release, limit
        );
        let mut rows = vec![
            ["REPLICA", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "HEALTH", "CPU", "RSS", "LAST EXIT"]
                .map(str::to_owned),
        ];
        rows.extend(service.replicas.iter().map(row));
        out += &table(&rows);
        out.push('\n');
    }
    out
}

fn row(replica: &ReplicaView) -> [String; 10] {
    let dash = || "-".to_owned();
    let mut state = replica.state.clone();
    if replica.adopted {
        state += " (adopted)";
    }
    [
        replica.index.to_string(),
        state,
        replica.pid.map(|p| p.to_string()).unwrap_or_else(dash),
        replica.port.map(|p| p.to_string()).unwrap_or_else(dash),
        replica.uptime_ms.map(|ms| duration_human(ms / 1000)).unwrap_or_else(dash),
        replica.restarts.to_string(),
        replica.last_probe.clone().unwrap_or_else(dash),
        replica.cpu_percent.map(|c| format!("{c:.1}%")).unwrap_or_else(dash),
        replica.rss_bytes.map(format_size_rounded).unwrap_or_else(dash),
        replica.last_exit.as_ref().map(|exit| exit.message.clone()).unwrap_or_else(dash),
    ]
}

fn duration_human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_for_people() {
        assert_eq!(duration_human(59), "59s");
        assert_eq!(duration_human(61), "1m1s");
        assert_eq!(duration_human(7322), "2h2m");
    }
}
