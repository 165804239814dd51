//! Credit accounting for streams (see [`crate::message::stream`]): what a sender may still send
//! on one stream, and what a receiver lets its peer send. Both ends of a connection use these,
//! so the rules are the same on both sides.

use crate::message::stream::CHUNK_OVERHEAD;
use bytes::{Bytes, BytesMut};
use std::sync::Mutex;
use tokio::sync::Notify;

/// The credit each side has per stream and direction when the stream starts, unless the
/// `Welcome` names another `stream_window`: 256 KiB.
pub const DEFAULT_WINDOW: u32 = 256 * 1024;

/// The smallest window plugd accepts in its configuration: 4 KiB.
pub const MIN_WINDOW: u32 = 4 * 1024;

/// The largest chunk a sender cuts: 64 KiB. Bigger bodies are sent in pieces.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Room a `stream.data` frame needs beyond its data (envelope, method, keys, id).
const FRAME_OVERHEAD: usize = 64;

/// The largest chunk of data to put in one message on a stream with `window` bytes of credit,
/// over a connection whose frames are at most `max_frame` bytes.
pub fn chunk_limit(window: u32, max_frame: usize) -> usize {
    let by_window = (window as usize).saturating_sub(CHUNK_OVERHEAD as usize);
    MAX_CHUNK
        .min(by_window)
        .min(max_frame.saturating_sub(FRAME_OVERHEAD))
        .max(1)
}

/// The sending side's credit on one stream: taken before each message, given back by the
/// peer's `stream.credit`. A sender out of credit waits.
#[derive(Debug)]
pub struct SendCredit {
    state: Mutex<CreditState>,
    changed: Notify,
}

#[derive(Debug)]
struct CreditState {
    available: u64,
    closed: bool,
}

/// The stream ended while a sender waited for credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream ended")]
pub struct Ended;

impl SendCredit {
    /// Credit for a stream whose window is `window` bytes.
    pub fn new(window: u32) -> SendCredit {
        SendCredit {
            state: Mutex::new(CreditState {
                available: u64::from(window),
                closed: false,
            }),
            changed: Notify::new(),
        }
    }

    /// Adds `bytes` of credit (the peer's `stream.credit`).
    pub fn grant(&self, bytes: u64) {
        let mut state = self.lock();
        state.available = state.available.saturating_add(bytes);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Ends the stream: every sender waiting now or later gets [`Ended`].
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits until `cost` bytes of credit are there and takes them.
    pub async fn take(&self, cost: u64) -> Result<(), Ended> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(Ended);
                }
                if state.available >= cost {
                    state.available -= cost;
                    return Ok(());
                }
            }
            changed.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CreditState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A message arrived past the credit its sender had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a message of {cost} bytes (with overhead) arrived with only {credit} bytes of credit left"
)]
pub struct Overrun {
    /// What the message cost.
    pub cost: u64,
    /// The credit its sender still had.
    pub credit: u64,
}

/// What the receiver of one stream knows of its peer's credit: it takes each arriving
/// message's cost off and refuses one past the credit. (The reader of a connection keeps this.)
#[derive(Debug, Clone)]
pub struct RecvWindow {
    outstanding: u64,
}

impl RecvWindow {
    /// A stream whose peer starts with `window` bytes of credit.
    pub fn new(window: u32) -> RecvWindow {
        RecvWindow {
            outstanding: u64::from(window),
        }
    }

    /// Counts a message costing `cost` that just arrived; past the peer's credit it is an
    /// [`Overrun`], and the stream must end.
    pub fn receive(&mut self, cost: u64) -> Result<(), Overrun> {
        if cost > self.outstanding {
            return Err(Overrun {
                cost,
                credit: self.outstanding,
            });
        }
        self.outstanding -= cost;
        Ok(())
    }

    /// Counts `bytes` of credit given to the peer (before the `stream.credit` is sent).
    pub fn give(&mut self, bytes: u64) {
        self.outstanding = self.outstanding.saturating_add(bytes);
    }
}

/// What the consumer of one stream has taken since it last gave credit back; it gives credit
/// once half the window has been consumed, so credit messages stay few.
#[derive(Debug, Clone)]
pub struct Consumption {
    window: u64,
    consumed: u64,
}

impl Consumption {
    /// For a stream whose window is `window` bytes.
    pub fn new(window: u32) -> Consumption {
        Consumption {
            window: u64::from(window),
            consumed: 0,
        }
    }

    /// Counts a message costing `cost` as consumed; returns the credit to give back once at
    /// least half the window has been consumed since the last grant.
    pub fn consume(&mut self, cost: u64) -> Option<u64> {
        self.consumed += cost;
        if self.consumed * 2 >= self.window {
            Some(std::mem::take(&mut self.consumed))
        } else {
            None
        }
    }
}

/// Gathers a WebSocket message sent in pieces (`ws.message` with `more`): keep one per socket,
/// not per receive, so a receive that is dropped halfway loses nothing.
#[derive(Debug, Default)]
pub struct Pieces {
    partial: BytesMut,
}

impl Pieces {
    /// Adds a piece; the whole message once its last piece (`more == false`) arrived. A message
    /// in one piece passes through without a copy.
    pub fn add(&mut self, data: Bytes, more: bool) -> Option<Bytes> {
        if !more && self.partial.is_empty() {
            return Some(data);
        }
        self.partial.extend_from_slice(&data);
        (!more).then(|| self.partial.split().freeze())
    }

    /// Bytes gathered so far of a message whose last piece has not arrived.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_refuses_past_the_credit_and_gives_back_what_was_consumed() {
        let mut w = RecvWindow::new(1000);
        let mut c = Consumption::new(1000);
        w.receive(600).expect("within credit");
        assert_eq!(
            w.receive(500),
            Err(Overrun {
                cost: 500,
                credit: 400
            })
        );
        assert_eq!(c.consume(300), None, "less than half the window");
        let grant = c.consume(300).expect("half the window consumed");
        assert_eq!(grant, 600);
        w.give(grant);
        w.receive(1000).expect("the credit is back");
        assert!(w.receive(1).is_err(), "and no more");
    }

    #[tokio::test]
    async fn a_sender_waits_for_credit_and_a_close_wakes_it() {
        let credit = std::sync::Arc::new(SendCredit::new(100));
        credit.take(80).await.expect("within the window");
        let waiting = tokio::spawn({
            let credit = credit.clone();
            async move { credit.take(50).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "20 bytes left, 50 needed");
        credit.grant(30);
        assert_eq!(waiting.await.expect("joined"), Ok(()));
        let waiting = tokio::spawn({
            let credit = credit.clone();
            async move { credit.take(50).await }
        });
        credit.close();
        assert_eq!(waiting.await.expect("joined"), Err(Ended));
    }

    #[test]
    fn chunks_fit_the_window_and_the_frame() {
        assert_eq!(chunk_limit(DEFAULT_WINDOW, 16 << 20), MAX_CHUNK);
        assert_eq!(chunk_limit(4096, 16 << 20), 4096 - 64);
        assert_eq!(chunk_limit(DEFAULT_WINDOW, 10_000), 10_000 - 64);
    }

    #[test]
    fn pieces_make_one_message_and_a_whole_one_passes_through() {
        let mut pieces = Pieces::default();
        assert_eq!(pieces.add(Bytes::from_static(b"ab"), true), None);
        assert_eq!(pieces.add(Bytes::from_static(b"cd"), true), None);
        assert_eq!(pieces.pending(), 4);
        assert_eq!(
            pieces.add(Bytes::from_static(b"e"), false),
            Some(Bytes::from_static(b"abcde"))
        );
        assert_eq!(pieces.pending(), 0);
        assert_eq!(
            pieces.add(Bytes::from_static(b"whole"), false),
            Some(Bytes::from_static(b"whole"))
        );
    }
}
