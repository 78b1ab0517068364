//! Integration tests: the real `berth` binary, real replica processes, loopback only.

mod check;
mod control;
mod healing;
mod restart;
mod support;
