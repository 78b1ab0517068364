//! Integration tests: the real `berth` binary, real replica processes, loopback only.

mod cache;
mod check;
mod control;
mod deploy;
mod gateway;
mod healing;
mod partners;
mod restart;
mod support;
mod tls;
