//! Reads Server-Sent Events: lines of `field: value`, an event ending at a blank line. Only
//! `data` matters here (each event's JSON names its kind); comments (keep-alives) and other
//! fields are skipped. A line longer than [`MAX_EVENT`] is refused rather than buffered.

/// The largest event accepted (a log line is at most 4 KiB; events are far smaller than this).
pub const MAX_EVENT: usize = 1024 * 1024;

/// An incremental parser: feed it bytes as they arrive, get whole events' data back.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    data: String,
}

impl Parser {
    /// Takes the next bytes; answers the data of every event they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                if self.line.len() + self.data.len() > MAX_EVENT {
                    return Err(format!("an event of the stream exceeds {MAX_EVENT} bytes"));
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    done.push(std::mem::take(&mut self.data));
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_and_keep_alives_in_between() {
        let mut p = Parser::default();
        assert!(p
            .push(b": keep-alive\n\nevent: log\nda")
            .expect("ok")
            .is_empty());
        let got = p
            .push(b"ta: {\"a\":1}\r\n\r\nevent: x\ndata: one\ndata: two\n\n")
            .expect("ok");
        assert_eq!(got, vec!["{\"a\":1}".to_owned(), "one\ntwo".to_owned()]);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = Parser::default();
        let err = p.push(&vec![b'x'; MAX_EVENT + 1]).expect_err("too long");
        assert!(err.contains("exceeds"), "{err}");
    }
}
