//! `/admin/plugins…`: each plugin's record, live state, actions, bundles and logs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// A plugin's state as admins see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// An admin disabled it: not running, on purpose.
    Disabled,
    /// Its process is being started.
    Starting,
    /// Its process runs; plugd waits for the handshake.
    Handshaking,
    /// Serving requests.
    Ready,
    /// Finishing requests in flight, taking no new ones.
    Draining,
    /// Stopped on purpose.
    Stopped,
    /// Exited unexpectedly; waiting to be restarted.
    Backoff,
    /// Gave up (cannot run, or crash loop) until an admin acts.
    Failed,
    /// Registered, but not known to this worker (its files are gone).
    Missing,
    /// Not reported by that worker at all.
    Absent,
}

impl State {
    /// The state's name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            State::Disabled => "disabled",
            State::Starting => "starting",
            State::Handshaking => "handshaking",
            State::Ready => "ready",
            State::Draining => "draining",
            State::Stopped => "stopped",
            State::Backoff => "backoff",
            State::Failed => "failed",
            State::Missing => "missing",
            State::Absent => "absent",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A plugin as the store registers it: the desired state every worker converges to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PluginRecord {
    /// Unique name.
    pub name: String,
    /// Version from its manifest.
    pub version: String,
    /// Description from its manifest.
    pub description: String,
    /// Author from its manifest.
    pub author: String,
    /// Whether an admin wants it running.
    pub enabled: bool,
    /// Registered but no longer found on disk.
    pub missing: bool,
    /// Bumped by every change of its desired state: the `ETag`, for `If-Match`.
    pub generation: i64,
    /// sha256 of the bundle it was installed from, if any.
    pub bundle_sha256: Option<String>,
    /// Bumped by every change of its settings: the `ETag` of its settings.
    #[serde(default)]
    pub settings_generation: i64,
    /// The canary running beside the stable version, if any.
    #[serde(default)]
    pub canary: Option<crate::releases::CanaryInfo>,
}

/// One route a plugin serves, under `/plugins/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Route {
    /// HTTP method, or `*` for any.
    pub method: String,
    /// Path pattern, such as `/items/{id}`.
    pub path: String,
}

/// One hook a plugin handles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Hook {
    /// The hook's name, such as `document.before_save`.
    pub name: String,
    /// How answers are combined: `collect`, `filter`, `first` or `veto`.
    pub mode: String,
    /// Lower runs first.
    pub priority: i32,
    /// For `veto` hooks: whether a failing handler rejects.
    #[serde(default)]
    pub fail_closed: bool,
}

/// One permission a plugin defines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Permission {
    /// The permission key, such as `notes.write`.
    pub key: String,
    /// What it allows.
    pub description: String,
    /// The plugin that defines it.
    pub plugin: String,
}

/// A plugin's limits with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// Time to answer one request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Largest request body, in bytes.
    pub max_body: u64,
    /// Hard memory limit, in bytes.
    pub memory: u64,
    /// Memory past which a warning is logged, in bytes.
    pub memory_soft: u64,
    /// CPU quota in cores, if any.
    pub cpu: Option<f64>,
    /// Total CPU time limit in seconds, if any.
    pub cpu_time_s: Option<u64>,
    /// Processes plus threads.
    pub tasks: u32,
    /// Open file descriptors.
    pub open_files: u64,
    /// Requests in flight at once.
    pub max_in_flight: u32,
    /// Streams (streamed bodies and WebSockets) open at once.
    #[serde(default)]
    pub max_streams: u32,
    /// Longest a stream may pass without data, in milliseconds.
    #[serde(default)]
    pub stream_idle_timeout_ms: u64,
    /// Credit per stream and direction, in bytes.
    #[serde(default)]
    pub stream_window: u32,
    /// Largest request body of a streaming route, in bytes, if bounded.
    #[serde(default)]
    pub max_stream_body: Option<u64>,
    /// Largest WebSocket message, in bytes.
    #[serde(default)]
    pub max_ws_message: u64,
}

/// A plugin's latest resource sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Memory charged to the plugin, in bytes.
    pub memory_bytes: u64,
    /// CPU time used so far, in seconds.
    pub cpu_seconds: f64,
    /// CPU use since the previous sample, in cores.
    pub cpu_cores: f64,
    /// Processes plus threads.
    pub tasks: u64,
    /// Open file descriptors of the main process.
    pub open_files: u64,
    /// Periods in which the CPU quota held the plugin back (cgroup only).
    pub cpu_throttled: Option<u64>,
}

/// A plugin's state on one worker, as that worker last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerPluginState {
    /// The state there.
    pub state: State,
    /// Its process there, when ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The version running there, when ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// sha256 of the bundle running there, when it was installed from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// sha256 of the canary's bundle serving there, if a canary does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_sha256: Option<String>,
}

/// What admins see of one plugin: its record and its live state on this worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Plugin {
    /// Its registration: name, version, desired state and generation (the `ETag`).
    #[serde(flatten)]
    pub record: PluginRecord,
    /// Its state on this worker.
    pub state: State,
    /// Restarts on this worker since plugd started.
    pub restarts: u32,
    /// Why it is not running, when it is not.
    pub last_error: Option<String>,
    /// Its process, when ready.
    pub pid: Option<u32>,
    /// Seconds since it became ready.
    pub uptime_s: Option<u64>,
    /// The version of the running instance (differs from `version` during an upgrade).
    pub version_running: Option<String>,
    /// The routes of the running instance.
    pub routes: Vec<Route>,
    /// The hooks it handles.
    pub hooks: Vec<Hook>,
    /// The services it provides.
    pub services: Vec<String>,
    /// The permissions it defines.
    pub permissions: Vec<Permission>,
    /// Its limits, when ready.
    pub limits: Option<Limits>,
    /// Its latest resource sample, when ready and sampled.
    pub usage: Option<Usage>,
    /// How its last build went on this worker, if its manifest names a build command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<crate::releases::BuildReport>,
    /// Its warm standby on this worker, when its manifest asks for one (`standby = true` in
    /// `[restart]`) and one runs or starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<Standby>,
    /// Its state on every live worker, by worker id (only on `GET /admin/plugins/{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<BTreeMap<String, WorkerPluginState>>,
}

/// A plugin's warm standby: a second, handshaked instance that takes over when the serving
/// one dies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Standby {
    /// `starting` or `ready`.
    pub state: State,
    /// Its process, when ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its latest resource sample, when ready and sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `GET /admin/plugins`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginList {
    /// Every registered plugin, by name.
    pub plugins: Vec<Plugin>,
}

/// The query of enable and disable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ToggleQuery {
    /// Write only if the plugin is at this generation (like `If-Match`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Wait up to this long (such as `5s`, at most 60 s) for every live worker to run the
    /// desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
}

/// Whether every live worker runs the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Convergence {
    /// Every live worker got there within the wait.
    pub converged: bool,
    /// Each live worker's state of the plugin.
    #[serde(default)]
    pub workers: BTreeMap<String, State>,
    /// The workers that did not get there.
    #[serde(default)]
    pub pending: Vec<String>,
    /// Why the workers could not be read, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer of enable and disable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ToggleAnswer {
    /// Whether the desired state changed (false: it already was so).
    pub changed: bool,
    /// The desired state now.
    pub enabled: bool,
    /// The generation now.
    pub generation: i64,
    /// What happened, in words.
    pub detail: String,
    /// With `?wait=`: whether every worker converged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence: Option<Convergence>,
}

/// The answer of reload and restart: accepted, carried out by the reconcile loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// Always true.
    pub accepted: bool,
    /// What started.
    pub detail: String,
}

/// The largest bundle `POST /admin/plugins/install` accepts, in bytes.
pub const MAX_BUNDLE: u64 = 64 * 1024 * 1024;

/// The answer of an install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Installed {
    /// The plugin's name, from its manifest.
    pub name: String,
    /// Its version.
    pub version: String,
    /// sha256 of the bundle, hex.
    pub sha256: String,
    /// Whether it replaced an installed plugin of that name.
    pub upgraded: bool,
    /// With `?canary=`: the share of requests the new version serves beside the stable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u8>,
}

/// The answer of an uninstall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Uninstalled {
    /// The plugin removed.
    pub uninstalled: String,
}

/// The query of `logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// How many of the latest lines (default 200, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 0)]
    pub lines: Option<u32>,
}

/// One line of a plugin's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// When plugd read it.
    pub at_ms: u64,
    /// The process that wrote it.
    pub pid: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text (a long line ends with a mark saying how much was cut).
    pub line: String,
}

/// `GET /admin/plugins/{name}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Logs {
    /// The plugin.
    pub plugin: String,
    /// Its latest lines on this worker, oldest first.
    pub lines: Vec<LogLine>,
    /// Lines evicted so far to keep the buffer bounded.
    pub dropped: u64,
}

/// `GET /admin/permissions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Permissions {
    /// Every permission a plugin defines, by key.
    pub permissions: Vec<Permission>,
}
