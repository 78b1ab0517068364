//! Waiting on the CPU, not asleep, for a replica that answers within microseconds.
//!
//! A worker that has written a request to a replica and has nothing else to run parks in `epoll_wait`, and
//! the answer wakes it up: a context switch out and one back in, and on a virtual machine an interrupt to a
//! halted vCPU. On the peer kit's machine that sleep and wake-up took longer than a replica on the same host
//! takes to answer (`docs/benchmarks.md`). So just before a worker parks (tokio's `on_thread_park`), when
//! exactly one exchange on it waits for its answer and that connection's replica has lately answered within
//! `WINDOW`, the worker polls that one socket for up to `WINDOW`, yielding its CPU between polls: whatever
//! is queued on this CPU (often the replica itself) runs first, so the wait never holds it up. When the
//! answer comes, tokio's `epoll_wait` returns at once; when it does not, the worker parks as before, having
//! spent at most `WINDOW` of CPU time nobody else wanted.
//!
//! Never with one CPU (the replica needs it), nor while two or more exchanges wait on the worker (the others'
//! answers would wait for the poll). What is not watched during a poll (a new request on another client
//! connection, an HTTP/2 replica's answer) waits at most `WINDOW`. Whether it pays on a machine shows in
//! `berth_gateway_busy_polls_total{outcome="answered"|"gave_up"}`.

use std::cell::{Cell, OnceCell};
use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// The longest a worker polls for one answer, and the answer time under which it does.
pub(crate) const WINDOW: Duration = Duration::from_micros(100);

thread_local! {
    /// Set on a thread that polls before it parks: a worker's, whose runtime runs `before_park` and never
    /// moves a task to another thread (a `Waiting` made elsewhere does nothing). Its gateway's counts.
    static POLLING: OnceCell<Arc<PollCounts>> = const { OnceCell::new() };
    /// Exchanges on this thread that wait for their answer head.
    static WAITING: Cell<u32> = const { Cell::new(0) };
    /// The socket of the one that may be polled for.
    static TARGET: Cell<Option<RawFd>> = const { Cell::new(None) };
}

/// Whether workers should poll at all: more than one CPU to run on.
pub(crate) fn worth_it() -> bool {
    std::thread::available_parallelism().is_ok_and(|cpus| cpus.get() >= 2)
}

/// Makes this thread one that polls, counting into `counts`: call it on a worker's thread, whose runtime has
/// `before_park` as its `on_thread_park` hook and is single-threaded.
pub(crate) fn enable_on_this_thread(counts: Arc<PollCounts>) {
    counts.enabled.store(true, Ordering::Relaxed);
    POLLING.with(|polling| {
        let _ = polling.set(counts);
    });
}

/// What one gateway's polls came to, for `berth_gateway_busy_polls_total`: whether waiting on the CPU pays
/// on this machine (mostly `answered`) or only costs (mostly `gave_up`).
#[derive(Debug, Default)]
pub(crate) struct PollCounts {
    /// A worker polls: only then is the family rendered.
    enabled: AtomicBool,
    answered: AtomicU64,
    gave_up: AtomicU64,
}

impl PollCounts {
    fn count(&self, answered: bool) {
        let counter = if answered { &self.answered } else { &self.gave_up };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the family (Prometheus text format), once a worker of this gateway polls.
    pub(crate) fn render(&self, out: &mut String) -> fmt::Result {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        const NAME: &str = "berth_gateway_busy_polls_total";
        crate::metrics::family(
            out,
            NAME,
            "counter",
            "Waits on the CPU for a replica's answer before a worker sleeps, by outcome: the answer came \
             within the window, or the worker gave up and slept.",
        )?;
        crate::metrics::sample(out, NAME, "", &[("outcome", "answered")], self.answered.load(Ordering::Relaxed))?;
        crate::metrics::sample(out, NAME, "", &[("outcome", "gave_up")], self.gave_up.load(Ordering::Relaxed))
    }
}

/// An exchange waiting for its answer head on `fd`, from the request written until the head is read or the
/// exchange is dropped. The descriptor must stay open while this lives (the exchange owns its stream).
pub(crate) struct Waiting {
    /// `None` on a thread that does not poll.
    fd: Option<RawFd>,
}

impl Waiting {
    /// `spin`: the worker may poll `fd` before it parks (its replica has lately answered fast).
    pub(crate) fn start(fd: BorrowedFd<'_>, spin: bool) -> Waiting {
        if POLLING.with(|polling| polling.get().is_none()) {
            return Waiting { fd: None };
        }
        let fd = fd.as_raw_fd();
        WAITING.set(WAITING.get() + 1);
        if spin {
            TARGET.set(Some(fd));
        }
        Waiting { fd: Some(fd) }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(fd) = self.fd else { return };
        WAITING.set(WAITING.get().saturating_sub(1));
        if TARGET.get() == Some(fd) {
            TARGET.set(None);
        }
    }
}

/// Runs just before this thread's runtime parks: polls for the lone awaited answer, if there is one to
/// poll for. True when that answer has come, and the worker has a request to finish rather than a wait.
pub(crate) fn before_park() -> bool {
    let Some(fd) = target() else { return false };
    // SAFETY: `TARGET` holds a descriptor only while the `Waiting` that put it there lives (on this thread:
    // its runtime moves no task elsewhere), and that one lives inside the exchange that owns the stream:
    // the descriptor is open and still that stream's.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let answered = poll_until_readable(fd, WINDOW);
    POLLING.with(|polling| {
        if let Some(counts) = polling.get() {
            counts.count(answered);
        }
    });
    answered
}

/// The socket to poll for: the lone waiting exchange's, when it may be.
fn target() -> Option<RawFd> {
    if WAITING.get() == 1 { TARGET.get() } else { None }
}

/// Polls `fd` (never blocking) until it is readable, closed or failed (true) or `window` has passed
/// (false), yielding the CPU between polls.
fn poll_until_readable(fd: BorrowedFd<'_>, window: Duration) -> bool {
    let started = Instant::now();
    let now = Timespec { tv_sec: 0, tv_nsec: 0 };
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        // An error is not worth polling on: let tokio find out.
        if poll(&mut fds, Some(&now)).map_or(true, |ready| ready > 0) {
            return true;
        }
        if started.elapsed() >= window {
            return false;
        }
        rustix::thread::sched_yield();
    }
}

/// How fast a connection's replica has answered lately (from the request written to its answer head): an
/// exponentially weighted average over the last few answers. A connection that has not answered yet
/// counts as fast, and finds out at the cost of one poll.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AnswerTime {
    average: Duration,
}

impl AnswerTime {
    pub(crate) fn is_fast(self) -> bool {
        self.average <= WINDOW
    }

    pub(crate) fn note(&mut self, took: Duration) {
        self.average = self.average - self.average / 4 + took / 4;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn a_readable_socket_ends_the_poll() {
        let (mut ours, theirs) = UnixStream::pair().expect("socket pair");
        ours.write_all(b"HTTP/1.1 200 OK\r\n").expect("write");
        assert!(poll_until_readable(theirs.as_fd(), Duration::from_secs(60)));
    }

    #[test]
    fn a_closed_peer_ends_the_poll() {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        drop(ours);
        assert!(poll_until_readable(theirs.as_fd(), Duration::from_secs(60)));
    }

    #[test]
    fn a_silent_socket_is_polled_for_the_window_only() {
        let (_ours, theirs) = UnixStream::pair().expect("socket pair");
        let started = Instant::now();
        assert!(!poll_until_readable(theirs.as_fd(), Duration::from_millis(2)));
        assert!(started.elapsed() >= Duration::from_millis(2));
    }

    #[test]
    fn only_a_lone_waiting_exchange_that_may_spin_is_polled_for() {
        let (a, _a) = UnixStream::pair().expect("socket pair");
        let (b, _b) = UnixStream::pair().expect("socket pair");
        let elsewhere = Waiting::start(a.as_fd(), true);
        assert_eq!((target(), WAITING.get()), (None, 0), "a thread that does not poll keeps no count");
        drop(elsewhere);

        enable_on_this_thread(Arc::default());

        let first = Waiting::start(a.as_fd(), true);
        assert_eq!(target(), Some(a.as_raw_fd()));
        let second = Waiting::start(b.as_fd(), false);
        assert_eq!(target(), None, "two exchanges wait: polling for one would hold up the other");
        drop(first);
        assert_eq!(target(), None, "the one left did not ask to be polled for");
        drop(second);

        let first = Waiting::start(a.as_fd(), true);
        let second = Waiting::start(b.as_fd(), true);
        drop(second);
        assert_eq!(target(), None, "the target went with the exchange that set it");
        drop(first);
        assert_eq!(WAITING.get(), 0);
    }

    #[test]
    fn each_poll_is_counted_by_outcome_and_rendered_once_enabled() {
        let counts = Arc::new(PollCounts::default());
        let mut out = String::new();
        counts.render(&mut out).expect("render");
        assert_eq!(out, "", "a gateway whose workers do not poll shows no such family");

        enable_on_this_thread(counts.clone());
        let (mut ours, theirs) = UnixStream::pair().expect("socket pair");
        let waiting = Waiting::start(theirs.as_fd(), true);
        before_park();
        ours.write_all(b"HTTP/1.1 200 OK\r\n").expect("write");
        before_park();
        drop(waiting);
        before_park();

        counts.render(&mut out).expect("render");
        assert!(out.contains("berth_gateway_busy_polls_total{outcome=\"answered\"} 1\n"), "{out}");
        assert!(out.contains("berth_gateway_busy_polls_total{outcome=\"gave_up\"} 1\n"), "{out}");
        crate::metrics::promtool_check(&out);
    }

    #[test]
    fn a_slow_answer_stops_the_polling_until_fast_ones_bring_the_average_back() {
        let mut answers = AnswerTime::default();
        assert!(answers.is_fast(), "a new connection is tried");
        answers.note(Duration::from_millis(5));
        assert!(!answers.is_fast());
        let mut fast_ones = 0;
        while !answers.is_fast() {
            answers.note(Duration::from_micros(20));
            fast_ones += 1;
        }
        assert!((5..=20).contains(&fast_ones), "{fast_ones} fast answers to forget one of 5 ms");
    }
}
