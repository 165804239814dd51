//! The audit log, the workers, the totals and the caller's identity.

use crate::plugins::WorkerPluginState;
use crate::Role;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// One audit-log entry: who changed what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Increasing id (the paging cursor).
    pub id: i64,
    /// When.
    pub at_ms: i64,
    /// The plugin concerned, if any.
    pub plugin: Option<String>,
    /// Who: a token's name, or `plugd` for the supervisor itself.
    pub actor: String,
    /// What, such as `enable` or `install`.
    pub action: String,
    /// Details.
    pub detail: String,
}

/// The query of `GET /admin/events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this plugin's entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Only entries older than this id (the previous page's `next_before`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    /// At most this many (1 to 500, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// `GET /admin/events`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Events {
    /// The entries.
    pub events: Vec<AuditEvent>,
    /// The cursor of the next page, when there may be one.
    pub next_before: Option<i64>,
}

/// A worker's host, as it reports it with its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    /// Logical CPUs.
    pub cpus: u32,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Memory in use, in bytes.
    pub memory_used: u64,
    /// Memory in all, in bytes.
    pub memory_total: u64,
}

/// One worker as it last reported itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerInfo {
    /// Random id chosen at start.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: i64,
    /// When it started.
    pub started_ms: i64,
    /// Its last heartbeat.
    pub seen_ms: i64,
    /// Whether it is the worker that answered.
    pub this: bool,
    /// Each plugin's state on it, by name.
    pub plugins: BTreeMap<String, WorkerPluginState>,
    /// Its host's CPUs, load and memory (absent from a worker that did not report them).
    pub system: Option<HostInfo>,
}

/// `GET /admin/workers`: every worker that heartbeated recently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Workers {
    /// Oldest first.
    pub workers: Vec<WorkerInfo>,
}

/// `GET /admin/stats`: totals over every plugin, on this worker, and of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// Registered plugins.
    pub plugins: u64,
    /// Of which enabled.
    pub enabled: u64,
    /// Of which disabled.
    pub disabled: u64,
    /// Registered but gone from disk.
    pub missing: u64,
    /// Ready on this worker.
    pub ready: u64,
    /// Failed on this worker.
    pub failed: u64,
    /// Routes served by ready plugins on this worker.
    pub routes: u64,
    /// Hook handlers declared.
    pub hooks: u64,
    /// Live workers in the cluster.
    pub workers: u64,
    /// Plugins ready summed over every live worker.
    pub ready_everywhere: u64,
}

/// `GET /admin/whoami`: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The token's name (as the audit log shows it).
    pub name: String,
    /// What it may do.
    pub role: Role,
}
