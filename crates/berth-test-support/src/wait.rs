//! Readiness polling: retry a check every 50ms until it yields a value or a deadline passes.

use std::time::{Duration, Instant};

/// How often [`wait_until`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `f` every 50ms until it returns `Some`, and returns that value.
///
/// # Panics
///
/// Panics with "timed out after {timeout:?} waiting for {what}" when `timeout` passes first.
#[track_caller]
pub fn wait_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    match poll_until(timeout, f) {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Calls `f` every 50ms until it returns `Some` or `timeout` passes. `f` is always called at
/// least once, and once more at the deadline.
pub(crate) fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value() {
        let mut n_calls = 0;
        let value = wait_until(Duration::from_secs(5), "the third call", || {
            n_calls += 1;
            (n_calls == 3).then_some("ready")
        });
        assert_eq!(value, "ready");
        assert_eq!(n_calls, 3);
    }

    #[test]
    fn panics_with_what_it_waited_for() {
        let started = Instant::now();
        let result = std::panic::catch_unwind(|| wait_until(Duration::from_millis(200), "a miracle", || None::<()>));
        let elapsed = started.elapsed();
        let payload = result.expect_err("wait_until must panic when nothing is ready");
        let message = payload.downcast_ref::<String>().expect("the panic message is formatted, so it is a String");
        assert_eq!(message, "timed out after 200ms waiting for a miracle");
        assert!(elapsed >= Duration::from_millis(200), "gave up early: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "gave up late: {elapsed:?}");
    }
}
