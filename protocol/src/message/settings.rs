//! Settings (protocol 1.1): the plugin's effective settings arrive in the handshake's
//! [`Welcome`](super::handshake::Welcome); a later change arrives as a `settings` request, which
//! the plugin answers with an empty result to take the new values, or with an error to keep the
//! old ones (the error's message reaches the admin who made the change).

use super::control::Empty;
use super::Method;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A plugin's settings by name: strings, integers (durations in milliseconds, sizes in bytes),
/// floats, booleans and lists of strings.
pub type SettingsMap = BTreeMap<String, rmpv::Value>;

/// `settings`: supervisor → plugin, when an admin changed the plugin's settings.
#[derive(Debug)]
pub struct Settings;

/// Parameters of [`Settings`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsParams {
    /// Every effective setting after the change (not only the changed ones).
    pub values: SettingsMap,
    /// The names of the settings whose value changed.
    pub changed: Vec<String>,
}

impl Method for Settings {
    const NAME: &'static str = "settings";
    type Params = SettingsParams;
    type Result = Empty;
}
