//! Hooks: the supervisor asks a plugin to handle a hook fired by a host application (or by
//! another plugin). How the answers of several plugins combine is the hook's mode, declared by
//! each handler in the handshake ([`crate::message::handshake::HookDecl`]).

use super::Method;
use serde::{Deserialize, Serialize};

/// `hook.call`: supervisor → plugin, one handler invocation.
#[derive(Debug)]
pub struct HookCall;

/// Parameters of [`HookCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookInput {
    /// The hook's name.
    pub hook: String,
    /// The payload: the host's value, or for `filter` hooks the previous handler's output.
    pub payload: rmpv::Value,
    /// How many hook or service calls led to this one (loops end at the supervisor's limit).
    pub depth: u32,
    /// When the supervisor stops waiting, in milliseconds since the Unix epoch.
    pub deadline_unix_ms: u64,
}

/// A handler's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookOutput {
    /// The handler's value: its result (`collect`), the transformed payload (`filter`), the
    /// answer or nil to pass (`first`); ignored for `veto`.
    #[serde(default)]
    pub value: Option<rmpv::Value>,
    /// For `veto` hooks: the reason to reject, or nil to allow.
    #[serde(default)]
    pub reject: Option<String>,
}

impl Method for HookCall {
    const NAME: &'static str = "hook.call";
    type Params = HookInput;
    type Result = HookOutput;
}

/// `hook.fire`: plugin → supervisor, fires a hook at every plugin that handles it (the caller
/// included) and answers the combined result, as `POST /hooks/{hook}` would.
#[derive(Debug)]
pub struct HookFire;

/// Parameters of [`HookFire`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookFireParams {
    /// The hook's name.
    pub hook: String,
    /// The payload.
    pub payload: rmpv::Value,
    /// The depth of the call the plugin is handling (0 for an HTTP request).
    pub depth: u32,
}

impl Method for HookFire {
    const NAME: &'static str = "hook.fire";
    type Params = HookFireParams;
    type Result = rmpv::Value;
}
