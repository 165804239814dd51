//! Which handlers the reader polls itself before it gives them a task.
//!
//! Most handlers answer on their first poll: they compute a reply without waiting. Polling such
//! a handler right in the reader answers it with no task, and on a multi-threaded runtime with
//! no wake-up of another worker thread to run that task (a wake-up costs more than most
//! handlers). A handler that waits becomes a task from where its first poll left it.
//!
//! A handler that computes for long on its first poll would hold the reader up meanwhile. On a
//! single-threaded runtime that costs nothing more (a task would hold the same thread), but a
//! multi-threaded runtime could run it beside the reader. So there each handler has a
//! [`Weight`]: a first poll longer than [`HEAVY_POLL`] counts against it, a shorter one clears
//! the count, and after [`HEAVY_STREAK`] heavy first polls in a row the handler runs as a task
//! from the start, on whichever thread is free, for the rest of the connection. The streak (not
//! a single slow poll) is what counts, because on a loaded machine the reader's thread can be
//! descheduled in the middle of a light handler's poll.

use crate::answer::poll_once;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

/// A handler's first poll longer than this counts as heavy.
pub(crate) const HEAVY_POLL: Duration = Duration::from_millis(1);

/// Heavy first polls in a row after which a handler on a multi-threaded runtime always runs as
/// a task.
pub(crate) const HEAVY_STREAK: u8 = 4;

/// The runtime the connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// tokio's current-thread runtime: the reader always polls first.
    One,
    /// A multi-threaded runtime: the reader polls first until a handler proves heavy.
    Many,
}

impl Threads {
    /// The runtime of the calling task.
    pub(crate) fn current() -> Threads {
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => Threads::One,
            _ => Threads::Many,
        }
    }
}

/// How one handler's recent first polls went (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Weight {
    /// Heavy first polls in a row. Only the connection's reader changes it.
    streak: AtomicU8,
}

impl Weight {
    /// Polls `future` (a handler's) once here, unless on `Many` threads it has proved heavy;
    /// its output when that poll finished it. Otherwise the caller runs it as a task.
    pub(crate) fn first_poll<F: Future + Unpin>(
        &self,
        threads: Threads,
        future: &mut F,
    ) -> Option<F::Output> {
        let poll = match threads {
            Threads::One => poll_once(future),
            Threads::Many => {
                let streak = self.streak.load(Ordering::Relaxed);
                if streak >= HEAVY_STREAK {
                    return None;
                }
                let start = Instant::now();
                let poll = poll_once(future);
                self.record(streak, start.elapsed());
                poll
            }
        };
        match poll {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        }
    }

    /// Counts a first poll that took `took` after `streak` heavy ones in a row.
    fn record(&self, streak: u8, took: Duration) {
        if took > HEAVY_POLL {
            self.streak.store(streak + 1, Ordering::Relaxed);
        } else if streak != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the handler runs as a task from the start now.
    #[cfg(test)]
    fn heavy(&self) -> bool {
        self.streak.load(Ordering::Relaxed) >= HEAVY_STREAK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{pending, ready};

    #[test]
    fn only_heavy_polls_in_a_row_make_a_handler_heavy() {
        let weight = Weight::default();
        let heavy = HEAVY_POLL * 2;
        let light = HEAVY_POLL / 10;
        for _ in 1..HEAVY_STREAK {
            weight.record(weight.streak.load(Ordering::Relaxed), heavy);
        }
        assert!(!weight.heavy());
        // One light poll clears the streak: a stall on a loaded machine is forgotten.
        weight.record(weight.streak.load(Ordering::Relaxed), light);
        for _ in 1..HEAVY_STREAK {
            weight.record(weight.streak.load(Ordering::Relaxed), heavy);
        }
        assert!(!weight.heavy());
        weight.record(weight.streak.load(Ordering::Relaxed), heavy);
        assert!(weight.heavy());
    }

    /// A handler whose first poll computes for longer than [`HEAVY_POLL`].
    fn computing() -> impl Future<Output = u32> + Unpin {
        Box::pin(async {
            let start = Instant::now();
            while start.elapsed() <= HEAVY_POLL {
                std::hint::spin_loop();
            }
            7
        })
    }

    #[test]
    fn a_proved_heavy_handler_is_left_to_a_task_on_many_threads_only() {
        let weight = Weight::default();
        for _ in 0..HEAVY_STREAK {
            assert_eq!(weight.first_poll(Threads::Many, &mut computing()), Some(7));
        }
        assert!(weight.heavy());
        // Not polled at all now: the caller gives it a task.
        let mut untouched = computing();
        assert_eq!(weight.first_poll(Threads::Many, &mut untouched), None);
        // On one thread the reader polls it anyway: a task would take the same thread.
        assert_eq!(weight.first_poll(Threads::One, &mut untouched), Some(7));
        assert_eq!(weight.first_poll(Threads::One, &mut ready(3)), Some(3));
    }

    #[test]
    fn a_handler_that_waits_is_left_to_a_task_after_its_first_poll() {
        let weight = Weight::default();
        assert_eq!(weight.first_poll(Threads::Many, &mut pending::<()>()), None);
        assert_eq!(weight.first_poll(Threads::One, &mut pending::<()>()), None);
        assert!(!weight.heavy());
    }
}
