//! The control API: the only way the CLI (and later the dashboard) talks to the daemon, and the only crate
//! that defines its wire types. Every `/v1` call needs the daemon's bearer token; `/healthz` does not.

mod body;
mod routes;
mod webhook;
pub mod wire;

pub use routes::{ApiState, router, serve};
pub use webhook::Webhook;
