//! The retry budget: retries may add at most a share of the service's request rate (plus a small floor),
//! so that retries never multiply an outage (Finagle's and linkerd's retry budget).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Retries allowed per original request.
const RATIO: f64 = 0.2;
/// Retries allowed per second whatever the traffic, so that a quiet service can still retry.
const MIN_PER_SEC: f64 = 3.0;
/// Most retries that can be saved up.
const MAX_BALANCE: f64 = 10.0;

pub(crate) struct RetryBudget {
    state: Mutex<Balance>,
    /// The balance is at its cap: a deposit changes nothing and takes no lock (the common case, read by
    /// every request on every worker without writing).
    full: AtomicBool,
}

struct Balance {
    tokens: f64,
    refilled_at: Instant,
}

impl RetryBudget {
    pub(crate) fn new() -> RetryBudget {
        RetryBudget {
            state: Mutex::new(Balance { tokens: MIN_PER_SEC, refilled_at: Instant::now() }),
            full: AtomicBool::new(false),
        }
    }

    /// Every original request earns a fraction of a retry.
    pub(crate) fn deposit(&self) {
        if self.full.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut balance) = self.state.lock() {
            balance.tokens = (balance.tokens + RATIO).min(MAX_BALANCE);
            if balance.tokens >= MAX_BALANCE {
                self.full.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Takes one retry if the budget has it.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        let Ok(mut balance) = self.state.lock() else { return false };
        self.full.store(false, Ordering::Relaxed);
        let elapsed = now.saturating_duration_since(balance.refilled_at).as_secs_f64();
        balance.tokens = (balance.tokens + elapsed * MIN_PER_SEC).min(MAX_BALANCE);
        balance.refilled_at = now;
        if balance.tokens >= 1.0 {
            balance.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_near_a_fifth_of_requests() {
        let budget = RetryBudget::new();
        let now = Instant::now();
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            // Every request fails and wants to retry, all within the same instant.
            if budget.withdraw(now) {
                retries += 1;
            }
        }
        assert!((200..=210).contains(&retries), "{retries}");
    }

    #[test]
    fn a_quiet_service_can_still_retry_a_little() {
        let budget = RetryBudget::new();
        let now = Instant::now();
        let allowed = (0..10).filter(|_| budget.withdraw(now)).count();
        assert_eq!(allowed, 3);
        assert!(budget.withdraw(now + std::time::Duration::from_secs(1)));
    }
}
