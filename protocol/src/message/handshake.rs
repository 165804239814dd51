//! The handshake: the first message on every connection, sent by the plugin.
//!
//! The plugin proves it is the child the supervisor started (token and epoch from its environment)
//! and declares what it offers. The supervisor answers with a [`Welcome`] or refuses with an error
//! (`HANDSHAKE_REFUSED` for a version mismatch, `UNAUTHORIZED` for a wrong token or epoch) and
//! closes the connection.

use super::control::Empty;
use super::settings::SettingsMap;
use super::{is_false, is_zero, Method};
use crate::version::ProtocolVersion;
use serde::{Deserialize, Serialize};

/// `handshake`: plugin → supervisor, exactly once, before anything else.
#[derive(Debug)]
pub struct Handshake;

impl Method for Handshake {
    const NAME: &'static str = "handshake";
    type Params = Hello;
    type Result = Welcome;
}

/// What the plugin says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the plugin speaks.
    pub protocol: ProtocolVersion,
    /// The plugin's name; must equal the name in its manifest.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// The instance epoch from `PLUGD_EPOCH`, new at every start.
    pub epoch: u64,
    /// The one-time token from `PLUGD_TOKEN`.
    pub token: String,
    /// The largest frame body the plugin accepts.
    pub max_frame: u32,
    /// HTTP routes the plugin serves.
    #[serde(default)]
    pub routes: Vec<RouteDecl>,
    /// Hooks the plugin handles.
    #[serde(default)]
    pub hooks: Vec<HookDecl>,
    /// Named services the plugin provides to other plugins.
    #[serde(default)]
    pub services: Vec<String>,
    /// Permissions the plugin defines.
    #[serde(default)]
    pub permissions: Vec<PermissionDecl>,
    /// 1.3: how many lanes (extra connections for plain HTTP requests, see [`Lane`]) the
    /// plugin can open; 0, the default, means none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lanes: u32,
}

/// One HTTP route: a method and a path pattern such as `/items/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDecl {
    /// HTTP method in upper case, such as `GET`.
    pub method: String,
    /// Path pattern relative to the plugin's mount point; `{name}` captures one segment and
    /// `{*name}` the rest of the path.
    pub path: String,
    /// A permission the caller must hold, if any.
    #[serde(default)]
    pub permission: Option<String>,
    /// 1.2: the route streams: its request body comes in chunks, and it may answer with a
    /// streamed body.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// 1.2: the route takes WebSocket upgrades (a `GET` route).
    #[serde(default, skip_serializing_if = "is_false")]
    pub websocket: bool,
    /// 1.2: the largest request body the route takes, in bytes; a streaming route without one
    /// takes any size the plugin's limits allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
}

/// How the answers of several plugins to one hook are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    /// Every handler is called; all results are returned.
    Collect,
    /// Handlers run in priority order, each transforming the previous output.
    Filter,
    /// Handlers run in priority order; the first non-empty answer wins.
    First,
    /// Any handler may reject.
    Veto,
}

/// One hook the plugin handles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookDecl {
    /// The hook's name, such as `document.before_save`.
    pub name: String,
    /// How answers are combined.
    pub mode: HookMode,
    /// Lower runs first.
    pub priority: i32,
    /// For `veto` hooks: whether a failing handler (error, timeout, plugin down) rejects
    /// (fail-closed) rather than being ignored (fail-open, the default). Omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fail_closed: bool,
}

/// One permission the plugin defines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionDecl {
    /// The permission key, such as `notes.write`.
    pub key: String,
    /// What holding it allows.
    pub description: String,
}

/// The supervisor's acceptance of a handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the supervisor speaks.
    pub protocol: ProtocolVersion,
    /// The supervisor's name and version, such as `plugd 0.1.0`.
    pub supervisor: String,
    /// The largest frame body either side may send from now on (the smaller of both limits).
    pub max_frame: u32,
    /// The plugin's effective settings (protocol 1.1; omitted when it has none).
    #[serde(default, skip_serializing_if = "SettingsMap::is_empty")]
    pub settings: SettingsMap,
    /// 1.2: each side's initial credit per stream and direction, in bytes; omitted means
    /// [`crate::stream::DEFAULT_WINDOW`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_window: Option<u32>,
    /// 1.3: how many lanes the plugin is to open now, at most the `lanes` of its hello;
    /// omitted means none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lanes: u32,
}

/// `lane` (1.3): plugin → supervisor, the first and only request of the plugin on a lane.
///
/// A lane is an extra connection to the same socket, opened after the handshake when the
/// welcome asks for lanes. On a lane plugd sends only `http` requests for routes that do not
/// stream, and `cancel` notifications for them; the plugin answers each on the lane it came
/// on. Everything else (pings, hooks, services, settings, shutdown, the plugin's own calls)
/// stays on the first connection. plugd serves HTTP on several threads, each with its own lane
/// to each plugin, so a request and its answer never cross to another thread.
#[derive(Debug)]
pub struct Lane;

impl Method for Lane {
    const NAME: &'static str = "lane";
    type Params = LaneHello;
    type Result = Empty;
}

/// Who opens a lane: the same token and epoch as the handshake, and the lane's number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneHello {
    /// The instance epoch from `PLUGD_EPOCH`.
    pub epoch: u64,
    /// The one-time token from `PLUGD_TOKEN`.
    pub token: String,
    /// The lane's number, from 1 to the welcome's `lanes`.
    pub lane: u32,
}
