//! hyper's header-read timer, without a runtime timer per request.
//!
//! hyper arms its header-read timeout at the start of every request head, which on a
//! kept-alive connection is also the idle time before the next request, and drops it once the
//! head arrived. With tokio's timer that is an insertion into and a removal from the timer
//! wheel, and a boxed timer entry, per request. Here each connection has one slot holding the
//! deadline of the head it waits for and its task's waker; one task per server looks over the
//! slots every tick and wakes the connections whose deadline passed. A connection's wait for a
//! head ends at most one tick after its deadline and never before it: a head's wait is ready
//! only once the clock the sweeping task publishes (which lags the real one) reached it.
//!
//! hyper's HTTP/1 server has one such wait at a time per connection (the header read); a
//! second wait at once would share the slot, and the later deadline would wake both.
//!
//! Memory: one slot (about 64 bytes) per open connection, which the server's connection cap
//! bounds; the sweep drops the slots of closed connections.

use futures_util::task::AtomicWaker;
use hyper::rt::{Sleep, Timer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// No deadline: the slot's connection is not waiting for a head.
const DISARMED: u64 = u64::MAX;

/// The header-read timers of one server's connections.
#[derive(Debug, Clone)]
pub struct HeadTimers {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Milliseconds below are counted from here.
    base: Instant,
    /// The time the sweep last saw, in milliseconds since `base`: never ahead of the clock.
    now_ms: AtomicU64,
    slots: Mutex<Vec<Weak<Slot>>>,
}

#[derive(Debug)]
struct Slot {
    /// The deadline of the head being waited for, in milliseconds since `base` (rounded up),
    /// or [`DISARMED`].
    deadline_ms: AtomicU64,
    waker: AtomicWaker,
}

impl Default for HeadTimers {
    fn default() -> Self {
        HeadTimers::new()
    }
}

impl HeadTimers {
    /// Timers with no connection yet.
    pub fn new() -> HeadTimers {
        HeadTimers {
            shared: Arc::new(Shared {
                base: Instant::now(),
                now_ms: AtomicU64::new(0),
                slots: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The timer for one new connection, to give hyper's connection builder.
    pub fn connection(&self) -> ConnectionTimer {
        let slot = Arc::new(Slot {
            deadline_ms: AtomicU64::new(DISARMED),
            waker: AtomicWaker::new(),
        });
        self.shared.lock().push(Arc::downgrade(&slot));
        ConnectionTimer {
            shared: self.shared.clone(),
            slot,
        }
    }

    /// The tick for a given header-read timeout: a sixteenth of it, between 10 ms and 1 s.
    pub fn tick_for(timeout: Duration) -> Duration {
        (timeout / 16).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Wakes the connections whose deadline passed, every `tick`, forever: run it in a task
    /// and abort it when the server is done.
    pub async fn sweep(self, tick: Duration) {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sweep_once();
        }
    }

    fn sweep_once(&self) {
        let now = self.shared.base.elapsed().as_millis();
        let now = u64::try_from(now).unwrap_or(DISARMED - 1);
        self.shared.now_ms.store(now, Ordering::Release);
        self.shared.lock().retain(|slot| match slot.upgrade() {
            Some(slot) => {
                if slot.deadline_ms.load(Ordering::Acquire) <= now {
                    slot.waker.wake();
                }
                true
            }
            None => false,
        });
    }

    /// How many connections have a slot (the closed ones until the next sweep).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.shared.lock().len()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Slot>>> {
        // A push or a retain leaves the list whole even if it panicked.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `at` in milliseconds since `base`, rounded up.
    fn ms_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base);
        let ms = since.as_millis() + u128::from(!since.subsec_nanos().is_multiple_of(1_000_000));
        u64::try_from(ms).unwrap_or(DISARMED - 1)
    }
}

/// One connection's header-read timer (see the module's documentation).
#[derive(Debug, Clone)]
pub struct ConnectionTimer {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let deadline_ms = self.shared.ms_at(deadline);
        self.slot.deadline_ms.store(deadline_ms, Ordering::Release);
        Box::pin(HeadWait {
            shared: self.shared.clone(),
            slot: self.slot.clone(),
            deadline_ms,
        })
    }
}

/// A wait for one request head; ready once its deadline passed.
struct HeadWait {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    deadline_ms: u64,
}

impl HeadWait {
    fn passed(&self) -> bool {
        self.shared.now_ms.load(Ordering::Acquire) >= self.deadline_ms
    }
}

impl Future for HeadWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.passed() {
            return Poll::Ready(());
        }
        self.slot.waker.register(cx.waker());
        // A sweep between the check and the registration woke no one: look again.
        if self.passed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Sleep for HeadWait {}

impl Drop for HeadWait {
    fn drop(&mut self) {
        // Disarm the slot unless a newer wait of the same connection armed it already.
        let _ = self.slot.deadline_ms.compare_exchange(
            self.deadline_ms,
            DISARMED,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(wait: &mut Pin<Box<dyn Sleep>>) -> bool {
        let waker = futures_util::task::noop_waker();
        wait.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
    }

    #[test]
    fn a_wait_ends_at_a_sweep_past_its_deadline_never_before() {
        let timers = HeadTimers::new();
        let timer = timers.connection();
        let mut far = timer.sleep(Duration::from_secs(60));
        timers.sweep_once();
        assert!(!ready(&mut far), "swept before the deadline");
        drop(far);

        let deadline = Instant::now() + Duration::from_millis(20);
        let mut wait = timer.sleep_until(deadline);
        while !ready(&mut wait) {
            assert!(deadline.elapsed() < Duration::from_secs(10), "never ready");
            timers.sweep_once();
            std::thread::yield_now();
        }
        assert!(Instant::now() >= deadline, "ready before its deadline");
    }

    #[test]
    fn a_newer_wait_stays_armed_when_the_older_one_is_dropped() {
        let timers = HeadTimers::new();
        let timer = timers.connection();
        let older = timer.sleep(Duration::from_secs(60));
        let newer = timer.sleep(Duration::from_secs(120));
        drop(older);
        assert_ne!(timer.slot.deadline_ms.load(Ordering::Acquire), DISARMED);
        drop(newer);
        assert_eq!(timer.slot.deadline_ms.load(Ordering::Acquire), DISARMED);
    }

    #[tokio::test]
    async fn the_sweep_wakes_a_waiting_connection_and_forgets_closed_ones() {
        let timers = HeadTimers::new();
        let sweeping = tokio::spawn(timers.clone().sweep(Duration::from_millis(10)));
        let timer = timers.connection();
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(10),
            timer.sleep(Duration::from_millis(50)),
        )
        .await
        .expect("the sweep woke the wait");
        assert!(started.elapsed() >= Duration::from_millis(50));

        let gone = timers.connection();
        drop(gone);
        assert_eq!(timers.slots(), 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while timers.slots() != 1 {
            assert!(
                Instant::now() < deadline,
                "the closed connection's slot stayed"
            );
            tokio::task::yield_now().await;
        }
        sweeping.abort();
    }
}
