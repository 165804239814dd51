//! Releases: a plugin's kept versions, bundle downloads, rollback and canaries
//! (`/admin/plugins/{name}/versions`, `…/bundle`, `…/rollback`, `…/promote`, `…/canary`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// How many installed versions of each plugin the store keeps unless configured otherwise.
pub const DEFAULT_KEEP_VERSIONS: u32 = 5;

/// A canary: a second version beside the stable one, serving a share of its HTTP requests on
/// every worker until it is promoted or rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CanaryInfo {
    /// The canary's version, from its manifest.
    pub version: String,
    /// sha256 of its bundle, hex.
    pub sha256: String,
    /// The share of the plugin's HTTP requests it serves, in percent (1–99).
    pub percent: u8,
    /// When it started.
    pub started_ms: i64,
}

/// The query of `POST /admin/plugins/install`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstallQuery {
    /// Start the bundle as a canary of the installed plugin, serving this percentage (1–99)
    /// of its HTTP requests, instead of replacing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 99)]
    pub canary: Option<u8>,
}

/// One kept version of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BundleVersion {
    /// The version its manifest names.
    pub version: String,
    /// sha256 of the bundle, hex: the `ETag` of its download.
    pub sha256: String,
    /// The bundle's size in bytes.
    pub size: u64,
    /// The token that installed it.
    pub installed_by: String,
    /// When it was installed.
    pub installed_ms: i64,
    /// Whether it is the stable version every worker should run.
    pub current: bool,
    /// Whether it runs as the canary.
    pub canary: bool,
    /// The live workers running it now (as stable or canary), by id.
    pub workers: Vec<String>,
}

/// `GET /admin/plugins/{name}/versions`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Versions {
    /// The plugin.
    pub plugin: String,
    /// The kept versions, newest first.
    pub versions: Vec<BundleVersion>,
    /// How many versions are kept per plugin; older ones are pruned.
    pub keep: u32,
}

/// Which kept version: by its version string or by (a prefix of at least 8 digits of) its
/// sha256. When several kept bundles carry the same version string, the newest is meant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BundleQuery {
    /// The version (or sha256 prefix) to download; the stable one when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The query of `POST /admin/plugins/{name}/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RollbackQuery {
    /// The version (or sha256 prefix) to go back to; by default the one installed before the
    /// stable one. During a canary, omitted: the canary ends and the stable version stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// The answer of rollback and promote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Released {
    /// The plugin.
    pub plugin: String,
    /// The stable version before.
    pub from: String,
    /// The stable version now, which every worker converges to.
    pub to: String,
    /// sha256 of its bundle.
    pub sha256: String,
    /// The canary that ended, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_ended: Option<String>,
    /// What happened, in words.
    pub detail: String,
}

/// How one side of a canary fares on this worker over the sliding window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CanaryFigures {
    /// HTTP requests answered in the window.
    pub requests: u64,
    /// Of them, answered with a 5xx status.
    pub errors: u64,
    /// `errors / requests` (0 without requests).
    pub error_ratio: f64,
    /// The 99th percentile of the time to answer, in milliseconds (none without requests).
    pub p99_ms: Option<f64>,
}

/// `GET /admin/plugins/{name}/canary`: the canary and how both versions fare on this worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CanaryReport {
    /// The plugin.
    pub plugin: String,
    /// The canary as the store has it.
    pub canary: CanaryInfo,
    /// The stable version.
    pub stable_version: String,
    /// Whether the canary serves on this worker (its instance is ready).
    pub serving: bool,
    /// The length of the sliding window, in seconds.
    pub window_s: f64,
    /// The stable version's figures over the window.
    pub stable: CanaryFigures,
    /// The canary's figures over the window.
    pub candidate: CanaryFigures,
    /// The thresholds past which plugd rolls the canary back on its own.
    pub thresholds: CanaryThresholds,
    /// Each live worker's canary, by id: sha256 of the canary bundle serving there, if any.
    #[serde(default)]
    pub workers: BTreeMap<String, Option<String>>,
}

/// When a canary is rolled back automatically: its 5xx ratio is above `error_factor` × the
/// stable one's and above `min_error_ratio`, or its p99 is above `latency_factor` × the stable
/// one's; judged once the canary has answered `min_requests` requests in the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CanaryThresholds {
    /// Requests the canary must have answered in the window before it is judged.
    pub min_requests: u64,
    /// Factor over the stable 5xx ratio.
    pub error_factor: f64,
    /// Floor of the canary's 5xx ratio.
    pub min_error_ratio: f64,
    /// Factor over the stable p99.
    pub latency_factor: f64,
}

/// How a plugin's last build (the `build` command of its manifest) went on this worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildReport {
    /// The command, as the manifest names it.
    pub command: Vec<String>,
    /// Whether it succeeded (the plugin was then started from its output).
    pub ok: bool,
    /// How it ended: `exited with code 0`, `did not finish within 600s; killed`, …
    pub status: String,
    /// When it started.
    pub started_ms: u64,
    /// How long it ran.
    pub duration_ms: u64,
    /// Its last lines of output (at most 20).
    pub output: Vec<String>,
}
