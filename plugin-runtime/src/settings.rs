//! A plugin's settings, as an admin set them (or their defaults from `plugin.toml`).

use plugd_protocol::message::settings::SettingsMap;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::sync::{Arc, RwLock};

/// The plugin's effective settings, by name: strings, numbers, booleans and lists of strings;
/// durations arrive in milliseconds and sizes in bytes. Cheap to clone.
///
/// ```no_run
/// # async fn example(host: plugd_runtime::Host) -> Result<(), serde_json::Error> {
/// #[derive(serde::Deserialize)]
/// struct Config {
///     greeting: String,
///     timeout: u64, // a `duration` setting, in milliseconds
/// }
/// let config: Config = host.settings().parse()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings(Arc<Map<String, Value>>);

impl Settings {
    pub(crate) fn from_wire(values: &SettingsMap) -> Settings {
        Settings(Arc::new(
            values
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        rmpv::ext::from_value(v.clone()).unwrap_or(Value::Null),
                    )
                })
                .collect(),
        ))
    }

    /// Every setting deserialised into the author's own type (use `#[serde(default)]` for
    /// settings that may be unset).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(Value::Object((*self.0).clone()))
    }

    /// One setting as `T`; `None` when it is unset or not a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.0.get(key).and_then(|v| T::deserialize(v).ok())
    }

    /// Every setting as JSON.
    pub fn values(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// The settings handlers read: replaced whole when the supervisor delivers new ones.
#[derive(Debug, Default)]
pub(crate) struct Current(RwLock<Settings>);

impl Current {
    pub(crate) fn get(&self) -> Settings {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, settings: Settings) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = settings;
    }
}
