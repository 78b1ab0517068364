//! The gateway's crate-level tests: real loopback traffic through `Gateway::serve` to in-process upstreams.

mod bad_traffic;
mod cache;
mod drain;
mod ejection;
mod group_stats;
mod grpc;
mod h3;
mod passthrough;
mod rate_limit;
mod retries;
mod sticky;
mod support;
mod tls;
