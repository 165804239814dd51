//! Hook handlers: what a plugin answers when a host application (or another plugin) fires a
//! hook it declared.

use plugd_protocol::message::hook::HookOutput;
use serde_json::Value;

pub use plugd_protocol::message::handshake::HookMode;

/// One invocation of a hook handler.
#[derive(Debug, Clone)]
pub struct HookEvent {
    /// The hook's name.
    pub hook: String,
    /// The payload: the host's value, or for `filter` hooks the previous handler's output.
    pub payload: Value,
    /// How many hook or service calls led here.
    pub depth: u32,
    /// The supervisor, for calls made while handling this hook.
    pub host: crate::kv::Host,
}

/// One call of a service this plugin provides.
#[derive(Debug, Clone)]
pub struct ServiceEvent {
    /// The service's name.
    pub service: String,
    /// The argument.
    pub payload: Value,
    /// How many hook or service calls led here.
    pub depth: u32,
    /// The supervisor, for calls made while serving this call.
    pub host: crate::kv::Host,
}

/// A handler's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum HookReply {
    /// A value: the result (`collect`), the transformed payload (`filter`), the answer (`first`).
    Value(Value),
    /// Nothing to say: for `first`, let the next handler answer; for `filter`, pass the payload
    /// on unchanged; for `veto`, allow.
    Pass,
    /// For `veto` hooks: reject, with the reason the host will see.
    Reject(String),
}

impl From<Value> for HookReply {
    fn from(v: Value) -> Self {
        HookReply::Value(v)
    }
}

impl HookReply {
    pub(crate) fn into_wire(self) -> HookOutput {
        match self {
            HookReply::Value(v) => HookOutput {
                value: rmpv::ext::to_value(&v).ok(),
                reject: None,
            },
            HookReply::Pass => HookOutput {
                value: None,
                reject: None,
            },
            HookReply::Reject(reason) => HookOutput {
                value: None,
                reject: Some(reason),
            },
        }
    }
}
