//! Each plugin's recent output: a ring buffer of its stdout/stderr lines, bounded in lines and
//! bytes, kept across restarts so the last words before a crash can still be read; and the
//! [`LineBudget`] that keeps a plugin's output from flooding plugd's own log. Every line also
//! goes to the live feed (`GET /admin/stream`) while a stream is open.

use crate::feed::Feed;
use plugd_api::StreamEvent;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines kept per plugin.
pub const MAX_LINES: usize = 1000;
/// Bytes of text kept per plugin.
pub const MAX_BYTES: usize = 256 * 1024;
/// Longest line kept whole; longer ones are cut and marked.
pub const MAX_LINE: usize = 4096;

/// Lines per second a plugin's output stream may put in plugd's log, on average.
pub const LOG_LINES_PER_SEC: u32 = 200;
/// Lines a plugin's output stream may put in plugd's log in one burst.
pub const LOG_BURST: u32 = 1000;
/// Shortest time between two summaries of suppressed lines.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// A token bucket over one output stream's lines: [`LOG_LINES_PER_SEC`] on average, bursts of
/// [`LOG_BURST`]. Lines past it are counted, not logged, and reported in one summary at most
/// every second.
#[derive(Debug)]
pub struct LineBudget {
    tokens: f64,
    rate: f64,
    burst: f64,
    refilled: Instant,
    suppressed: u64,
    summarised: Instant,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it.
    Log,
    /// Log it, after a summary saying this many lines were suppressed before it.
    LogAfterSuppressing(u64),
    /// Count it and drop it.
    Suppress,
}

impl LineBudget {
    /// A full bucket at `now`, for `rate` lines per second and bursts of `burst`.
    pub fn new(rate: u32, burst: u32, now: Instant) -> LineBudget {
        LineBudget {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            refilled: now,
            suppressed: 0,
            summarised: now,
        }
    }

    /// Decides about a line read at `now`.
    pub fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.suppressed += 1;
            return Verdict::Suppress;
        }
        self.tokens -= 1.0;
        if self.suppressed > 0 {
            if now.saturating_duration_since(self.summarised) < SUMMARY_EVERY {
                // Keep the summaries themselves within bounds: this line joins the count.
                self.suppressed += 1;
                return Verdict::Suppress;
            }
            self.summarised = now;
            return Verdict::LogAfterSuppressing(std::mem::take(&mut self.suppressed));
        }
        Verdict::Log
    }

    /// Lines suppressed since the last summary (to report when the stream ends).
    pub fn pending(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// One line of a plugin's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When it was read, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The process that wrote it.
    pub pid: u32,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The text, without its line ending.
    pub text: String,
    /// How many bytes were cut from the end of a long line (0 when whole).
    pub cut: usize,
}

/// A plugin's recent output.
#[derive(Debug, Default)]
pub struct LogRing {
    inner: Mutex<Ring>,
    /// The plugin's name and the live feed every line is also published to.
    feed: Option<(String, Arc<Feed>)>,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    dropped: u64,
}

impl LogRing {
    /// The output of plugin `plugin`, whose lines also go to `feed`.
    pub fn new(plugin: &str, feed: Arc<Feed>) -> LogRing {
        LogRing {
            inner: Mutex::default(),
            feed: Some((plugin.to_owned(), feed)),
        }
    }

    /// Appends a line, cutting it at [`MAX_LINE`] bytes and evicting the oldest lines beyond
    /// [`MAX_LINES`] or [`MAX_BYTES`].
    pub fn push(&self, pid: u32, stream: &'static str, text: &str) {
        let mut end = text.len().min(MAX_LINE);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let line = LogLine {
            at_unix_ms: plugd_protocol::time::now_unix_ms(),
            pid,
            stream,
            text: text[..end].to_owned(),
            cut: text.len() - end,
        };
        if let Some((plugin, feed)) = &self.feed {
            feed.publish(|| StreamEvent::Log {
                plugin: plugin.clone(),
                pid,
                stream: stream.to_owned(),
                line: line.display(),
                at_ms: line.at_unix_ms,
            });
        }
        let mut ring = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        ring.bytes += line.text.len();
        ring.lines.push_back(line);
        while ring.lines.len() > MAX_LINES || ring.bytes > MAX_BYTES {
            let Some(old) = ring.lines.pop_front() else {
                break;
            };
            ring.bytes -= old.text.len();
            ring.dropped += 1;
        }
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<LogLine> {
        let ring = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        ring.lines
            .iter()
            .skip(ring.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Lines evicted so far to stay within the bounds.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

impl LogLine {
    /// The line as shown to people: long lines end with a mark saying how much was cut.
    pub fn display(&self) -> String {
        if self.cut == 0 {
            self.text.clone()
        } else {
            format!("{} [… {} more bytes cut]", self.text, self.cut)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_budget_allows_bursts_then_the_rate_and_summarises_the_rest() {
        let t0 = Instant::now();
        let mut budget = LineBudget::new(10, 5, t0);
        for _ in 0..5 {
            assert_eq!(budget.take(t0), Verdict::Log);
        }
        for _ in 0..100 {
            assert_eq!(budget.take(t0), Verdict::Suppress);
        }
        // Tokens are back, but the summary waits a second after the last one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(budget.take(t1), Verdict::Suppress);
        let t2 = t0 + Duration::from_millis(1100);
        assert_eq!(budget.take(t2), Verdict::LogAfterSuppressing(101));
        assert_eq!(budget.take(t2), Verdict::Log);
        assert_eq!(budget.pending(), 0);
    }

    #[test]
    fn keeps_the_newest_lines_within_the_line_bound() {
        let ring = LogRing::default();
        for i in 0..MAX_LINES + 5 {
            ring.push(1, "stdout", &format!("line {i}"));
        }
        let last = ring.last(2);
        assert_eq!(last[0].text, format!("line {}", MAX_LINES + 3));
        assert_eq!(last[1].text, format!("line {}", MAX_LINES + 4));
        assert_eq!(ring.last(usize::MAX).len(), MAX_LINES);
        assert_eq!(ring.dropped(), 5);
    }

    #[test]
    fn long_lines_are_cut_and_marked_not_dropped() {
        let ring = LogRing::default();
        let long = "é".repeat(MAX_LINE); // two bytes each: the cut must respect char boundaries
        ring.push(1, "stderr", &long);
        let line = &ring.last(1)[0];
        assert!(line.text.len() <= MAX_LINE);
        assert_eq!(line.text.len() + line.cut, long.len());
        assert!(line
            .display()
            .ends_with(&format!("[… {} more bytes cut]", line.cut)));
    }

    #[test]
    fn the_byte_bound_evicts_old_lines() {
        let ring = LogRing::default();
        let line = "x".repeat(MAX_LINE);
        for _ in 0..(MAX_BYTES / MAX_LINE) + 3 {
            ring.push(1, "stdout", &line);
        }
        let kept = ring.last(usize::MAX);
        assert!(kept.iter().map(|l| l.text.len()).sum::<usize>() <= MAX_BYTES);
        assert_eq!(ring.dropped(), 3);
    }
}
