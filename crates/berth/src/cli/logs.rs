//! `berth logs`: stored lines, then (with -f) new ones as they come.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use berth_supervisor::logs::LogLine;

use super::args::LogsArgs;
use super::client::Client;

pub async fn logs(state_dir: &Path, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state_dir)?;
    let mut query = vec![format!("follow={}", args.follow)];
    if let Some(replica) = args.replica {
        query.push(format!("replica={replica}"));
    }
    if let Some(since) = args.since {
        let since_ms = SystemTime::now().checked_sub(since).map(berth_api::wire::unix_ms).unwrap_or(0);
        query.push(format!("since_ms={since_ms}"));
    }
    if let Some(tail) = args.tail {
        query.push(format!("tail={tail}"));
    }
    let path = format!("/v1/services/{}/logs?{}", args.service, query.join("&"));
    let mut pending = Vec::new();
    let stdout = std::io::stdout();
    client
        .stream(&path, |chunk| {
            pending.extend_from_slice(chunk);
            let mut out = stdout.lock();
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = pending.drain(..=end).collect();
                let ok = if args.json { out.write_all(&raw).is_ok() } else { print_human(&mut out, &raw[..end]) };
                if !ok {
                    return false; // stdout closed (e.g. piped into `head`)
                }
            }
            out.flush().is_ok()
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn print_human(out: &mut impl Write, raw: &[u8]) -> bool {
    match serde_json::from_slice::<LogLine>(raw) {
        Ok(line) => {
            let stream = match line.stream {
                berth_supervisor::logs::Stream::Stdout => "out",
                berth_supervisor::logs::Stream::Stderr => "err",
                berth_supervisor::logs::Stream::Berth => "berth",
            };
            writeln!(out, "{} {}[{}] {stream:>5} | {}", line.ts, line.service, line.replica, line.line).is_ok()
        }
        Err(_) => out.write_all(raw).and_then(|()| out.write_all(b"\n")).is_ok(),
    }
}
