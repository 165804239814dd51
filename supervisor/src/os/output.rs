//! Each plugin's recent output: a ring buffer of its stdout/stderr lines, bounded in lines and
//! bytes, kept across restarts so the last words before a crash can still be read.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Lines kept per plugin.
pub const MAX_LINES: usize = 1000;
/// Bytes of text kept per plugin.
pub const MAX_BYTES: usize = 256 * 1024;
/// Longest line kept whole; longer ones are cut and marked.
pub const MAX_LINE: usize = 4096;

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
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    dropped: u64,
}

impl LogRing {
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
