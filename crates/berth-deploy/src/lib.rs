//! Turns desired state into running services: the store of what should run, the translation of a spec into
//! supervisor input, and the platform that applies both. Startup is a deploy from the empty state: boot and
//! `berth up DIR` go through the same `Platform::apply` path.

pub mod analysis;
mod load;
mod platform;
mod store;
mod translate;

pub use load::{LoadError, LoadedService, discover, load_dir, load_platform, run_build};
pub use platform::{Platform, PlatformError};
pub use store::{DesiredService, Store, StoreError};
pub use translate::{pool_unit, to_routing_table, to_service_config, to_service_configs};
