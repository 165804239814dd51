//! Delivering a plugin's settings to a running instance: a `settings` request with every
//! effective value and the names of the changed ones. The plugin takes them (empty answer) or
//! refuses (an error whose message says why), and then keeps its old ones. After a change is
//! taken, the `plugd.plugin.settings_changed` hook fires.
//!
//! Both paths that change a running instance's settings go through [`apply`], holding the
//! instance's settings lock: an admin's change on this worker (offered before it is stored, so
//! a refusal reaches the admin) and the reconcile loop following the store (a change made on
//! another worker, or one this worker could not deliver at once).

use super::hooks;
use super::instance::Instance;
use super::reconcile::Registry;
use crate::ipc::CallError;
use plugd_protocol::message::settings::{Settings, SettingsMap, SettingsParams};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a plugin has to take or refuse new settings.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The settings an instance runs with, and the store generation they came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The store's settings generation these values are from (`-1`: unknown, read again).
    pub generation: i64,
    /// The effective values the instance has.
    pub values: BTreeMap<String, Value>,
}

/// Effective values as the protocol carries them.
pub fn to_wire(values: &BTreeMap<String, Value>) -> SettingsMap {
    values
        .iter()
        .map(|(k, v)| {
            let v = rmpv::ext::to_value(v).unwrap_or(rmpv::Value::Nil);
            (k.clone(), v)
        })
        .collect()
}

/// The names of the settings whose value differs between `old` and `new`.
pub fn changed_keys(old: &BTreeMap<String, Value>, new: &BTreeMap<String, Value>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .collect();
    keys.into_iter().cloned().collect()
}

/// Why a running instance did not take new settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The plugin answered with an error: it keeps its old settings.
    #[error("the plugin refused the new settings: {0}")]
    Refused(String),
    /// The plugin could not be asked (gone, silent, or an old runtime without settings).
    #[error("the new settings could not be delivered: {0}")]
    Undelivered(String),
}

/// Offers `values` (generation `generation`) to `instance`, which holds `applied` locked; on
/// success records them and fires `plugd.plugin.settings_changed`. Answers the changed names
/// (none: nothing to deliver, only the generation is recorded).
pub async fn apply(
    registry: &Registry,
    instance: &Instance,
    applied: &mut Applied,
    values: BTreeMap<String, Value>,
    generation: i64,
) -> Result<Vec<String>, ApplyError> {
    let changed = changed_keys(&applied.values, &values);
    if changed.is_empty() {
        applied.generation = generation;
        return Ok(changed);
    }
    let params = SettingsParams {
        values: to_wire(&values),
        changed: changed.clone(),
    };
    match instance.conn.call::<Settings>(&params, APPLY_TIMEOUT).await {
        Ok(_) => {}
        Err(CallError::Remote(e)) => return Err(ApplyError::Refused(e.message)),
        Err(e) => return Err(ApplyError::Undelivered(e.to_string())),
    }
    *applied = Applied { generation, values };
    let name = instance.manifest.name.clone();
    tracing::info!(plugin = %name, keys = %changed.join(", "), generation, "settings applied");
    let payload = serde_json::json!({ "plugin": name, "keys": changed, "generation": generation });
    hooks::fire_lifecycle(registry, "plugd.plugin.settings_changed", payload);
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_keys_name_set_changed_and_removed_values_once() {
        let old = BTreeMap::from([
            ("a".to_owned(), json!(1)),
            ("b".to_owned(), json!("x")),
            ("c".to_owned(), json!(true)),
        ]);
        let new = BTreeMap::from([
            ("a".to_owned(), json!(1)),
            ("b".to_owned(), json!("y")),
            ("d".to_owned(), json!([])),
        ]);
        assert_eq!(changed_keys(&old, &new), ["b", "c", "d"]);
        assert!(changed_keys(&old, &old).is_empty());
        let wire = to_wire(&new);
        assert_eq!(wire["b"], rmpv::Value::from("y"));
        assert_eq!(wire["d"], rmpv::Value::Array(vec![]));
    }
}
