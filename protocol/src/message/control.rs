//! Control messages: liveness (`ping`), graceful shutdown (`shutdown`) and cancellation (`cancel`).

use super::{Method, NotificationKind};
use serde::{Deserialize, Serialize};

/// An empty parameter or result: encoded as an empty map (`0x80`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `ping`: either side may send it; the peer answers at once with an empty result.
#[derive(Debug)]
pub struct Ping;

impl Method for Ping {
    const NAME: &'static str = "ping";
    type Params = Empty;
    type Result = Empty;
}

/// `shutdown`: the supervisor asks the plugin to stop taking requests, finish those in flight
/// within `grace_ms`, answer, and exit.
#[derive(Debug)]
pub struct Shutdown;

/// Parameters of [`Shutdown`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownParams {
    /// How long the supervisor waits before it kills the process, in milliseconds.
    pub grace_ms: u64,
}

impl Method for Shutdown {
    const NAME: &'static str = "shutdown";
    type Params = ShutdownParams;
    type Result = Empty;
}

/// `cancel`: the sender no longer wants the answer to its request `id`; the receiver should stop
/// working on it. A response may still arrive and is then ignored.
#[derive(Debug)]
pub struct Cancel;

/// Parameters of [`Cancel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelParams {
    /// The id of the sender's request to cancel.
    pub id: u64,
}

impl NotificationKind for Cancel {
    const NAME: &'static str = "cancel";
    type Params = CancelParams;
}
