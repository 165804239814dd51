//! `plugd-runtime`: the SDK a plugd plugin links.
//!
//! A plugin is a small program that declares its routes and handlers and calls [`Plugin::run`]. The
//! runtime connects to the socket the supervisor gave it, performs the handshake, and then serves
//! every request concurrently on its own task: a panicking handler answers that one request with a
//! 500 and the plugin keeps serving. It stops gracefully when the supervisor asks it to (finishing
//! requests in flight) or when the socket closes, calling `on_unload` either way. Logs written
//! through `tracing` go to stderr, where the supervisor collects them under the plugin's name.
//!
//! ```no_run
//! use plugd_runtime::{Json, Plugin, Request};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! #[derive(Default)]
//! struct Visits(AtomicU64);
//!
//! #[tokio::main]
//! async fn main() -> Result<(), plugd_runtime::Error> {
//!     Plugin::new("greeter", "1.0.0")
//!         .with_state(Visits::default())
//!         .get("/hello/{name}", |req: Request, visits: Arc<Visits>| async move {
//!             let n = visits.0.fetch_add(1, Ordering::Relaxed) + 1;
//!             format!("hello, {}! (visit {n})", req.param("name").unwrap_or("stranger"))
//!         })
//!         .post("/echo", |req: Request, _| async move {
//!             let value: serde_json::Value = req.json()?;
//!             Ok::<_, plugd_runtime::HttpError>(Json(value))
//!         })
//!         .run()
//!         .await
//! }
//! ```
//!
//! Handlers run concurrently on whatever tokio runtime `main` builds. A handler that answers
//! without waiting is run by the connection's reader itself, with no task: a request is read,
//! handled and answered without waking another thread, and the answers to requests that
//! arrived together leave in one write. A handler that waits becomes a task where it first
//! waited. On a multi-threaded runtime, a handler that computes for longer than 1 ms before it
//! first waits, four requests in a row, runs as a task from the start from then on, so other
//! threads run it while the reader goes on; for handlers that only compute a little,
//! `#[tokio::main(flavor = "current_thread")]` is a little faster still (no threads to
//! coordinate).
//!
//! The runtime makes mimalloc the plugin's global allocator (the default feature `mimalloc`):
//! a request's strings and frames are allocated and freed in about half the instructions of
//! the system allocator. A plugin that wants its own `#[global_allocator]` depends on
//! `plugd-runtime` with `default-features = false`.
//!
//! Run it under `plugd serve` with a `plugin.toml` beside it whose `command` names the binary; run
//! on its own it exits with an error saying it must be started by plugd.

/// See the crate documentation: the allocator every plugin linking the runtime gets by default.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod answer;
mod connection;
mod hook;
mod kv;
mod plugin;
mod request;
mod response;
mod settings;
mod stream;

pub use hook::{HookEvent, HookMode, HookReply, ServiceEvent};
pub use kv::{Host, HostError, Kv, KvEntry};
pub use plugd_protocol as protocol;
pub use plugin::{Error, Plugin};
pub use request::Request;
pub use response::{BodyWriter, HttpError, IntoResponse, Json, Response, SseWriter};
pub use settings::Settings;
pub use stream::{BodyError, BodyStream, SseEvent, StreamClosed, WebSocket, WsMessage};

/// Installs a `tracing` subscriber that writes plain lines to stderr (the supervisor adds the
/// time and the plugin's name). Filtered by `RUST_LOG`, `info` by default. Does nothing when a
/// subscriber is already installed. [`Plugin::run`] calls it for you.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

/// The README's plugin example is compiled as a doctest so it cannot drift from the API.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
