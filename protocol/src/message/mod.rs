//! Typed messages, one module per family. Each method names its wire name and its parameter and
//! result types, so both peers encode and decode through the same definitions.

pub mod control;
pub mod handshake;
pub mod hook;
pub mod http;
pub mod kv;
pub mod service;
pub mod settings;
pub mod stream;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// For `skip_serializing_if`: a `false` flag is left out, so older peers see what they know.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// For `skip_serializing_if`: a zero count is left out, so older peers see what they know.
pub(crate) fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A request/response method.
pub trait Method {
    /// The method name on the wire.
    const NAME: &'static str;
    /// The request's parameters.
    type Params: Serialize + DeserializeOwned;
    /// The successful response's result.
    type Result: Serialize + DeserializeOwned;

    /// Reads the parameters in place when they have their usual shape, faster than `serde`;
    /// `None` leaves them to `serde`, which accepts every form and names what is wrong. Only
    /// the hot methods (`http`) read in place.
    fn read_params(_raw: &bytes::Bytes) -> Option<Self::Params> {
        None
    }
}

/// A one-way notification.
pub trait NotificationKind {
    /// The notification name on the wire.
    const NAME: &'static str;
    /// Its parameters.
    type Params: Serialize + DeserializeOwned;
}
