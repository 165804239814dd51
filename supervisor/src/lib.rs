//! plugd, the plugin supervisor, as a library: the `plugd` binary is a thin wrapper around
//! [`cli::main`], and tests drive either this library or the real binary.
//!
//! Map of the modules, in the order a request meets them:
//! - [`settings`]: one settings tree from defaults, the TOML file, `PLUGD_*` variables and flags.
//! - [`manifest`]: discovery and validation of `plugins/*/plugin.toml`.
//! - [`process`]: the one helper that spawns plugin processes.
//! - [`ipc`]: one multiplexed protocol connection per plugin.
//! - [`plugin`]: starting and stopping plugins, and each plugin's current state.
//! - [`router`]: each plugin's route table, built from its handshake.
//! - [`proxy`]: the HTTP handler that forwards `/plugins/{name}/…` to a plugin.
//! - [`server`]: binds, serves and shuts down gracefully.

pub mod cli;
pub mod ipc;
pub mod manifest;
pub mod plugin;
pub mod process;
pub mod proxy;
pub mod router;
pub mod server;
pub mod settings;
