//! Berth's HTTP gateway: one front door for every service. Routes by host and path prefix to the healthy
//! replicas it is handed, balances with power of two choices over a peak-EWMA latency cost, and hides
//! replica failures with retries, a retry budget, outlier ejection and stall detection.
//!
//! The gateway never reads files or the spec: `berth-deploy` hands it `RoutingTable` values, and it swaps
//! an immutable compiled snapshot per update.

mod balance;
mod budget;
mod cache;
mod endpoint;
mod error;
mod framing;
mod gateway;
mod headers;
pub mod metrics;
mod proxy;
mod table;

pub use gateway::{Gateway, GatewayConfig};
pub use table::{
    CachePolicy, Rate, RateKey, RateLimitPolicy, RoutePolicy, RoutingTable, ServiceRoutes, Upstream, UpstreamProtocol,
};
