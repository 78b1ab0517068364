//! Turns desired state into running services: the store of what should run, the translation of a spec into
//! supervisor input, and the platform that applies both. Startup is a deploy from the empty state: boot and
//! `berth up DIR` go through the same `Platform::apply` path.

pub mod analysis;
mod load;
mod platform;
mod release;
mod store;
mod translate;

pub use load::{LoadError, LoadedService, discover, load_dir, load_platform};
pub use platform::{Control, DeployEvent, DeployRequest, Platform, PlatformError, RollbackRequest};
pub use release::{
    DEFAULT_MAX_SNAPSHOT_BYTES, DEFAULT_STEP_TIMEOUT, GitCommit, Release, ReleaseError, ReleaseOutcome,
    SnapshotOptions, StepError, StepKind, StepLine, StepOptions, StepOutcome, StepStream, TAIL_LINES, run_step,
    run_step_with, snapshot, snapshot_with,
};
pub use store::{DesiredService, Store, StoreError};
pub use translate::{
    next_unit, pool_unit, release_identity, set_program, to_routing_table, to_service_config, to_service_configs,
};
