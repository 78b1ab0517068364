//! Command-line arguments (clap derive). Flags are kebab-case; a verb means the same everywhere.

use std::net::SocketAddr;
use std::path::PathBuf;

use berth_spec::Listen;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "Run services from an app.toml: replicas, health, healing, logs")]
pub struct Args {
    /// The daemon's state directory [default: $XDG_STATE_HOME/berth or ~/.local/state/berth]
    #[arg(long, global = true, env = "BERTH_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

impl Args {
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local").join("state")));
        base.unwrap_or_else(|| PathBuf::from(".")).join("berth")
    }
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Scaffold a commented app.toml and alert.yaml in DIR (what a platform's `service create` does)
    Init(InitArgs),
    /// Validate DIR/app.toml and print the effective config
    Check(CheckArgs),
    /// Start the daemon in the foreground and run the services in DIR... (and those it ran before)
    Up(UpArgs),
    /// Show services and their replicas
    Ps(PsArgs),
    /// Same as `ps`
    Status(PsArgs),
    /// Show a service's logs
    Logs(LogsArgs),
    /// Build, test and snapshot DIR into a new release, then roll it out (rolling, blue-green or canary)
    Deploy(DeployArgs),
    /// Go back to an earlier release: at once while the old one is warm, else by redeploying it (no rebuild)
    Rollback(RollbackArgs),
    /// Finish the rollout under way now: skip its remaining steps and waiting windows
    Promote(RolloutArgs),
    /// Roll back the rollout under way
    Abort(RolloutArgs),
    /// Stop a service and forget it (a preview copy, say); its releases stay listed
    Delete(DeleteArgs),
    /// Show a service's releases, newest first: when, which commit, how each deploy went
    Releases(ReleasesArgs),
    /// Replace every replica of a service, one at a time, without downtime
    Restart(TargetArgs),
    /// Set a service's number of replicas
    Scale(ScaleArgs),
    /// Stop a service's replicas (it stays known; `berth start` brings it back)
    Stop(TargetArgs),
    /// Start a stopped service
    Start(TargetArgs),
    /// Stop every service and the daemon
    Down(DownArgs),
    /// Manage the gateway's response cache
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Run the gateway alone in front of fixed upstreams (benchmarks, trials)
    Gateway(GatewayArgs),
}

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Upstream address; repeat for several
    #[arg(long, required = true)]
    pub upstream: Vec<SocketAddr>,
    /// Also serve HTTPS (and HTTP/3 on the same port over UDP) on this address
    #[arg(long)]
    pub https: Option<SocketAddr>,
    /// PEM certificate chain for --https [default: a self-signed certificate]
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// With --https: no HTTP/3 listener
    #[arg(long)]
    pub no_http3: bool,
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to create the files in
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Service name [default: the directory's name]
    #[arg(long)]
    pub name: Option<String>,
    /// Overwrite existing files
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Service directories (a directory without app.toml: each subdirectory that has one)
    pub dirs: Vec<PathBuf>,
    /// Address of the control API [default: berth.toml's, else 127.0.0.1:9190]
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// Address of the gateway's plain HTTP listener, or `off` [default: berth.toml's, else 127.0.0.1:8080]
    #[arg(long)]
    pub gateway: Option<Listen>,
    /// Address of the gateway's HTTPS listener (HTTP/3 uses the same port over UDP), or `off`
    /// [default: berth.toml's, else 127.0.0.1:8443]
    #[arg(long)]
    pub https: Option<Listen>,
    /// No HTTP/3 listener (QUIC over UDP on the HTTPS port)
    #[arg(long)]
    pub no_http3: bool,
    /// Do not run the services' [build] commands first
    #[arg(long)]
    pub no_build: bool,
    /// Log every request through the gateway (one `berth::access` event each; JSON with --log-format json)
    #[arg(long)]
    pub access_log: bool,
    /// Log format of the daemon's own log on stderr
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Only this service
    pub service: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    pub service: String,
    /// Keep printing new lines
    #[arg(short, long)]
    pub follow: bool,
    /// Only this replica
    #[arg(long, value_name = "N")]
    pub replica: Option<u32>,
    /// Only lines newer than this (e.g. 10m, 1h30m)
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub since: Option<std::time::Duration>,
    /// Only the last N lines
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReleasesArgs {
    pub service: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    pub service: String,
    /// Wait until every replica is healthy, showing progress
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The service directory (holding app.toml)
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Override `[deploy] strategy`
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// Deploy a separate preview copy, `<service>-<branch>`, at `<service>-<branch>.localhost`
    #[arg(long)]
    pub branch: Option<String>,
    /// Wait for the whole rollout (warm old release, watch window), not only until the release serves all traffic
    #[arg(long)]
    pub wait: bool,
    /// One JSON object per progress event
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StrategyArg {
    Rolling,
    Bluegreen,
    Canary,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    pub service: String,
    /// The release to return to [default: the one before the live one]
    #[arg(long)]
    pub to: Option<u32>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    pub service: String,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub service: String,
    /// Delete the preview copy `<service>-<branch>`
    #[arg(long)]
    pub branch: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    pub service: String,
    pub replicas: u32,
    /// Wait until every replica is healthy, showing progress
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CacheCmd {
    /// Remove a service's cached responses, all of them or those under PATH
    Purge(CachePurgeArgs),
}

#[derive(Debug, clap::Args)]
pub struct CachePurgeArgs {
    pub service: String,
    /// Only paths under this prefix (e.g. /api covers /api, /api/users and /api?x=1)
    pub path: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[arg(long)]
    pub json: bool,
}
