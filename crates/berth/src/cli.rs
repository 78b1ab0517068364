//! The commands. Results go to stdout, messages to stderr; `--json` where scripts read the output.

pub mod args;
pub mod client;
pub mod error;

mod cache;
mod check;
mod control;
mod deploy;
mod logs;
mod ps;
mod releases;
mod table;
mod up;

use std::process::ExitCode;

use args::{Args, Cmd};

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state_dir = args.state_dir();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|error| anyhow::anyhow!("cannot start the async runtime: {error}"))
    };
    match args.cmd {
        Cmd::Init(init) => check::init(&init),
        Cmd::Check(check) => check::check(&check),
        Cmd::Up(up) => up::up(&state_dir, up, runtime()?),
        Cmd::Ps(ps) | Cmd::Status(ps) => runtime()?.block_on(ps::ps(&state_dir, &ps)),
        Cmd::Logs(logs) => runtime()?.block_on(logs::logs(&state_dir, &logs)),
        Cmd::Deploy(args) => runtime()?.block_on(deploy::deploy(&state_dir, &args)),
        Cmd::Rollback(args) => runtime()?.block_on(deploy::rollback(&state_dir, &args)),
        Cmd::Promote(args) => runtime()?.block_on(deploy::promote(&state_dir, &args)),
        Cmd::Abort(args) => runtime()?.block_on(deploy::abort(&state_dir, &args)),
        Cmd::Delete(args) => runtime()?.block_on(deploy::delete(&state_dir, &args)),
        Cmd::Releases(releases) => runtime()?.block_on(releases::releases(&state_dir, &releases)),
        Cmd::Restart(target) => runtime()?.block_on(control::restart(&state_dir, &target)),
        Cmd::Scale(scale) => runtime()?.block_on(control::scale(&state_dir, &scale)),
        Cmd::Stop(target) => runtime()?.block_on(control::stop(&state_dir, &target)),
        Cmd::Start(target) => runtime()?.block_on(control::start(&state_dir, &target)),
        Cmd::Down(down) => runtime()?.block_on(control::down(&state_dir, &down)),
        Cmd::Cache(args::CacheCmd::Purge(purge)) => runtime()?.block_on(cache::purge(&state_dir, &purge)),
        Cmd::Gateway(gateway) => {
            runtime()?.block_on(crate::daemon::run_gateway(gateway))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
