//! Spreading client connections evenly over the gateway's workers.
//!
//! Every worker accepts on the same listening sockets, and whichever wakes first takes the connection. A
//! burst of connections (a load balancer's pool, a benchmark's 64) can then land mostly on one worker,
//! which saturates its core while the other idles: measured here, one worker took all 64 connections in
//! one run out of five, and the gateway served 20% fewer requests. So each worker counts its live
//! connections, and one that holds more than the least busy worker (by more than one) hands a connection
//! it has just accepted to that worker instead of serving it. Handing over costs a channel message and a
//! new registration with the other worker's poller, once per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::sharded::Padded;

/// A connection accepted by one worker for another to serve.
pub(crate) struct Handoff {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    /// Accepted on the TLS listener.
    pub(crate) tls: bool,
}

pub(crate) struct Spread {
    /// Live connections per worker, each on a cache line of its own (a worker moves its own once per
    /// connection).
    live: Vec<Padded<AtomicUsize>>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Spread {
    /// The spread over `n` workers, and each worker's inbox of handed-over connections.
    pub(crate) fn new(n: usize) -> (Arc<Spread>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (inboxes, receivers) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        (Arc::new(Spread { live: (0..n).map(|_| Padded::default()).collect(), inboxes }), receivers)
    }

    /// The worker that should serve a connection `worker` has just accepted, when not `worker` itself.
    pub(crate) fn elsewhere(&self, worker: usize) -> Option<usize> {
        let mine = self.live.get(worker)?.0.load(Ordering::Relaxed);
        let (least, count) = self
            .live
            .iter()
            .enumerate()
            .map(|(idx, live)| (idx, live.0.load(Ordering::Relaxed)))
            .min_by_key(|(_, count)| *count)?;
        (count + 1 < mine).then_some(least)
    }

    /// Gives `handoff` to worker `to`; back when that worker is gone.
    pub(crate) fn hand_off(&self, to: usize, handoff: Handoff) -> Result<(), Handoff> {
        match self.inboxes.get(to) {
            Some(inbox) => inbox.send(handoff).map_err(|refused| refused.0),
            None => Err(handoff),
        }
    }

    /// Counts a connection served by `worker` until the guard drops.
    pub(crate) fn open(self: &Arc<Self>, worker: usize) -> Live {
        if let Some(live) = self.live.get(worker) {
            live.0.fetch_add(1, Ordering::Relaxed);
        }
        Live { spread: self.clone(), worker }
    }
}

/// One live connection of a worker.
pub(crate) struct Live {
    spread: Arc<Spread>,
    worker: usize,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(live) = self.spread.live.get(self.worker) {
            live.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_ahead_by_more_than_one_hands_over_to_the_least_busy() {
        let (spread, _inboxes) = Spread::new(3);
        let mut held = Vec::new();
        held.push(spread.open(0));
        assert_eq!(spread.elsewhere(0), None, "one ahead is even enough");
        held.push(spread.open(0));
        assert_eq!(spread.elsewhere(0), Some(1), "two ahead of the idle ones");
        held.push(spread.open(1));
        assert_eq!(spread.elsewhere(0), Some(2));
        held.push(spread.open(2));
        assert_eq!(spread.elsewhere(0), None);
        held.clear();
        assert_eq!(spread.elsewhere(0), None, "counts go back down as connections end");
    }
}
