//! A plugin's settings as admins read and change them (`/admin/plugins/{name}/settings`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Where a setting's effective value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// An admin set it.
    Set,
    /// Nobody set it; the manifest's default applies.
    Default,
    /// Neither set nor defaulted: the plugin does not receive it.
    Unset,
}

/// One declared setting: its schema and its value. A secret's value is never shown, only
/// whether it is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Setting {
    /// Its name.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean`, `enum`, `list`, `duration` or `size`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What it means.
    pub description: String,
    /// Whether the plugin cannot start without it.
    pub required: bool,
    /// Whether it is a secret (encrypted at rest, never shown).
    pub secret: bool,
    /// Whether a change reloads the plugin instead of being pushed to it live.
    pub restart: bool,
    /// Where the value comes from.
    pub source: Source,
    /// The effective value in normal form (durations in milliseconds, sizes in bytes); never
    /// for a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// The manifest's default, in normal form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// The allowed values of an enum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// The smallest allowed value, in normal form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<serde_json::Value>,
    /// The largest allowed value, in normal form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<serde_json::Value>,
    /// A regular expression a string must match whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// The longest string (characters) or list (items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// When an admin last set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_ms: Option<i64>,
    /// Which token set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

/// A plugin's settings. The `ETag` of the answer is `generation`, for `If-Match`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Settings {
    /// The plugin.
    pub plugin: String,
    /// Bumped by every change of its settings.
    pub generation: i64,
    /// Every declared setting, by name.
    pub settings: Vec<Setting>,
    /// Required settings with no value: the plugin cannot start until they are set.
    pub missing: Vec<String>,
}

/// New values by setting name (`PUT` replaces every set value; `PATCH` changes the named ones,
/// and `null` returns one to its default). Durations may be words (`"30s"`) or milliseconds,
/// sizes words (`"10MiB"`) or bytes.
pub type SettingsChange = BTreeMap<String, serde_json::Value>;

/// What a change of settings did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SettingsAnswer {
    /// Whether anything changed.
    pub changed: bool,
    /// The settings' generation after the change.
    pub generation: i64,
    /// The names of the settings whose value changed.
    pub keys: Vec<String>,
    /// How the running plugin takes the change: `live` (pushed to it and accepted on this
    /// worker), `reload` (a setting marked `restart` changed: a new instance starts), `stored`
    /// (no instance took them here; it gets them when it runs), or `unchanged` (the values
    /// already were these).
    pub applied: String,
    /// What happened, in words.
    pub detail: String,
}

/// One value the plugin's schema refused, and why (in a 400's `fields`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldProblem {
    /// The setting's name.
    pub key: String,
    /// What is wrong with the value.
    pub problem: String,
}
