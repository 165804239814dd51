//! plugd, the plugin supervisor, as a library: the `plugd` binary is a thin wrapper around
//! [`cli::main`], and tests drive either this library or the real binary.
//!
//! The folders are layers, and imports point one way, down (a test checks it):
//! - [`cli`]: the command line.
//! - [`app`]: builds the layers, serves, shuts down in order.
//! - [`http`]: the HTTP edge (plugin routes, hooks, the admin API, metrics, health, auth).
//! - [`supervise`]: the core: the reconcile loop that owns every plugin's state, instances,
//!   the restart policy, route tables, the watcher, the cluster feed, the hook dispatcher.
//! - [`ipc`]: the protocol connection to each plugin: handshake, calls both ways.
//! - [`os`] and [`store`]: processes, limits and output; the state store.
//! - [`manifest`], [`settings`], [`error`], [`feed`]: what plugins and operators write down,
//!   the one error type for failed starts, and the live feed of events for `/admin/stream`.
//!
//! Beside [`app`], [`client`] is the other side of the admin API: the command line's verbs
//! (`plugd plugins`, `plugd enable`, …) as an HTTP client of a running plugd.

pub mod app;
pub mod cli;
pub mod client;
pub mod error;
pub mod feed;
pub mod http;
pub mod ipc;
pub mod manifest;
pub mod os;
pub mod settings;
pub mod store;
pub mod supervise;
