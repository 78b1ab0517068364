//! Releases: immutable, numbered snapshots of a service, and the steps that come before one.
//!
//! A release is what `berth deploy` ships: the service directory copied into
//! `<state dir>/releases/<service>/<number>/app/` and made read-only, the program it runs when that lives
//! outside the service directory (copied to `bin/`), the effective app.toml, and a record in the store
//! with its hashes, git commit, author and deploy outcome. Rolling back means running an earlier release
//! again, never rebuilding it. The `[build]` and `[test]` steps (`steps`) run before the snapshot
//! (`snapshot`); the records live in the store (`store/releases.rs`).

mod snapshot;
mod steps;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::load::{LoadError, LoadedService, load_dir};

pub use snapshot::{DEFAULT_MAX_SNAPSHOT_BYTES, SnapshotOptions, snapshot, snapshot_with};
pub(crate) use snapshot::{release_number_of, remove_tree};
pub use steps::{
    DEFAULT_STEP_TIMEOUT, StepError, StepKind, StepLine, StepOptions, StepOutcome, StepStream, TAIL_LINES, run_step,
    run_step_with,
};

/// One release of a service. Serialized as JSON into the store's `releases_v1` table: that serde form is
/// an on-disk format, so fields are added with `#[serde(default)]` and never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub service: String,
    /// 1, 2, 3... per service, never reused (see `Store::next_release_number`).
    pub number: u32,
    /// SHA-256 (hex) of the snapshot: every copied file's path, executable bit and contents, the effective
    /// app.toml and the copied program. Not of modification times.
    pub artifact_hash: String,
    /// The config's identity, the same string the supervisor shows as the running release
    /// (`ServiceConfig::release`): two releases with equal config hashes differ in files only.
    pub config_hash: String,
    /// The git commit of the service directory at snapshot time; `None` outside a git work tree.
    pub commit: Option<GitCommit>,
    /// Who made the release: the daemon's `$USER`, or the name the deploy passed in.
    pub author: String,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    /// The release directory, `<state dir>/releases/<service>/<number>`; the service runs from `app/`.
    pub dir: PathBuf,
    /// The release's copy of the program, run instead of `run.command[0]` (set when the program lived
    /// outside the service directory or in an excluded directory such as `target/`).
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// Deploy fields, kept up to date by the rollout with `Store::update_release`.
    #[serde(default)]
    pub strategy: Option<berth_spec::Strategy>,
    #[serde(default)]
    pub outcome: ReleaseOutcome,
    #[serde(default)]
    pub deploy_started_ms: Option<u64>,
    #[serde(default)]
    pub deploy_finished_ms: Option<u64>,
}

/// The git state of the service directory a release was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCommit {
    /// Full commit id of `HEAD`.
    pub sha: String,
    /// The work tree under the service directory had changes not in `HEAD` (tracked or untracked).
    pub dirty: bool,
}

/// Where a release stands. `Built` until a deploy starts; a release leaves `Live` only when another one
/// replaces it (`Superseded`) or it is rolled back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReleaseOutcome {
    #[default]
    Built,
    Deploying,
    Live,
    Superseded,
    RolledBack {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: String, source: std::io::Error },
    #[error(
        "the directory of `{service}` ({dir}) holds {size} to snapshot, over the release size bound of {bound}; \
         largest entries: {largest}"
    )]
    TooLarge { service: String, dir: String, size: String, bound: String, largest: String },
    #[error("the program of `{service}`, `{program}`, does not exist at {path}")]
    ProgramMissing { service: String, program: String, path: String },
    #[error("release {number} of `{service}` already exists at {path}")]
    Exists { service: String, number: u32, path: String },
}

impl ReleaseError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ReleaseError::TooLarge { .. } => Some(
                "`.git`, `target` and `node_modules` are never copied; list other files or directories to leave \
                 out in a `.berthignore` file in the service directory (one name or path per line)",
            ),
            ReleaseError::ProgramMissing { .. } => {
                Some("run the `[build]` step first, or fix `run.command` in app.toml (relative to `run.workdir`)")
            }
            ReleaseError::Exists { .. } => {
                Some("release numbers come from `Store::next_release_number`; take a new one and try again")
            }
            ReleaseError::Io { .. } => None,
        }
    }
}

impl ReleaseOutcome {
    /// Lowercase, dash-separated name, for tables and the API: `built`, `rolled-back`...
    pub fn as_str(&self) -> &'static str {
        match self {
            ReleaseOutcome::Built => "built",
            ReleaseOutcome::Deploying => "deploying",
            ReleaseOutcome::Live => "live",
            ReleaseOutcome::Superseded => "superseded",
            ReleaseOutcome::RolledBack { .. } => "rolled-back",
            ReleaseOutcome::Failed { .. } => "failed",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            ReleaseOutcome::RolledBack { reason } | ReleaseOutcome::Failed { reason } => Some(reason),
            _ => None,
        }
    }
}

impl Release {
    /// The directory the service runs from: the snapshot of its service directory.
    pub fn app_dir(&self) -> PathBuf {
        self.dir.join("app")
    }

    /// The release as a service to run: its snapshot's app.toml, its snapshot directory, and its copy of
    /// the program (`LoadedService::program`).
    pub fn load(&self) -> Result<LoadedService, LoadError> {
        let mut service = load_dir(&self.app_dir())?;
        service.program = self.program.clone();
        Ok(service)
    }

    /// How long the deploy took, once it has finished.
    pub fn deploy_duration_ms(&self) -> Option<u64> {
        Some(self.deploy_finished_ms?.saturating_sub(self.deploy_started_ms?))
    }
}
