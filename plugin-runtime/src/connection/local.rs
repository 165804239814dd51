//! The handlers that wait, run by the reader itself between frames.
//!
//! A handler that did not finish on its first poll waits for something: most often an answer
//! from the supervisor (a service it called, a key-value read), which the reader is the one to
//! read. As a task of its own, it would be spawned, and woken again when the reader reads its
//! answer; on a multi-threaded runtime each of those wakes another worker thread, and that
//! costs more than most handlers. So the reader keeps such handlers in a set of its own
//! ([`Local`]) and polls the ones that were woken before it reads on: the answer wakes its
//! handler on the reader's thread, and the handler's own answer leaves in the same write as the
//! answers around it.
//!
//! A handler woken while the reader runs (the usual case: the reader read its answer) only
//! marks the set, which the reader polls again before it goes back to its socket; should the
//! reader stop somewhere else first (waiting for room in the outbox), [`Running`] wakes it once
//! so that it comes back. One woken from anywhere else (a timer, another task) wakes the reader.
//!
//! A handler that blocks its thread (a synchronous wait) holds the reader up as long as it does,
//! in whichever poll: only a poll that returns can be timed.
//!
//! On a multi-threaded runtime a poll that takes longer than [`HEAVY_POLL`] moves a handler
//! that still waits to a task of its own, and every such request counts against the handler's
//! [`Weight`] (see [`super::weight`]).

use super::weight::{Weight, HEAVY_POLL};
use futures_util::stream::FuturesUnordered;
use futures_util::task::{waker_ref, ArcWake, AtomicWaker};
use futures_util::StreamExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// A handler's run, from where its first poll left it to its answer.
pub(crate) type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The reader's set of waiting handlers.
pub(crate) struct Local {
    set: FuturesUnordered<Weighed>,
    signal: Arc<Signal>,
}

/// How the handlers in the set tell the reader that they were woken.
#[derive(Default)]
struct Signal {
    /// The reader is being polled: it polls the set again before it goes back to its socket.
    running: AtomicBool,
    /// A handler was woken since the reader last polled the set.
    woken: AtomicBool,
    /// The reader's task.
    reader: AtomicWaker,
}

impl ArcWake for Signal {
    fn wake_by_ref(signal: &Arc<Self>) {
        // Paired with `Running::poll`: one of the two sees the other's store.
        signal.woken.store(true, Ordering::SeqCst);
        if !signal.running.load(Ordering::SeqCst) {
            signal.reader.wake();
        }
    }
}

impl Local {
    pub(crate) fn new() -> Local {
        Local {
            set: FuturesUnordered::new(),
            signal: Arc::default(),
        }
    }

    /// Handlers in the set.
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    /// Adds a handler's run; `weight` (on a multi-threaded runtime only) is the handler's, which
    /// its polls here count against.
    pub(crate) fn push(&mut self, work: Work, weight: Option<Arc<Weight>>) {
        self.set.push(Weighed {
            work: Some(work),
            weight,
        });
    }

    /// Polls the handlers that were woken, for as long as they are; finishes once the set is
    /// empty. The reader polls it beside its socket.
    pub(crate) async fn run(&mut self) {
        std::future::poll_fn(|cx| self.poll_woken(cx)).await
    }

    /// Polls the handlers that were woken, and returns.
    pub(crate) async fn run_woken(&mut self) {
        if self.set.is_empty() {
            return;
        }
        std::future::poll_fn(|cx| {
            let _ = self.poll_woken(cx);
            Poll::Ready(())
        })
        .await
    }

    fn poll_woken(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.signal.reader.register(cx.waker());
        self.signal.woken.store(false, Ordering::SeqCst);
        let waker = waker_ref(&self.signal);
        let mut cx = Context::from_waker(&waker);
        loop {
            match self.set.poll_next_unpin(&mut cx) {
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// What runs the reader's loop so that a handler woken while it runs is polled: the loop
    /// borrows the set, so this is taken first.
    pub(crate) fn runner(&self) -> Runner {
        Runner(self.signal.clone())
    }
}

/// See [`Local::runner`].
pub(crate) struct Runner(Arc<Signal>);

impl Runner {
    /// Runs the reader's loop `reader`.
    pub(crate) fn run<F: Future + Unpin>(self, reader: F) -> Running<F> {
        Running {
            reader,
            signal: self.0,
        }
    }
}

/// See [`Local::runner`].
pub(crate) struct Running<F> {
    reader: F,
    signal: Arc<Signal>,
}

impl<F: Future + Unpin> Future for Running<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.signal.running.store(true, Ordering::SeqCst);
        let poll = Pin::new(&mut self.reader).poll(cx);
        self.signal.running.store(false, Ordering::SeqCst);
        // A handler woken after the reader last polled the set (say, while the reader waits
        // for room in the outbox): the reader must come back for it. Once, not in a loop: the
        // handler stays marked in the set until the reader polls it.
        if poll.is_pending() && self.signal.woken.swap(false, Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
        poll
    }
}

/// A handler's run in the set, timed on a multi-threaded runtime.
struct Weighed {
    /// `None` once it moved to a task.
    work: Option<Work>,
    weight: Option<Arc<Weight>>,
}

impl Future for Weighed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let start = self.weight.as_ref().map(|_| Instant::now());
        let Some(work) = self.work.as_mut() else {
            return Poll::Ready(());
        };
        // A panic here ends this run, not the reader: a task's would end the task only.
        let poll = match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                let what = crate::answer::panic_message(&panic);
                tracing::error!("a request's run panicked outside its handler: {what}");
                return Poll::Ready(());
            }
        };
        let (Some(start), Some(weight)) = (start, self.weight.as_ref()) else {
            return poll;
        };
        let heavy = start.elapsed() > HEAVY_POLL;
        match poll {
            // (A cancelled run ends here too, and counts as light.)
            Poll::Ready(()) => {
                weight.record(heavy);
                Poll::Ready(())
            }
            Poll::Pending if heavy => {
                weight.record(true);
                if let Some(work) = self.work.take() {
                    tokio::spawn(work);
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// A run that counts its end in `done` once `rx` gives it a value.
    fn waiting(rx: oneshot::Receiver<()>, done: &Arc<AtomicUsize>) -> Work {
        let done = done.clone();
        Box::pin(async move {
            let _ = rx.await;
            done.fetch_add(1, Ordering::SeqCst);
        })
    }

    /// A set holding one run that waits for the sender given back; the set's signal, and the
    /// count of runs ended.
    fn one_waiting() -> (Local, Arc<Signal>, Arc<AtomicUsize>, oneshot::Sender<()>) {
        let mut local = Local::new();
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = oneshot::channel();
        local.push(waiting(rx, &done), None);
        let signal = local.signal.clone();
        (local, signal, done, tx)
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(wakes: &Arc<Self>) {
            wakes.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_handler_the_reader_wakes_runs_in_the_same_poll_and_the_reader_is_not_woken() {
        let (mut local, signal, done, tx) = one_waiting();
        // As the reader does: polls the set (the handler now waits for its answer), reads the
        // answer (here, sends it), and polls the set again, all in one poll of its own.
        let reader = Box::pin(async move {
            let first = std::future::poll_fn(|cx| Poll::Ready(local.poll_woken(cx))).await;
            assert!(first.is_pending(), "the handler waits for its answer");
            let _ = tx.send(());
            local.run().await;
        });
        let mut running = Running { reader, signal };
        let wakes = Arc::new(Wakes::default());
        let waker = futures_util::task::waker(wakes.clone());
        let poll = Pin::new(&mut running).poll(&mut Context::from_waker(&waker));
        assert!(poll.is_ready(), "the handler ran in the reader's poll");
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "the reader was woken");
    }

    #[test]
    fn a_handler_woken_where_the_reader_stops_elsewhere_brings_the_reader_back_once() {
        let (mut local, signal, done, tx) = one_waiting();
        let mut tx = Some(tx);
        // The reader polls the set, wakes the handler (reads its answer), then stops somewhere
        // other than the set (as when it waits for room in the outbox); next time it polls the
        // set again.
        let reader = std::future::poll_fn(move |cx| {
            let set = local.poll_woken(cx);
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
                return Poll::Pending;
            }
            set
        });
        let mut running = Running {
            reader: Box::pin(reader),
            signal,
        };
        let wakes = Arc::new(Wakes::default());
        let waker = futures_util::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut running).poll(&mut cx).is_pending());
        assert_eq!(done.load(Ordering::SeqCst), 0);
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "the reader is woken once"
        );
        assert!(Pin::new(&mut running).poll(&mut cx).is_ready());
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "and no more");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_woken_from_another_task_wakes_the_reader() {
        let (mut local, signal, done, tx) = one_waiting();
        let sender = tokio::spawn(async move {
            let _ = tx.send(());
        });
        let running = Running {
            reader: Box::pin(async move { local.run().await }),
            signal,
        };
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the woken handler was polled");
        sender.await.expect("sender task");
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_heavy_poll_moves_a_waiting_handler_to_a_task() {
        let mut local = Local::new();
        let weight = Arc::new(Weight::default());
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = oneshot::channel();
        let waits = waiting(rx, &done);
        local.push(
            Box::pin(async move {
                let start = Instant::now();
                while start.elapsed() <= HEAVY_POLL {
                    std::hint::spin_loop();
                }
                waits.await;
            }),
            Some(weight.clone()),
        );
        // One poll: heavy, and still waiting, so the run leaves the set for a task.
        let polled = std::future::poll_fn(|cx| Poll::Ready(local.poll_woken(cx))).await;
        assert!(polled.is_ready(), "the set is empty");
        assert_eq!(local.len(), 0);
        assert_eq!(weight.streak(), 1, "the request counted as heavy");
        let _ = tx.send(());
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the task did not finish the run");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
