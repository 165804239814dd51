//! The admin API of plugd as Rust types: every request and response body under `/admin`, the
//! error body, and the events of the live stream. The server (`plugd serve`), the command line
//! (`plugd plugins`, `plugd enable`, …) and the OpenAPI document are all built from these types,
//! so they cannot drift apart.
//!
//! Field names are the JSON names; times are Unix milliseconds (`*_ms`) unless a name says
//! otherwise.

pub mod cluster;
pub mod plugins;
pub mod releases;
pub mod settings;
pub mod stream;

pub use cluster::{AuditEvent, Events, EventsQuery, HostInfo, Stats, WhoAmI, WorkerInfo, Workers};
pub use plugins::{
    Accepted, Convergence, Hook, Installed, Limits, LogLine, Logs, LogsQuery, Permission,
    Permissions, Plugin, PluginList, PluginRecord, Route, Standby, State, ToggleAnswer,
    ToggleQuery, Uninstalled, Usage, WorkerPluginState,
};
pub use releases::{
    BuildReport, BundleQuery, BundleVersion, CanaryFigures, CanaryInfo, CanaryReport,
    CanaryThresholds, InstallQuery, Released, RollbackQuery, Versions,
};
pub use settings::{FieldProblem, Setting, Settings, SettingsAnswer, SettingsChange, Source};
pub use stream::{StreamEvent, StreamKind, StreamQuery};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error answer: what went wrong in a few stable words, and the details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in a few stable words (`unknown plugin`, `conflict`, …).
    pub error: String,
    /// What exactly, and what to do about it.
    pub detail: String,
    /// On a conflict (409 of enable or disable): the plugin's record as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Box<PluginRecord>>,
    /// On a refused change of settings (400): every value the schema refused, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldProblem>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads only.
    Viewer,
    /// Fires hooks (host applications); no access to the admin API.
    Host,
}

impl Role {
    /// The role's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Host => "host",
        }
    }
}
