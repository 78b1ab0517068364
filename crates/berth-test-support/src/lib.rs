//! Helpers for integration tests that run the real `berth` binary and the example services:
//! build an example, start a daemon in a temporary state directory and kill everything it
//! started, talk HTTP/1.1 to it, and poll for readiness with a deadline instead of sleeping.
//!
//! Everything here but the HTTP/3 client (`h3_client`, async on the test's tokio runtime) is synchronous,
//! and panics with a useful message when a test's
//! precondition fails: this crate is a dev-dependency, and a panic is how a test fails.

mod binaries;
mod daemon;
mod files;
pub mod h3_client;
mod http;
mod https;
pub mod load;
mod process;
mod wait;

pub use binaries::{example_bin, workspace_root};
pub use daemon::Daemon;
pub use files::{temp_dir, write_service};
pub use http::{http_get, http_request};
pub use https::https_get;
pub use process::{kill_processes_with_env, processes_with_env};
pub use wait::wait_until;
