//! Calls in flight on one connection, by request id.
//!
//! Both ends of a plugd connection may have many requests in flight at once, answered in any
//! order (see `PROTOCOL.md`). [`Pending`] hands out fresh ids and routes each answer to the
//! caller waiting for it. A [`Call`] removes its own entry when it is dropped unanswered (the
//! caller timed out or went away), so an abandoned call never leaks its slot.

// Ids are ours, not the peer's: a fast hash without flood resistance is enough.
use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The calls one side of a connection is waiting on; `T` is what an answer carries.
#[derive(Debug)]
pub struct Pending<T> {
    waiting: Mutex<HashMap<u64, oneshot::Sender<T>>>,
    next_id: AtomicU64,
}

impl<T> Pending<T> {
    /// An empty map whose first call gets id `first_id` (the handshake used the ids before it).
    pub fn new(first_id: u64) -> Pending<T> {
        Pending {
            waiting: Mutex::new(HashMap::default()),
            next_id: AtomicU64::new(first_id),
        }
    }

    /// Registers a call under a fresh id.
    pub fn register(&self) -> Call<'_, T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.lock();
        waiting.insert(id, tx);
        let alone = waiting.len() == 1;
        drop(waiting);
        Call {
            owner: self,
            id,
            rx,
            settled: false,
            alone,
        }
    }

    /// A fresh id that no call registered here will get, for a request whose answer the
    /// caller routes itself (a stream's head).
    pub fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Delivers the answer to call `id`; false when nobody waits for it (it ended already, or
    /// the id was never handed out).
    pub fn answer(&self, id: u64, value: T) -> bool {
        match self.lock().remove(&id) {
            Some(tx) => tx.send(value).is_ok(),
            None => false,
        }
    }

    /// Delivers the answer to call `id` like [`Pending::answer`], but gives `value` back when
    /// no call was registered under `id`, so the caller can route it elsewhere.
    pub fn answer_or_return(&self, id: u64, value: T) -> Option<T> {
        match self.lock().remove(&id) {
            Some(tx) => {
                let _ = tx.send(value);
                None
            }
            None => Some(value),
        }
    }

    /// Takes every waiting call out of the map (the connection closed): the caller answers each
    /// with the reason, or drops them so their callers see the connection gone.
    pub fn drain(&self) -> Vec<oneshot::Sender<T>> {
        self.lock().drain().map(|(_, tx)| tx).collect()
    }

    /// How many calls wait for an answer.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no call waits for an answer.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<T>>> {
        // Only inserts and removals happen under this lock, so a poisoned map is still whole.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One registered call. Dropping it before its answer arrived removes its entry.
#[derive(Debug)]
pub struct Call<'a, T> {
    owner: &'a Pending<T>,
    id: u64,
    rx: oneshot::Receiver<T>,
    settled: bool,
    /// No other call was waiting when this one was registered.
    alone: bool,
}

impl<T> Call<'_, T> {
    /// The request id to send.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether no other call was waiting when this one was registered: the connection is
    /// idle, so nothing would share a write with this call's request.
    pub fn alone(&self) -> bool {
        self.alone
    }

    /// Waits for the answer; `None` when the entry was drained without one (the connection
    /// closed).
    pub async fn answer(&mut self) -> Option<T> {
        let answer = (&mut self.rx).await.ok();
        self.settled = true;
        answer
    }

    /// Gives the call up: removes its entry and says whether it was still waiting (so the
    /// other side may be told to stop working on it).
    pub fn abandon(mut self) -> bool {
        self.settled = true;
        self.owner.lock().remove(&self.id).is_some()
    }
}

impl<T> Drop for Call<'_, T> {
    fn drop(&mut self) {
        if !self.settled {
            self.owner.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_reach_their_caller_and_dropped_calls_leave_no_entry() {
        let pending = Pending::<&str>::new(1);
        let mut first = pending.register();
        let second = pending.register();
        assert_eq!((first.id(), second.id()), (1, 2));
        assert!(first.alone() && !second.alone(), "the second had company");
        assert_eq!(pending.len(), 2);
        assert!(pending.answer(1, "one"));
        assert_eq!(first.answer().await, Some("one"));
        drop(second);
        assert!(pending.is_empty(), "a dropped call removes its entry");
        assert!(!pending.answer(2, "late"), "a late answer finds nobody");
    }

    #[tokio::test]
    async fn abandon_says_whether_the_call_was_still_waiting() {
        let pending = Pending::<u8>::new(7);
        let call = pending.register();
        assert!(call.abandon());
        let mut call = pending.register();
        for tx in pending.drain() {
            drop(tx);
        }
        assert_eq!(call.answer().await, None, "drained: the connection closed");
        assert!(!call.abandon());
    }
}
