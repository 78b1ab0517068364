//! Runs service replicas as child processes and keeps them alive.
//!
//! One actor task per service owns that service's replica slots; one task per running instance waits for the
//! process and probes its health. The supervisor knows nothing of `app.toml`: `berth-deploy` translates the
//! spec into a [`ServiceConfig`]. Replicas outlive the daemon on purpose (their stdio goes through FIFOs and they
//! carry `BERTH_STATE_DIR` in their environment), so a restarted daemon re-adopts them instead of restarting them.

pub mod cgroup;
pub mod logs;
pub mod procfs;

mod backoff;
mod config;
mod health;
mod instance;
mod probe;
mod service;
mod status;
mod supervisor;

pub use backoff::RestartBackoff;
pub use config::{DrainHook, HealthConfig, ServiceConfig, SupervisorConfig};
pub use status::{Endpoint, Endpoints, ExitReason, ReplicaState, ReplicaStatus, ServiceState, ServiceStatus};
pub use supervisor::{Supervisor, SupervisorError};
