//! The timers that bound each attempt's first wait for its answer, reused on a worker thread.
//!
//! A new tokio timer that falls due before anything else its runtime waits for makes tokio wake its own
//! driver: a write to the runtime's eventfd and one more turn through `epoll_wait` before the worker can
//! sleep. On a worker that waits for nothing else, that is every request, between its write to the
//! replica and the replica's answer. A timer that is still armed and only moves later costs nothing of
//! the sort: tokio extends it where it is. So a worker keeps the timers its attempts are done with and
//! hands the next attempt one of them, moved to the new deadline; while requests keep coming, a kept timer
//! never falls due and is never armed anew. Once traffic stops, each falls due once, waking the task that
//! used it last for nothing.
//!
//! Only worker threads keep timers (`keep_on_this_thread`): a timer belongs to the runtime that made it,
//! and a worker's tasks never leave its thread. Elsewhere (HTTP/3 on the daemon's runtime) every attempt
//! makes its own.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Instant;

use tokio::time::Sleep;

/// Timers kept per worker: more than the attempts a saturated worker has waiting at once.
const KEEP_AT_MOST: usize = 256;

thread_local! {
    /// Set on a worker thread: its attempts' timers are kept for the next ones.
    static KEEPS: Cell<bool> = const { Cell::new(false) };
    static KEPT: RefCell<Vec<Pin<Box<Sleep>>>> = const { RefCell::new(Vec::new()) };
}

/// Makes this thread keep its attempts' timers: call it on a worker's thread, inside its runtime, whose
/// tasks all stay on that thread.
pub(crate) fn keep_on_this_thread() {
    KEEPS.set(true);
}

/// Runs `fut` until it completes (`Some`) or `deadline` passes first (`None`); `fut` is polled first, as
/// `tokio::time::timeout_at` does.
pub(crate) async fn before<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let mut timer = Timer::until(deadline);
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match &mut timer.0 {
            Some(sleep) => sleep.as_mut().poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    })
    .await
}

/// One attempt's timer (always `Some` until dropped), kept by the worker when the attempt is done with it.
struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    fn until(deadline: Instant) -> Timer {
        let deadline = tokio::time::Instant::from_std(deadline);
        let kept = if KEEPS.get() { KEPT.with_borrow_mut(Vec::pop) } else { None };
        let sleep = match kept {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Timer(Some(sleep))
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let Some(sleep) = self.0.take().filter(|_| KEEPS.get()) else { return };
        KEPT.with_borrow_mut(|kept| {
            if kept.len() < KEEP_AT_MOST {
                kept.push(sleep);
            }
        });
    }
}

/// Drops the timers this thread keeps, and keeps none from now on: call it on a worker's thread before its
/// runtime goes away.
pub(crate) fn stop_keeping_on_this_thread() {
    KEEPS.set(false);
    drop(KEPT.take());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn kept() -> usize {
        KEPT.with_borrow(Vec::len)
    }

    #[tokio::test]
    async fn an_answer_before_the_deadline_is_returned_and_a_late_one_is_not() {
        assert_eq!(before(Instant::now() + Duration::from_secs(60), async { 7 }).await, Some(7));
        let late = before(Instant::now() + Duration::from_millis(20), std::future::pending::<()>());
        let outcome = tokio::time::timeout(Duration::from_secs(10), late).await;
        assert_eq!(outcome, Ok(None), "the deadline ends the wait");
        assert_eq!(kept(), 0, "a thread that does not keep timers keeps none");
    }

    #[tokio::test]
    async fn a_worker_reuses_its_timers_moved_earlier_or_after_they_fell_due() {
        keep_on_this_thread();
        assert_eq!(before(Instant::now() + Duration::from_secs(60), async { 1 }).await, Some(1));
        assert_eq!(kept(), 1, "the attempt's timer is kept, still armed a minute out");
        assert_eq!(before(Instant::now() + Duration::from_secs(90), async { 2 }).await, Some(2));
        assert_eq!(kept(), 1, "and handed to the next attempt");
        // A route with a shorter per-try timeout: the kept timer must be armed anew, earlier.
        let late = before(Instant::now() + Duration::from_millis(20), std::future::pending::<()>());
        let outcome = tokio::time::timeout(Duration::from_secs(10), late).await;
        assert_eq!(outcome, Ok(None), "the earlier deadline ends the wait, not the kept one");
        assert_eq!(kept(), 1);
        // The kept timer has fallen due by now: handed on, it waits for its new deadline, not at all.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let slow_answer = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            3
        };
        assert_eq!(before(Instant::now() + Duration::from_secs(60), slow_answer).await, Some(3));
        assert_eq!(kept(), 1);
        stop_keeping_on_this_thread();
        assert_eq!(kept(), 0);
        assert_eq!(before(Instant::now() + Duration::from_secs(60), async { 4 }).await, Some(4));
        assert_eq!(kept(), 0, "nothing is kept once the worker stops keeping");
    }
}
