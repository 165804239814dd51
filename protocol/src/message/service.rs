//! Services: named functions a plugin provides to other plugins (`markdown.render`). A plugin
//! calls one through the supervisor, which forwards the call to the provider.

use super::Method;
use serde::{Deserialize, Serialize};

/// `service.call`: plugin → supervisor (call a service), and supervisor → provider (serve it).
#[derive(Debug)]
pub struct ServiceCall;

/// Parameters of [`ServiceCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInput {
    /// The service's name.
    pub service: String,
    /// The argument.
    pub payload: rmpv::Value,
    /// How many hook or service calls led to this one; the supervisor refuses chains deeper
    /// than its limit, so loops between plugins end with an error.
    pub depth: u32,
}

/// The service's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceOutput {
    /// The result.
    pub value: rmpv::Value,
}

impl Method for ServiceCall {
    const NAME: &'static str = "service.call";
    type Params = ServiceInput;
    type Result = ServiceOutput;
}
