//! Berth's HTTP gateway: one front door for every service. Routes by host and path prefix to the healthy
//! replicas it is handed, balances with power of two choices over a peak-EWMA latency cost, and hides
//! replica failures with retries, a retry budget, outlier ejection and stall detection. Routes can limit
//! request rates per key (header, source or client IP) and send chosen keys to dedicated replica pools.
//! Serves plain HTTP, HTTPS (rustls, SNI, self-signed certificates where none is given) and HTTP/3
//! (quinn + h3).
//!
//! The gateway never reads files or the spec: `berth-deploy` hands it `RoutingTable` values, and it swaps
//! an immutable compiled snapshot per update.

mod access_log;
mod affinity;
mod attempt_timer;
mod balance;
mod budget;
mod busy_poll;
mod cache;
mod endpoint;
mod error;
mod framing;
mod gateway;
mod group_stats;
mod h3;
mod headers;
pub mod metrics;
mod proxy;
mod ratelimit;
mod serve_h1;
mod sharded;
mod spread;
mod table;
#[cfg(test)]
mod test_rng;
mod tls;
mod upstream;

pub use gateway::{Gateway, GatewayConfig, Listeners};
pub use group_stats::{GroupStats, LatencyHistogram};
pub use table::{
    CachePolicy, Rate, RateKey, RateLimitPolicy, RoutePolicy, RoutingTable, ServiceRoutes, Sticky, Upstream,
    UpstreamProtocol,
};
pub use tls::{CertificateFiles, TlsConfig};
