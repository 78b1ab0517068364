//! The gateway's crate-level tests: real loopback traffic through `Gateway::serve` to in-process upstreams.

mod bad_traffic;
mod drain;
mod ejection;
mod group_stats;
mod grpc;
mod passthrough;
mod rate_limit;
mod retries;
mod support;
