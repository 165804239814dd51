//! The HTTP server loop: accepts connections and serves each with hyper, within bounds a
//! client cannot push plugd past.
//!
//! - At most [`Limits::max_connections`] connections are open at once. One past the cap is
//!   answered at once with a `503` and closed (at most [`MAX_REFUSING`] such answers are in
//!   progress at a time; past that a connection is closed unanswered), never left hanging.
//! - A request head must arrive within [`Limits::header_read_timeout`], which is also how long
//!   a kept-alive connection may sit idle between requests (hyper starts the same timer then).
//!   The timer is [`head_timer`](super::head_timer)'s: no runtime timer per request, and a
//!   head's wait ends within a sixteenth of the timeout (at most 1 s) after its deadline.
//! - An `accept` that fails for want of file descriptors waits a moment and tries again, rather
//!   than spinning.
//!
//! On shutdown the loop stops accepting and waits for the requests in flight; the caller bounds
//! that wait.

use super::head_timer::HeadTimers;
use super::App;
use hyper_util::rt::TokioIo;
use plugd_protocol::when_woken::WhenWoken;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections past the cap that may be being answered with a `503` at once.
pub const MAX_REFUSING: usize = 64;

/// How long a refused connection is given to take its `503`.
const REFUSE_TIME: Duration = Duration::from_secs(1);

/// How long the loop waits after `accept` failed for want of a resource.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What one client may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for a request head, and longest idle time between requests.
    pub header_read_timeout: Duration,
}

/// The connection cap, shared by every thread that takes HTTP connections: the cap holds for
/// plugd as a whole, not per thread.
#[derive(Debug, Clone)]
pub struct Gate {
    limits: Limits,
    open: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
}

impl Gate {
    /// A gate for `limits`, with no connection open yet.
    pub fn new(limits: Limits) -> Gate {
        Gate {
            limits,
            open: Arc::new(Semaphore::new(limits.max_connections)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        }
    }
}

const OVERLOADED: &str = "{\"error\":\"too many connections\",\"detail\":\"plugd has as many connections open as it allows; try again shortly\"}";

/// Serves `app` on `listener` until `stop` resolves, then waits for the requests in flight.
/// Every thread that takes connections runs one, with its own listener, through the same
/// `gate`.
pub async fn serve(listener: TcpListener, app: App, gate: Gate, stop: impl Future<Output = ()>) {
    let Gate {
        limits,
        open,
        refusing,
    } = gate;
    let mut http = hyper::server::conn::http1::Builder::new();
    // Each answer is flattened into one buffer and sent with one plain write, rather than a
    // vectored write of head and body: on the proxy path that measured about 2.5 % less of
    // plugd's CPU per request (two builds alternated under wrk), the copy of a plugin's body
    // costing less than the vectored path through the kernel. The copy is transient and at
    // most the body's size, which a plugin's frame limit bounds already.
    http.writev(false)
        .header_read_timeout(limits.header_read_timeout);
    let timers = HeadTimers::new();
    let _sweeping = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        timers
            .clone()
            .sweep(HeadTimers::tick_for(limits.header_read_timeout)),
    ));
    // Connections are served with upgrades (WebSockets), which hyper-util's graceful helper
    // does not take: each connection task watches this token itself.
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let service = app;
    let mut warned_full = false;
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}; trying again in {ACCEPT_BACKOFF:?}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if !std::mem::replace(&mut warned_full, true) {
                tracing::warn!(
                    max = limits.max_connections,
                    "connection limit reached; refusing new connections with 503 until some close"
                );
            }
            if let Ok(slot) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REFUSE_TIME, refuse(stream)).await;
                    drop(slot);
                });
            }
            continue;
        };
        if open.available_permits() > limits.max_connections / 2 {
            warned_full = false;
        }
        let _ = stream.set_nodelay(true);
        let connection = http
            .clone()
            .timer(timers.connection())
            .serve_connection(TokioIo::new(stream), service.clone())
            .with_upgrades();
        let stop = stopping.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = WhenWoken::new(stop.cancelled()) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// Answers a connection past the cap with a `503` and closes it, after reading what the client
/// sent meanwhile (closing with unread data would reset the connection and lose the answer).
async fn refuse(mut stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{OVERLOADED}",
        OVERLOADED.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}
