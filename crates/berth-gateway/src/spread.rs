//! Spreading client connections evenly over the gateway's workers.
//!
//! Every worker accepts on the same listening sockets, and whichever wakes first takes the connection. A
//! burst of connections (a load balancer's pool, a benchmark's 64) can then land mostly on one worker,
//! which saturates its core while the other idles: measured here, one worker took all 64 connections in
//! one run out of five, and the gateway served 20% fewer requests. So each worker counts its live
//! connections, and one that holds more than the least busy worker (by more than one) hands a connection
//! it has just accepted to that worker instead of serving it. Handing over costs a channel message and a
//! new registration with the other worker's poller, once per connection.
//!
//! The same rule moves a plain HTTP/1.1 connection between two of its requests (`serve_h1`), so that the
//! workers stay even when connections outlive the spread they were accepted into; and only the workers that
//! serve (`standby.rs`) take connections: one standing by hands over every connection it accepts and each
//! plain one it holds at its next request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::sharded::Padded;
use crate::standby::Serving;

/// A connection accepted by one worker for another to serve.
pub(crate) struct Handoff {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) peer: SocketAddr,
    /// Accepted on the TLS listener.
    pub(crate) tls: bool,
    /// What was read of a moved connection and not served yet (a pipelined request).
    pub(crate) read: Bytes,
}

pub(crate) struct Spread {
    /// Live connections per worker, each on a cache line of its own (a worker moves its own once per
    /// connection).
    live: Vec<Padded<AtomicUsize>>,
    inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
    /// How many workers take connections (the first ones).
    serving: Arc<Serving>,
}

impl Spread {
    /// The spread over `n` workers, all serving, and each worker's inbox of handed-over connections.
    pub(crate) fn new(n: usize, serving: Arc<Serving>) -> (Arc<Spread>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        serving.start(n);
        let (inboxes, receivers) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        (Arc::new(Spread { live: (0..n).map(|_| Padded::default()).collect(), inboxes, serving }), receivers)
    }

    /// The worker that should serve a connection `worker` has just accepted, or one it holds between two
    /// requests, when not `worker` itself: the least busy serving worker, when `worker` stands by or holds
    /// more than one connection more.
    pub(crate) fn elsewhere(&self, worker: usize) -> Option<usize> {
        let mine = self.live.get(worker)?.0.load(Ordering::Relaxed);
        let serving = self.serving.count().min(self.live.len());
        let (least, count) = self.live[..serving]
            .iter()
            .enumerate()
            .map(|(idx, live)| (idx, live.0.load(Ordering::Relaxed)))
            .min_by_key(|(_, count)| *count)?;
        (worker >= serving || count + 1 < mine).then_some(least)
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
        let (spread, _inboxes) = Spread::new(3, Arc::default());
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

    #[test]
    fn only_serving_workers_take_connections_and_one_standing_by_hands_over_all() {
        let serving = Arc::new(Serving::default());
        let (spread, _inboxes) = Spread::new(2, serving.clone());
        let mut on_0 = vec![spread.open(0), spread.open(0)];
        let mut on_1 = vec![spread.open(1), spread.open(1)];
        assert_eq!(spread.elsewhere(1), None, "even");
        serving.set(1);
        assert_eq!(spread.elsewhere(1), Some(0), "standing by: every connection goes to worker 0");
        on_1.clear();
        on_0.extend([spread.open(0), spread.open(0)]);
        assert_eq!(spread.elsewhere(0), None, "worker 0 is the only one serving, however many it holds");
        serving.set(2);
        assert_eq!(spread.elsewhere(0), Some(1), "back: worker 0 is four ahead");
        on_0.truncate(2);
        on_1.extend([spread.open(1), spread.open(1)]);
        assert_eq!(spread.elsewhere(0), None, "even again after two moves");
    }
}
