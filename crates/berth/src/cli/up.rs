//! `berth up`: load and build the given services, then run the daemon in the foreground.

use std::path::Path;
use std::process::ExitCode;

use std::net::SocketAddr;

use berth_api::Webhook;
use berth_deploy::{LoadedService, StepKind, discover, load_dir, load_platform, run_step};
use berth_gateway::CertificateFiles;
use tracing_subscriber::EnvFilter;

use super::args::{LogFormat, UpArgs};
use super::client::read_daemon_info;
use super::error::user;
use crate::daemon::{self, DaemonOptions};

/// The control API's address when neither a flag nor berth.toml gives one (berth.toml cannot turn it off).
const DEFAULT_API: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9190);

pub fn up(state_dir: &Path, args: UpArgs, runtime: tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    init_tracing(args.log_format);
    if let Some(info) = read_daemon_info(state_dir)?
        && process_alive(info.pid)
    {
        return Err(user(
            format!("a berth daemon (pid {}) is already running with state dir {}", info.pid, state_dir.display()),
            "use `berth ps` to talk to it, `berth down` to stop it, or pass another --state-dir",
        ));
    }
    let (platform_file, platform) = load_platform(&args.dirs)?;
    if let Some(file) = &platform_file {
        eprintln!("berth: platform config from {}", file.display());
    }
    let services = load_all(&args)?;
    if !args.no_build {
        for service in &services {
            if let Some(build) = &service.spec.build {
                eprintln!("berth: building {} ({})", service.spec.name, build.command.join(" "));
                run_step(StepKind::Build, service, &mut |line| eprintln!("  {}", line.text))?;
            }
        }
    }
    for service in &services {
        eprintln!("berth: {} from {}", service.spec.name, service.dir.display());
    }
    // A flag wins over berth.toml, which wins over the defaults.
    let listeners = &platform.gateway;
    let https = args.https.unwrap_or(*listeners.https.get_ref()).addr();
    let certificates: Vec<CertificateFiles> = platform
        .certificates
        .iter()
        .map(|c| CertificateFiles { cert: c.cert.get_ref().into(), key: c.key.get_ref().into() })
        .collect();
    if https.is_none() && !certificates.is_empty() {
        eprintln!("berth: warning: HTTPS is off, so the certificates in berth.toml are not served");
    }
    let webhook = match &platform.deploy.webhook {
        Some(url) => Some(Webhook::parse(url.get_ref()).map_err(|error| {
            user(error, "fix `webhook` in [deploy] of berth.toml; `berth check DIR` validates the file")
        })?),
        None => None,
    };
    runtime.block_on(daemon::run(DaemonOptions {
        state_dir: state_dir.to_path_buf(),
        api: args.api.or(platform.api.listen.get_ref().addr()).unwrap_or(DEFAULT_API),
        gateway: args.gateway.unwrap_or(*listeners.http.get_ref()).addr(),
        access_log: args.access_log || listeners.access_log,
        https,
        http3: !args.no_http3 && *listeners.http3.get_ref(),
        certificates,
        webhook,
        services,
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// Loads every service directory, reporting every invalid spec before giving up, so one run shows all
/// there is to fix.
fn load_all(args: &UpArgs) -> anyhow::Result<Vec<LoadedService>> {
    let mut services = Vec::new();
    let mut n_invalid = 0;
    for dir in &args.dirs {
        for service_dir in discover(dir)? {
            match load_dir(&service_dir) {
                Ok(service) => services.push(service),
                Err(berth_deploy::LoadError::Invalid { rendered, .. }) => {
                    eprint!("{rendered}");
                    n_invalid += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    if n_invalid > 0 {
        return Err(user(
            format!("{n_invalid} service spec(s) are invalid; nothing was started"),
            "fix the files above; `berth check DIR` validates one without starting anything",
        ));
    }
    Ok(services)
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn process_alive(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}
