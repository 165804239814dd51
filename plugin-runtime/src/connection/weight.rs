//! Which handlers the reader polls itself, and which get a task.
//!
//! Most handlers answer on their first poll: they compute a reply without waiting. Polling such
//! a handler right in the reader answers it with no task, and on a multi-threaded runtime with
//! no wake-up of another worker thread to run that task (a wake-up costs more than most
//! handlers). A handler that waits goes on in the reader's own set of handlers (see
//! [`super::local`]), where the answer it waits for, read by the reader, wakes it on the same
//! thread.
//!
//! A handler that computes for long in one of those polls holds the reader up meanwhile. On a
//! single-threaded runtime that costs nothing more (a task would hold the same thread), but a
//! multi-threaded runtime could run it beside the reader. So there each handler has a
//! [`Weight`]: a request whose polls in the reader took longer than [`HEAVY_POLL`] once counts
//! against it, a light one clears the count, and after [`HEAVY_STREAK`] heavy requests in a row
//! the handler runs as a task from the start, on whichever thread is free, for the rest of the
//! connection. The streak (not a single slow poll) is what counts, because on a loaded machine
//! the reader's thread can be descheduled in the middle of a light handler's poll. A handler
//! that still waits after a heavy poll moves to a task at once, though: moving one request
//! costs little, even when the stall was the machine's.

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

/// How one handler's recent requests went in the reader (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Weight {
    /// Heavy requests in a row. Only the connection's reader changes it.
    streak: AtomicU8,
}

/// Where a handler that did not finish on its first poll goes on running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    /// In the reader's own set (see [`super::local`]).
    Reader,
    /// In a task of its own, beside the reader.
    Task,
}

impl Weight {
    /// Polls `future` (a handler's) once here, unless on `Many` threads it has proved heavy;
    /// its output when that poll finished it, otherwise where it goes on running.
    pub(crate) fn first_poll<F: Future + Unpin>(
        &self,
        threads: Threads,
        future: &mut F,
    ) -> Result<F::Output, Then> {
        match threads {
            Threads::One => match poll_once(future) {
                Poll::Ready(output) => Ok(output),
                Poll::Pending => Err(Then::Reader),
            },
            Threads::Many => {
                if self.heavy() {
                    return Err(Then::Task);
                }
                let start = Instant::now();
                let poll = poll_once(future);
                let heavy = start.elapsed() > HEAVY_POLL;
                match poll {
                    Poll::Ready(output) => {
                        self.record(heavy);
                        Ok(output)
                    }
                    Poll::Pending if heavy => {
                        self.record(true);
                        Err(Then::Task)
                    }
                    // Counted when the reader is done with it.
                    Poll::Pending => Err(Then::Reader),
                }
            }
        }
    }

    /// Counts one request the reader polled: `heavy` when one of its polls took longer than
    /// [`HEAVY_POLL`].
    pub(crate) fn record(&self, heavy: bool) {
        let streak = self.streak.load(Ordering::Relaxed);
        if heavy {
            self.streak.store(
                streak.saturating_add(1).min(HEAVY_STREAK),
                Ordering::Relaxed,
            );
        } else if streak != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    /// Heavy requests in a row.
    #[cfg(test)]
    pub(crate) fn streak(&self) -> u8 {
        self.streak.load(Ordering::Relaxed)
    }

    /// Whether the handler runs as a task from the start now.
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
        for _ in 1..HEAVY_STREAK {
            weight.record(true);
        }
        assert!(!weight.heavy());
        // One light request clears the streak: a stall on a loaded machine is forgotten.
        weight.record(false);
        for _ in 1..HEAVY_STREAK {
            weight.record(true);
        }
        assert!(!weight.heavy());
        weight.record(true);
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
            assert_eq!(weight.first_poll(Threads::Many, &mut computing()), Ok(7));
        }
        assert!(weight.heavy());
        // Not polled at all now: the caller gives it a task.
        let mut untouched = computing();
        assert_eq!(
            weight.first_poll(Threads::Many, &mut untouched),
            Err(Then::Task)
        );
        // On one thread the reader polls it anyway: a task would take the same thread.
        assert_eq!(weight.first_poll(Threads::One, &mut untouched), Ok(7));
        assert_eq!(weight.first_poll(Threads::One, &mut ready(3)), Ok(3));
    }

    #[test]
    fn a_handler_that_waits_goes_on_in_the_reader_unless_its_first_poll_was_heavy() {
        let weight = Weight::default();
        assert_eq!(
            weight.first_poll(Threads::Many, &mut pending::<()>()),
            Err(Then::Reader)
        );
        assert_eq!(
            weight.first_poll(Threads::One, &mut pending::<()>()),
            Err(Then::Reader)
        );
        assert!(!weight.heavy());
        let mut heavy_then_waits = Box::pin(async {
            computing().await;
            pending::<()>().await
        });
        assert_eq!(
            weight.first_poll(Threads::Many, &mut heavy_then_waits),
            Err(Then::Task)
        );
        assert_eq!(weight.streak(), 1);
    }
}
