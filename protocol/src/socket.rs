//! The connection's Unix socket, split into a reading and a writing half, with only the reading
//! side registered with the runtime.
//!
//! tokio registers a socket for readability and writability together, and the kernel signals
//! a Unix socket writable every time the peer reads from it, whether or not its buffer was ever
//! full. Every answer a plugin read, and every request plugd read back, woke the other process
//! once more for nothing: a third of plugd's wake-ups on the proxy path and half the plugin's.
//! Here the socket is registered for reading alone. Writes go straight to it; only a write
//! that finds the buffer full registers a duplicate of the descriptor for writability, waits,
//! and drops it (a full buffer is rare: a peer that stopped reading, or a large body).

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream as StdStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, Interest, ReadBuf};

/// The most one read asks for. A read fills memory the socket's bytes are copied into, and safe
/// code must zero it first: this bounds that zeroing (the socket rarely holds more anyway).
const MAX_READ: usize = 64 * 1024;

/// Reads for at most this much go through the half's own buffer, zeroed once, and only the
/// bytes read are copied on: zeroing the caller's room on every read would cost more than the
/// small messages it reads.
const SCRATCH: usize = 8 * 1024;

/// Splits `stream` into its halves. The socket is closed when both are dropped.
pub fn split(stream: tokio::net::UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(true)?;
    let fd = Arc::new(register(stream, Interest::READABLE)?);
    let read = ReadHalf {
        fd: fd.clone(),
        scratch: vec![0; SCRATCH].into_boxed_slice(),
    };
    Ok((read, WriteHalf { fd }))
}

/// Registers `stream` with the runtime for `interest` alone.
#[allow(unsafe_code)]
fn register(stream: StdStream, interest: Interest) -> io::Result<AsyncFd<StdStream>> {
    // SAFETY: `AsyncFd` needs the descriptor to stay open, refer to the same socket and be the
    // one `as_raw_fd` returns for as long as it holds the stream. A std `UnixStream` owns its
    // descriptor and closes it only when dropped, which the `AsyncFd` does last.
    Ok(unsafe { AsyncFd::register_with_interest(stream, interest) }?)
}

/// The reading half: an [`AsyncRead`] woken only by readability (and by the peer closing).
#[derive(Debug)]
pub struct ReadHalf {
    fd: Arc<AsyncFd<StdStream>>,
    scratch: Box<[u8]>,
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut ready = ready!(this.fd.poll_read_ready(cx))?;
            let want = buf.remaining().min(MAX_READ);
            let read = if want <= this.scratch.len() {
                let scratch = &mut this.scratch[..want];
                ready
                    .try_io(|fd| fd.get_ref().read(scratch))
                    .map(|read| read.inspect(|&n| buf.put_slice(&this.scratch[..n])))
            } else {
                let into = buf.initialize_unfilled_to(want);
                ready
                    .try_io(|fd| fd.get_ref().read(into))
                    .map(|read| read.inspect(|&n| buf.advance(n)))
            };
            match read {
                Ok(Ok(n)) => {
                    // A read that did not fill what it asked for emptied the socket: the next
                    // bytes will signal readability anew, so no read is tried before then (it
                    // would only find nothing).
                    if n > 0 && n < want {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not readable after all: the readiness was cleared; wait for the next.
                Err(_would_block) => continue,
            }
        }
    }
}

/// The writing half. Dropping it shuts the socket's sending side, so the peer reads the end.
#[derive(Debug)]
pub struct WriteHalf {
    fd: Arc<AsyncFd<StdStream>>,
}

impl WriteHalf {
    /// Writes what the socket takes now, at once; `WouldBlock` when its buffer is full.
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.fd.get_ref().write_vectored(bufs)
    }

    /// Waits until the socket takes bytes again (after a write found it full): a duplicate of
    /// the descriptor is registered for writability for as long as the wait lasts.
    pub async fn writable(&self) -> io::Result<()> {
        let duplicate = self.fd.get_ref().try_clone()?;
        let waiting = register(duplicate, Interest::WRITABLE)?;
        let _ready = waiting.writable().await?;
        Ok(())
    }

    /// Writes all of `bytes`, waiting for room as needed.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.fd.get_ref().write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Shuts the socket's sending side: the peer reads the end of the stream.
    pub fn shutdown(&self) -> io::Result<()> {
        self.fd.get_ref().shutdown(Shutdown::Write)
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn pair() -> ((ReadHalf, WriteHalf), (ReadHalf, WriteHalf)) {
        let (a, b) = tokio::net::UnixStream::pair().expect("a socket pair");
        (split(a).expect("split"), split(b).expect("split"))
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_a_dropped_writer_ends_the_stream() {
        let ((mut a_rd, a_wr), (mut b_rd, b_wr)) = pair();
        a_wr.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b_rd.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        let n = b_wr
            .try_write_vectored(&[IoSlice::new(b"po"), IoSlice::new(b"ng")])
            .unwrap();
        assert_eq!(n, 4);
        a_rd.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        drop(a_wr);
        let mut rest = Vec::new();
        assert_eq!(b_rd.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_writer_that_fills_the_socket_waits_for_the_reader() {
        let ((_a_rd, a_wr), (mut b_rd, _b_wr)) = pair();
        // Fill the socket until it refuses more.
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        loop {
            match a_wr.try_write_vectored(&[IoSlice::new(&chunk)]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write failed: {e}"),
            }
        }
        // A writer waiting for room goes on once the reader takes some; all bytes arrive.
        let more = vec![9u8; 100_000];
        let writer = tokio::spawn(async move {
            a_wr.write_all(&more).await.unwrap();
            a_wr
        });
        let mut received = vec![0u8; sent + 100_000];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            b_rd.read_exact(&mut received),
        )
        .await
        .expect("the waiting writer went on")
        .unwrap();
        assert!(received[..sent].iter().all(|&b| b == 7));
        assert!(received[sent..].iter().all(|&b| b == 9));
        writer.await.unwrap();
    }
}
