//! plugd, the plugin supervisor, as a library: the `plugd` binary is a thin wrapper around
//! [`cli::main`], and tests drive either this library or the real binary.
//!
//! Map of the modules, in the order a request meets them:
//! - [`admin`]: the admin REST API under `/admin`, with bearer tokens and roles.
//! - [`bundle`]: unpacking plugin bundles (zip, tar.gz) with suspicion.
//! - [`cluster`]: heartbeats, and following other workers' changes through PostgreSQL.
//! - [`settings`]: one settings tree from defaults, the TOML file, `PLUGD_*` variables and flags.
//! - [`manifest`]: discovery and validation of `plugins/*/plugin.toml`.
//! - [`process`]: the one helper that spawns plugin processes.
//! - [`hooks`]: `POST /hooks/{hook}`: fires a hook at every plugin that handles it.
//! - [`ipc`]: one multiplexed protocol connection per plugin.
//! - [`kv`]: answers plugins' calls to the supervisor (the key-value store).
//! - [`limits`]: resource limits per plugin: rlimits, cgroups, usage sampling.
//! - [`logs`]: each plugin's recent output, kept across restarts.
//! - [`plugin`]: starting and stopping one plugin instance, and each plugin's visible state.
//! - [`policy`]: the restart policy (backoff, crash loops) and health-check settings.
//! - [`reconcile`]: the one loop that owns every plugin's state machine.
//! - [`router`]: each plugin's route table, built from its handshake.
//! - [`proxy`]: the HTTP handler that forwards `/plugins/{name}/…` to a plugin.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`server`]: binds, serves and shuts down gracefully.
//! - [`store`]: the state store (SQLite or PostgreSQL): registrations, audit log, migrations.
//! - [`watcher`]: turns file changes in the plugins directory into debounced rescans.

pub mod admin;
pub mod bundle;
pub mod cli;
pub mod cluster;
pub mod hooks;
pub mod ipc;
pub mod kv;
pub mod limits;
pub mod logs;
pub mod manifest;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod process;
pub mod proxy;
pub mod reconcile;
pub mod router;
pub mod server;
pub mod settings;
pub mod store;
pub mod watcher;
