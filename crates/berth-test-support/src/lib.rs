//! Helpers for integration tests that run the real `berth` binary and the example services:
//! build an example, start a daemon in a temporary state directory and kill everything it
//! started, talk HTTP/1.1 to it, and poll for readiness with a deadline instead of sleeping.
//!
//! Everything here is synchronous and std-only, and panics with a useful message when a test's
//! precondition fails: this crate is a dev-dependency, and a panic is how a test fails.

mod binaries;
mod daemon;
mod files;
mod http;
pub mod load;
mod process;
mod wait;

pub use binaries::{example_bin, workspace_root};
pub use daemon::Daemon;
pub use files::{temp_dir, write_service};
pub use http::{http_get, http_request};
pub use process::{kill_processes_with_env, processes_with_env};
pub use wait::wait_until;
