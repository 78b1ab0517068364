//! The gateway's crate-level tests: real loopback traffic through `Gateway::serve` to in-process upstreams.

mod bad_traffic;
mod cache;
mod drain;
mod ejection;
mod grpc;
mod passthrough;
mod retries;
mod support;
