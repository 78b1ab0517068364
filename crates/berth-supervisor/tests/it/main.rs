//! Integration tests of the supervisor library: real replica processes (the `hello` example) driven through
//! the public [`berth_supervisor::Supervisor`] API, without the daemon.

mod rollout;
mod support;
