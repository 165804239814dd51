//! The live feed behind `GET /admin/stream`: plugin state changes, audit entries and log lines,
//! published by whoever sees them and fanned out to every open stream.
//!
//! A `tokio::sync::broadcast` channel of [`FEED_CAPACITY`] events: publishing never waits, and
//! a stream that falls further behind than that loses the oldest events and is told how many
//! (a `lagged` event) instead of holding plugd back. Nothing is built or sent while no stream is
//! open, so the feed costs a counter read per state change or log line.

use plugd_api::{State, StreamEvent};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What the store said at one moment: the newest audit entry, and each plugin's state on every
/// other worker, by (worker, plugin). Changes after it are what the live stream publishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    /// The newest audit entry's id.
    pub audit: i64,
    /// Other workers' plugin states.
    pub states: HashMap<(String, String), State>,
}

/// Events kept for the slowest open stream; past this a stream is told what it missed.
pub const FEED_CAPACITY: usize = 1024;

/// The live feed of one worker.
#[derive(Debug)]
pub struct Feed {
    tx: broadcast::Sender<Arc<StreamEvent>>,
    worker: String,
    closed: CancellationToken,
    /// What the store said when the earliest stream not yet followed opened: changes after
    /// it are published (see [`Feed::start_from`]).
    start: Mutex<Option<Baseline>>,
}

impl Feed {
    /// A feed for the worker with id `worker`.
    pub fn new(worker: &str) -> Arc<Feed> {
        Arc::new(Feed {
            tx: broadcast::channel(FEED_CAPACITY).0,
            worker: worker.to_owned(),
            closed: CancellationToken::new(),
            start: Mutex::new(None),
        })
    }

    /// Publishes the event `make` builds, if any stream is open.
    pub fn publish(&self, make: impl FnOnce() -> StreamEvent) {
        if self.watching() {
            let _ = self.tx.send(Arc::new(make()));
        }
    }

    /// Whether any stream is open.
    pub fn watching(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StreamEvent>> {
        self.tx.subscribe()
    }

    /// Notes what the store said when a stream opened, so every change after it reaches the
    /// stream even if the follower of the store starts later. The earliest noted wins.
    pub fn start_from(&self, baseline: Baseline) {
        let mut start = self.start.lock().unwrap_or_else(|e| e.into_inner());
        match start.as_mut() {
            Some(earlier) => earlier.audit = earlier.audit.min(baseline.audit),
            None => *start = Some(baseline),
        }
    }

    /// Where the follower of the store starts: the earliest [`Feed::start_from`] noted.
    pub fn take_start(&self) -> Option<Baseline> {
        self.start.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The id of the worker this feed belongs to.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Ends every open stream (at shutdown, so no stream holds the HTTP server open).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Resolves once [`Feed::close`] is called; owns what it needs, so a stream can keep it.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.closed.clone().cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_is_built_without_a_stream_and_a_slow_stream_learns_what_it_missed() {
        let feed = Feed::new("w");
        let mut built = false;
        feed.publish(|| {
            built = true;
            StreamEvent::Lagged { missed: 0 }
        });
        assert!(!built, "no stream open, nothing built");
        let mut rx = feed.subscribe();
        for i in 0..FEED_CAPACITY as u64 + 10 {
            feed.publish(|| StreamEvent::Lagged { missed: i });
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 10),
            other => panic!("expected a lag of 10, got {other:?}"),
        }
        let next = rx.recv().await.expect("the newest events are kept");
        assert_eq!(*next, StreamEvent::Lagged { missed: 10 });
    }
}
