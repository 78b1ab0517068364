//! `berth`: the command-line interface and the daemon, in one binary.
//!
//! `berth up` runs the daemon in the foreground; every other command is a client of the daemon's control
//! API (see `cli::client`). This file only parses arguments, dispatches, and renders errors once.

mod cli;
mod daemon;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Args::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            cli::error::render(&error);
            cli::error::exit_code(&error)
        }
    }
}
