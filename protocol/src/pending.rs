//! Calls in flight on one connection, by request id.
//!
//! Both ends of a plugd connection may have many requests in flight at once, answered in any
//! order (see `PROTOCOL.md`). [`Pending`] hands out fresh ids and routes each answer to the
//! caller waiting for it. A [`Call`] removes its own entry when it is dropped unanswered (the
//! caller timed out or went away), so an abandoned call never leaks its slot.
//!
//! A call may carry a deadline ([`Pending::register_until`]). No timer is armed per call: one
//! task per map waits in [`Pending::expired`] for the earliest deadline and hands back the
//! calls past theirs. Calls with the same timeout register in deadline order, so under steady
//! traffic that task wakes about once per timeout, not once per call.

// Ids are ours, not the peer's: a fast hash without flood resistance is enough.
use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// The calls one side of a connection is waiting on; `T` is what an answer carries.
#[derive(Debug)]
pub struct Pending<T> {
    waiting: Mutex<Waiting<T>>,
    next_id: AtomicU64,
    /// Wakes the task in [`Pending::expired`] when a call's deadline comes before the time it
    /// sleeps until.
    sweep: Notify,
}

#[derive(Debug)]
struct Waiting<T> {
    calls: HashMap<u64, Entry<T>>,
    /// When the task in [`Pending::expired`] looks next; `None` while it waits for a deadline
    /// to be registered. Read and written under the lock with `calls`, so a registration
    /// either is seen by that task's scan or sees the time it set.
    sweep_at: Option<Instant>,
}

#[derive(Debug)]
struct Entry<T> {
    tx: oneshot::Sender<T>,
    deadline: Option<Instant>,
}

impl<T> Pending<T> {
    /// An empty map whose first call gets id `first_id` (the handshake used the ids before it).
    pub fn new(first_id: u64) -> Pending<T> {
        Pending {
            waiting: Mutex::new(Waiting {
                calls: HashMap::default(),
                sweep_at: None,
            }),
            next_id: AtomicU64::new(first_id),
            sweep: Notify::new(),
        }
    }

    /// Registers a call under a fresh id.
    pub fn register(&self) -> Call<'_, T> {
        self.insert(None)
    }

    /// Registers a call under a fresh id that [`Pending::expired`] hands back once `deadline`
    /// passed without an answer.
    pub fn register_until(&self, deadline: Instant) -> Call<'_, T> {
        self.insert(Some(deadline))
    }

    fn insert(&self, deadline: Option<Instant>) -> Call<'_, T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.lock();
        waiting.calls.insert(id, Entry { tx, deadline });
        let alone = waiting.calls.len() == 1;
        let wake = deadline.filter(|d| waiting.sweep_at.is_none_or(|at| *d < at));
        if wake.is_some() {
            waiting.sweep_at = wake;
        }
        drop(waiting);
        // Woken after the lock is released; a wake before the task waits is kept for it.
        if wake.is_some() {
            self.sweep.notify_one();
        }
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
        match self.lock().calls.remove(&id) {
            Some(entry) => entry.tx.send(value).is_ok(),
            None => false,
        }
    }

    /// Delivers the answer to call `id` like [`Pending::answer`], but gives `value` back when
    /// no call was registered under `id`, so the caller can route it elsewhere.
    pub fn answer_or_return(&self, id: u64, value: T) -> Option<T> {
        match self.lock().calls.remove(&id) {
            Some(entry) => {
                let _ = entry.tx.send(value);
                None
            }
            None => Some(value),
        }
    }

    /// Takes every waiting call out of the map (the connection closed): the caller answers each
    /// with the reason, or drops them so their callers see the connection gone.
    pub fn drain(&self) -> Vec<oneshot::Sender<T>> {
        self.lock().calls.drain().map(|(_, e)| e.tx).collect()
    }

    /// Waits until some calls' deadlines passed, then takes them out of the map and returns
    /// them with their ids: the caller answers each (they timed out) and may tell the other
    /// side. One task per map runs this in a loop; it sleeps until the earliest deadline, and a
    /// call registered with an earlier one wakes it.
    pub async fn expired(&self) -> Vec<(u64, oneshot::Sender<T>)> {
        loop {
            let wake = {
                let mut waiting = self.lock();
                let now = Instant::now();
                let due: Vec<(u64, oneshot::Sender<T>)> = waiting
                    .calls
                    .extract_if(|_, e| e.deadline.is_some_and(|d| d <= now))
                    .map(|(id, e)| (id, e.tx))
                    .collect();
                if !due.is_empty() {
                    // The caller comes straight back: registrations meanwhile need not wake it.
                    waiting.sweep_at = Some(now);
                    return due;
                }
                let next = waiting.calls.values().filter_map(|e| e.deadline).min();
                waiting.sweep_at = next;
                next
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.sweep.notified() => {}
                    }
                }
                None => self.sweep.notified().await,
            }
        }
    }

    /// How many calls wait for an answer.
    pub fn len(&self) -> usize {
        self.lock().calls.len()
    }

    /// Whether no call waits for an answer.
    pub fn is_empty(&self) -> bool {
        self.lock().calls.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, Waiting<T>> {
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
        self.owner.lock().calls.remove(&self.id).is_some()
    }
}

impl<T> Drop for Call<'_, T> {
    fn drop(&mut self) {
        if !self.settled {
            self.owner.lock().calls.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    #[tokio::test(start_paused = true)]
    async fn calls_past_their_deadline_are_handed_back_at_it() {
        let pending = Pending::<&str>::new(1);
        let start = Instant::now();
        let mut late = pending.register_until(start + Duration::from_secs(30));
        let _forever = pending.register();
        let mut sweep = std::pin::pin!(pending.expired());
        assert!(futures_util::poll!(sweep.as_mut()).is_pending());
        // Registered while the sweep sleeps until the later deadline: it wakes the sweep.
        let mut soon = pending.register_until(start + Duration::from_secs(5));
        let expired = sweep.await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        let ids: Vec<u64> = expired.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [soon.id()]);
        for (_, tx) in expired {
            let _ = tx.send("timed out");
        }
        assert_eq!(soon.answer().await, Some("timed out"));
        assert_eq!(pending.len(), 2);

        // Answered in time: nothing is left to expire, and a call without a deadline never is.
        assert!(pending.answer(late.id(), "on time"));
        assert_eq!(late.answer().await, Some("on time"));
        let nothing = tokio::time::timeout(Duration::from_secs(600), pending.expired()).await;
        assert!(nothing.is_err(), "a call without a deadline expired");
        assert_eq!(pending.len(), 1);
    }
}
