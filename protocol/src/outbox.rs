//! The outbox: the frames one side has queued for its peer, and the writing of them.
//!
//! A frame queued while nothing else waits and the socket has room is written at once, by the
//! task that queued it: no hop through a writer task, no wake-up of another thread. Otherwise
//! it is queued (the frame itself, not a copy), and a flusher task ([`Outbox::flusher`]) writes
//! the queue as soon as the socket is writable again, so frames that queued together leave in
//! one vectored write. A reader
//! that handles a batch of frames may *cork* the outbox ([`Outbox::cork`]): the answers produced
//! meanwhile are collected and written together, in one system call, when it uncorks. A
//! [deferred](Outbox::deferred) outbox leaves the writing to the flusher, which first lets
//! the tasks that are ready queue their frames: the side where many tasks send one frame each
//! (plugd) then writes many per system call under load, and wakes its peer once for them. A
//! sender that knows no other frame is coming ([`Outbox::send_gated_at_once`]) still writes
//! its own when nothing is queued ahead.
//!
//! The queue is bounded by the `limit` given to [`Outbox::new`], in bytes: [`Outbox::send`]
//! waits while a frame does not fit, [`Outbox::try_send`] refuses it. A frame larger than the
//! whole limit is taken once the queue is empty, so it is delayed, never refused for its size
//! alone.

use crate::socket::WriteHalf;
use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Most bytes a corked outbox collects before it writes anyway.
const CORK_MAX: usize = 64 * 1024;

/// Most frames given to one vectored write.
const MAX_SLICES: usize = 64;

/// Frames queued for the peer on one Unix socket; shared by every task that sends.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    writer: WriteHalf,
    /// Wakes the flusher when it has bytes to write or the outbox closes.
    flush: Notify,
    /// Wakes senders waiting for room when bytes have been written or the outbox closed.
    room: Notify,
    limit: usize,
    /// Frames always wait for the flusher (see [`Outbox::deferred`]).
    defer: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Frames (or the unwritten rest of the first) waiting to be written, in order.
    queue: VecDeque<Bytes>,
    /// Their bytes.
    queued: usize,
    /// A reader is handling a batch: collect small frames instead of writing each.
    corked: bool,
    /// The socket was full: the flusher owns the writing until the buffer is empty, and
    /// nobody writes past it.
    flushing: bool,
    /// Nothing more is taken (closed, or a write failed).
    closed: bool,
    /// [`Outbox::finish`]: write what is buffered, then end the flusher.
    finishing: bool,
    /// A sender waits for room: tell it when bytes are written.
    starved: bool,
    /// The last write found the socket's buffer full: the flusher waits for room before it
    /// writes again (and only then: the socket is not watched for room otherwise).
    blocked: bool,
}

/// Why [`Outbox::try_send`] did not take a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The buffer holds too much already.
    Full,
    /// The outbox is closed.
    Closed,
}

/// Why [`Outbox::send_gated`] did not take a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsent<E> {
    /// The outbox is closed.
    Closed,
    /// The gate refused it.
    Gated(E),
}

/// The outbox is closed: the connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Outbox {
    /// An outbox writing to `writer` that holds at most `limit` bytes waiting; a frame is
    /// written by its sender when nothing is ahead of it.
    pub fn new(writer: WriteHalf, limit: usize) -> Arc<Outbox> {
        Outbox::build(writer, limit, false)
    }

    /// An outbox whose frames are all written by the flusher, which first lets every task that
    /// is ready to run queue its own: for a side where many tasks each send one frame (plugd,
    /// one per HTTP request), so that under load one write carries many frames and wakes the
    /// peer once, not once per frame.
    pub fn deferred(writer: WriteHalf, limit: usize) -> Arc<Outbox> {
        Outbox::build(writer, limit, true)
    }

    fn build(writer: WriteHalf, limit: usize, defer: bool) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            writer,
            flush: Notify::new(),
            room: Notify::new(),
            limit,
            defer,
        })
    }

    /// The task that writes what could not be written at once; spawn it once per outbox. It
    /// ends when the outbox closes, or once everything is written after [`Outbox::finish`],
    /// and fails with the socket's error.
    pub fn flusher(self: &Arc<Self>) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let outbox = self.clone();
        async move { outbox.run_flusher().await }
    }

    async fn run_flusher(&self) -> io::Result<()> {
        loop {
            // Wait until there is something to write (or nothing more ever will be).
            loop {
                let notified = self.flush.notified();
                {
                    let state = self.lock();
                    if state.closed {
                        return Ok(());
                    }
                    if state.flushing {
                        break;
                    }
                    if state.finishing && state.queue.is_empty() {
                        drop(state);
                        self.close();
                        return Ok(());
                    }
                }
                notified.await;
            }
            if self.defer {
                // The tasks that are ready now queue their frames before this write.
                tokio::task::yield_now().await;
            }
            let blocked = std::mem::take(&mut self.lock().blocked);
            if blocked {
                if let Err(e) = self.writer.writable().await {
                    self.close();
                    return Err(e);
                }
            }
            let state = self.lock();
            if state.closed {
                return Ok(());
            }
            self.write_now(state)?;
        }
    }

    /// Queues `frame`, waiting while the buffer has no room for it; fails only when the
    /// outbox is closed.
    pub async fn send(&self, frame: Bytes) -> Result<(), Closed> {
        self.send_gated(frame, || Ok::<(), std::convert::Infallible>(()))
            .await
            .map_err(|_| Closed)
    }

    /// Queues `frame` as [`Outbox::send`] does, once `gate` agrees: `gate` runs under the
    /// outbox's lock right before the frame is taken, so what it decides holds for every frame
    /// queued after this one.
    pub async fn send_gated<E>(
        &self,
        frame: Bytes,
        gate: impl FnMut() -> Result<(), E>,
    ) -> Result<(), Unsent<E>> {
        self.send_inner(frame, gate, false).await
    }

    /// [`Outbox::send_gated`], but on a [deferred](Outbox::deferred) outbox too the frame is
    /// written at once by the caller when nothing is queued ahead of it: for a sender that
    /// knows no other frame is coming to share the write (the only call in flight on an idle
    /// connection), which then saves the hop through the flusher.
    pub async fn send_gated_at_once<E>(
        &self,
        frame: Bytes,
        gate: impl FnMut() -> Result<(), E>,
    ) -> Result<(), Unsent<E>> {
        self.send_inner(frame, gate, true).await
    }

    async fn send_inner<E>(
        &self,
        frame: Bytes,
        mut gate: impl FnMut() -> Result<(), E>,
        at_once: bool,
    ) -> Result<(), Unsent<E>> {
        loop {
            // Registered only once a first look found no room (the usual case has room and
            // needs none), and before the look that decides to wait, so no room is missed.
            let notified = self.room.notified();
            tokio::pin!(notified);
            for registered in [false, true] {
                if registered {
                    notified.as_mut().enable();
                }
                let mut state = self.lock();
                if state.closed || state.finishing {
                    return Err(Unsent::Closed);
                }
                if self.fits(&state, frame.len()) {
                    gate().map_err(Unsent::Gated)?;
                    return self.take(state, frame, at_once).map_err(|_| Unsent::Closed);
                }
                state.starved = true;
            }
            notified.await;
        }
    }

    /// Queues `frame` if it fits now; otherwise says why not.
    pub fn try_send(&self, frame: Bytes) -> Result<(), Refused> {
        let state = self.lock();
        if state.closed || state.finishing {
            return Err(Refused::Closed);
        }
        if !self.fits(&state, frame.len()) {
            return Err(Refused::Full);
        }
        self.take(state, frame, false).map_err(|_| Refused::Closed)
    }

    /// Holds small frames back until [`Outbox::uncork`], to write them together.
    pub fn cork(&self) {
        self.lock().corked = true;
    }

    /// Writes what was held back by [`Outbox::cork`].
    pub fn uncork(&self) {
        let mut state = self.lock();
        state.corked = false;
        if !state.flushing && !state.queue.is_empty() && !state.closed {
            let _ = self.write_now(state);
        }
    }

    /// Takes nothing more; the flusher writes what is buffered and then ends.
    pub fn finish(&self) {
        let mut state = self.lock();
        state.finishing = true;
        state.corked = false;
        if !state.queue.is_empty() {
            state.flushing = true;
        }
        drop(state);
        self.flush.notify_one();
    }

    /// Closes the outbox: buffered frames are dropped, senders waiting and later ones are
    /// refused, the flusher ends, and the peer reads the end of the stream.
    pub fn close(&self) {
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            state.queue = VecDeque::new();
            state.queued = 0;
        }
        // The write half lives as long as the outbox; shut the socket's sending side down now.
        let _ = self.writer.shutdown();
        self.room.notify_waiters();
        self.flush.notify_one();
    }

    /// Bytes waiting to be written.
    pub fn buffered(&self) -> usize {
        self.lock().queued
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock still guards a consistent buffer: every change is a whole append or
        // advance.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fits(&self, state: &State, len: usize) -> bool {
        state.queue.is_empty() || state.queued + len <= self.limit
    }

    /// Queues `frame` and writes the queue now unless the flusher owns the writing (deferred
    /// and not `at_once`, or the socket was full) or the outbox is corked and holds little yet.
    fn take(
        &self,
        mut state: MutexGuard<'_, State>,
        frame: Bytes,
        at_once: bool,
    ) -> io::Result<()> {
        state.queued += frame.len();
        state.queue.push_back(frame);
        if state.flushing || (state.corked && state.queued < CORK_MAX) {
            return Ok(());
        }
        if self.defer && !at_once {
            state.flushing = true;
            self.flush.notify_one();
            return Ok(());
        }
        self.write_now(state)
    }

    /// Writes the queue as far as the socket takes it; a failed write closes the outbox (the
    /// connection is broken).
    fn write_now(&self, mut state: MutexGuard<'_, State>) -> io::Result<()> {
        let written = self.write_buffered(&mut state);
        if written.is_err() {
            drop(state);
            self.close();
        }
        written
    }

    /// Writes as much of the queue as the socket takes; the flusher takes over the rest.
    fn write_buffered(&self, state: &mut State) -> io::Result<()> {
        let mut written_any = false;
        while !state.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(&state.queue) {
                *slot = IoSlice::new(frame);
                count += 1;
            }
            let mut written = match self.writer.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    state.blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            written_any = true;
            state.queued -= written;
            while written > 0 {
                let Some(front) = state.queue.front_mut() else {
                    break;
                };
                if front.len() <= written {
                    written -= front.len();
                    state.queue.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        state.flushing = !state.queue.is_empty();
        if state.flushing {
            self.flush.notify_one();
        }
        if written_any && std::mem::take(&mut state.starved) {
            self.room.notify_waiters();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    /// An outbox of 1 KiB built by `make`, and the peer's end of its socket.
    fn pair_with(make: fn(WriteHalf, usize) -> Arc<Outbox>) -> (Arc<Outbox>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        let (_rd, wr) = crate::socket::split(ours).expect("split");
        // The read half is dropped: this side only writes.
        (make(wr, 1024), theirs)
    }

    fn pair() -> (Arc<Outbox>, UnixStream) {
        pair_with(Outbox::new)
    }

    #[tokio::test]
    async fn a_frame_is_written_at_once_when_nothing_waits() {
        let (outbox, mut peer) = pair();
        outbox
            .send(Bytes::from_static(b"hello"))
            .await
            .expect("sent");
        assert_eq!(outbox.buffered(), 0, "written by the sender itself");
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn corked_frames_leave_together_on_uncork() {
        let (outbox, mut peer) = pair();
        outbox.cork();
        outbox
            .send(Bytes::from_static(b"one,"))
            .await
            .expect("sent");
        outbox.send(Bytes::from_static(b"two")).await.expect("sent");
        assert_eq!(outbox.buffered(), 7, "held while corked");
        outbox.uncork();
        assert_eq!(outbox.buffered(), 0);
        let mut got = [0u8; 7];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"one,two");
    }

    #[tokio::test]
    async fn a_full_buffer_refuses_then_the_flusher_makes_room() {
        let (outbox, mut peer) = pair();
        let flusher = tokio::spawn(outbox.flusher());
        // Fill the socket until frames start to wait in the buffer.
        let frame = Bytes::from(vec![7u8; 512]);
        let mut sent = 0usize;
        while outbox.buffered() == 0 {
            outbox.try_send(frame.clone()).expect("room");
            sent += frame.len();
        }
        // The buffer takes frames up to its limit, then refuses.
        let refused = loop {
            match outbox.try_send(frame.clone()) {
                Ok(()) => sent += frame.len(),
                Err(e) => break e,
            }
        };
        assert_eq!(refused, Refused::Full);
        assert!(outbox.buffered() <= 1024);
        // A waiting sender gets in once the peer reads.
        let waiting = {
            let outbox = outbox.clone();
            let frame = frame.clone();
            tokio::spawn(async move { outbox.send(frame).await })
        };
        sent += frame.len();
        let mut got = vec![0u8; sent];
        peer.read_exact(&mut got).await.expect("everything arrives");
        assert!(got.iter().all(|b| *b == 7));
        waiting.await.expect("joined").expect("sent");
        outbox.close();
        flusher
            .await
            .expect("joined")
            .expect("flusher ended cleanly");
    }

    #[tokio::test]
    async fn a_deferred_outbox_writes_what_tasks_queued_together_in_one_go() {
        let (outbox, mut peer) = pair_with(Outbox::deferred);
        // On this single-threaded runtime the flusher runs only once this task waits.
        let flusher = tokio::spawn(outbox.flusher());
        for frame in [&b"one,"[..], b"two,", b"three"] {
            outbox
                .send(Bytes::from_static(frame))
                .await
                .expect("queued");
        }
        assert_eq!(outbox.buffered(), 13, "nothing written by the senders");
        let mut got = [0u8; 13];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"one,two,three");
        assert_eq!(outbox.buffered(), 0);
        outbox.close();
        flusher
            .await
            .expect("joined")
            .expect("flusher ended cleanly");
    }

    #[tokio::test]
    async fn a_sender_alone_writes_its_own_frame_on_a_deferred_outbox_unless_one_is_ahead() {
        let (outbox, mut peer) = pair_with(Outbox::deferred);
        let open = || Ok::<(), ()>(());
        // No flusher runs: what the peer reads was written by the sender.
        outbox
            .send_gated_at_once(Bytes::from_static(b"alone"), open)
            .await
            .expect("sent");
        assert_eq!(outbox.buffered(), 0, "written by the sender itself");
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"alone");
        // A frame queued for the flusher stays ahead: the next one waits behind it, in order.
        outbox
            .send(Bytes::from_static(b"first,"))
            .await
            .expect("queued");
        outbox
            .send_gated_at_once(Bytes::from_static(b"second"), open)
            .await
            .expect("queued");
        assert_eq!(outbox.buffered(), 12, "both wait for the flusher");
        let flusher = tokio::spawn(outbox.flusher());
        let mut got = [0u8; 12];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"first,second");
        outbox.close();
        flusher
            .await
            .expect("joined")
            .expect("flusher ended cleanly");
    }

    #[tokio::test]
    async fn close_refuses_senders_and_ends_the_peers_stream() {
        let (outbox, mut peer) = pair();
        outbox.close();
        assert_eq!(outbox.send(Bytes::from_static(b"late")).await, Err(Closed));
        assert_eq!(
            outbox.try_send(Bytes::from_static(b"late")),
            Err(Refused::Closed)
        );
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.expect("end of stream");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn finish_writes_what_is_buffered_before_the_flusher_ends() {
        let (outbox, mut peer) = pair();
        let flusher = tokio::spawn(outbox.flusher());
        outbox.cork();
        outbox
            .send(Bytes::from_static(b"last words"))
            .await
            .expect("sent");
        outbox.finish();
        flusher.await.expect("joined").expect("flushed");
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.expect("end of stream");
        assert_eq!(rest, b"last words");
    }
}
