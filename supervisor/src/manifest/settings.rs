//! A plugin's declared settings (`[settings.NAME]` in `plugin.toml`): the schema, its own
//! validation, and the validation and normal form of the values admins set.
//!
//! Values travel as JSON in the admin API and the store, and as MessagePack to the plugin. Each
//! type has one normal form, which is what the plugin receives: durations in milliseconds and
//! sizes in bytes (both integers), whatever words the admin used (`"90s"`, `"10MiB"`).

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The most settings one plugin may declare.
pub const MAX_SETTINGS: usize = 64;
/// The largest value of one setting, as JSON.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// The longest `pattern` a string setting may declare.
const MAX_PATTERN: usize = 1024;

/// A plugin's settings schema, by setting name.
pub type SettingsSchema = BTreeMap<String, SettingSpec>;

/// The type of a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingType {
    /// Text; `pattern` and `max_length` bound it.
    String,
    /// A whole number; `min` and `max` bound it.
    Integer,
    /// Any number; `min` and `max` bound it.
    Number,
    /// `true` or `false`.
    Boolean,
    /// One of `values`.
    Enum,
    /// A list of strings; `max_length` bounds the number of items.
    List,
    /// A duration (`"30s"`, or milliseconds); the plugin receives milliseconds.
    Duration,
    /// A size (`"10MiB"`, or bytes); the plugin receives bytes.
    Size,
}

impl SettingType {
    /// The type's name as manifests write it.
    pub fn word(self) -> &'static str {
        match self {
            SettingType::String => "string",
            SettingType::Integer => "integer",
            SettingType::Number => "number",
            SettingType::Boolean => "boolean",
            SettingType::Enum => "enum",
            SettingType::List => "list",
            SettingType::Duration => "duration",
            SettingType::Size => "size",
        }
    }

    /// Whether `min` and `max` apply.
    fn is_ordered(self) -> bool {
        matches!(
            self,
            SettingType::Integer | SettingType::Number | SettingType::Duration | SettingType::Size
        )
    }
}

/// One declared setting.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingSpec {
    /// Its type.
    #[serde(rename = "type")]
    pub kind: SettingType,
    /// The value when none is set (never for a secret).
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// What it means, shown to admins.
    #[serde(default)]
    pub description: String,
    /// Whether the plugin cannot start without it (set, or a default).
    #[serde(default)]
    pub required: bool,
    /// Whether it is a secret: encrypted at rest, never shown.
    #[serde(default)]
    pub secret: bool,
    /// Whether a change reloads the plugin (blue/green) instead of being pushed live.
    #[serde(default)]
    pub restart: bool,
    /// The allowed values of an `enum`.
    #[serde(default)]
    pub values: Vec<String>,
    /// The smallest allowed value (integer, number, duration, size).
    #[serde(default)]
    pub min: Option<toml::Value>,
    /// The largest allowed value (integer, number, duration, size).
    #[serde(default)]
    pub max: Option<toml::Value>,
    /// A regular expression a string must match whole.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The longest string (in characters) or list (in items).
    #[serde(default)]
    pub max_length: Option<usize>,
}

fn to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A number from an ordered value in normal form.
fn as_f64(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

impl SettingSpec {
    /// `value` in its normal form, or why it is not a valid value of this setting.
    pub fn normalise(&self, value: &Value) -> Result<Value, String> {
        let bytes = serde_json::to_vec(value).map_or(usize::MAX, |b| b.len());
        if bytes > MAX_VALUE_BYTES {
            return Err(format!(
                "is {bytes} bytes as JSON; the limit is {MAX_VALUE_BYTES}"
            ));
        }
        let kind = self.kind.word();
        let wrong = || format!("must be a {kind}, not {}", describe(value));
        let normal = match (self.kind, value) {
            (SettingType::String, Value::String(s)) => {
                if let Some(max) = self.max_length.filter(|&m| s.chars().count() > m) {
                    return Err(format!("is longer than {max} characters"));
                }
                if let Some(pattern) = &self.pattern {
                    let re = whole(pattern).map_err(|e| format!("pattern: {e}"))?;
                    if !re.is_match(s) {
                        return Err(format!("does not match the pattern {pattern:?}"));
                    }
                }
                value.clone()
            }
            (SettingType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => {
                Value::Number(n.clone())
            }
            (SettingType::Number, Value::Number(n)) => Value::Number(n.clone()),
            (SettingType::Boolean, Value::Bool(_)) => value.clone(),
            (SettingType::Enum, Value::String(s)) => {
                if !self.values.contains(s) {
                    return Err(format!(
                        "must be one of {}, not {s:?}",
                        self.values
                            .iter()
                            .map(|v| format!("{v:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                value.clone()
            }
            (SettingType::List, Value::Array(items)) => {
                if items.iter().any(|i| !i.is_string()) {
                    return Err("must be a list of strings".into());
                }
                if let Some(max) = self.max_length.filter(|&m| items.len() > m) {
                    return Err(format!("has more than {max} items"));
                }
                value.clone()
            }
            (SettingType::Duration, Value::String(s)) => {
                let d = humantime::parse_duration(s)
                    .map_err(|e| format!("{s:?} is not a duration ({e}); write it as \"30s\""))?;
                Value::from(u64::try_from(d.as_millis()).map_err(|_| "is too long".to_owned())?)
            }
            (SettingType::Size, Value::String(s)) => {
                let size: bytesize::ByteSize = s
                    .parse()
                    .map_err(|e| format!("{s:?} is not a size ({e}); write it as \"10MiB\""))?;
                Value::from(size.as_u64())
            }
            (SettingType::Duration | SettingType::Size, Value::Number(n)) if n.is_u64() => {
                value.clone()
            }
            _ => return Err(wrong()),
        };
        if self.kind.is_ordered() {
            let x = as_f64(&normal);
            if let Some(min) = self.bound(&self.min) {
                if x < as_f64(&min) {
                    return Err(format!("must be at least {}", self.show(&min)));
                }
            }
            if let Some(max) = self.bound(&self.max) {
                if x > as_f64(&max) {
                    return Err(format!("must be at most {}", self.show(&max)));
                }
            }
        }
        Ok(normal)
    }

    /// A bound in normal form (checked when the manifest was read).
    fn bound(&self, bound: &Option<toml::Value>) -> Option<Value> {
        let bare = SettingSpec {
            min: None,
            max: None,
            ..self.clone()
        };
        bound
            .as_ref()
            .and_then(|b| bare.normalise(&to_json(b)).ok())
    }

    fn show(&self, normal: &Value) -> String {
        match self.kind {
            SettingType::Duration => format!(
                "{}",
                humantime::format_duration(std::time::Duration::from_millis(
                    normal.as_u64().unwrap_or(0)
                ))
            ),
            SettingType::Size => bytesize::ByteSize(normal.as_u64().unwrap_or(0)).to_string(),
            _ => normal.to_string(),
        }
    }

    /// The type's name as manifests write it.
    pub fn kind_name(&self) -> &'static str {
        self.kind.word()
    }

    /// `min` in normal form, if declared.
    pub fn min_value(&self) -> Option<Value> {
        self.bound(&self.min)
    }

    /// `max` in normal form, if declared.
    pub fn max_value(&self) -> Option<Value> {
        self.bound(&self.max)
    }

    /// The default in normal form, if one is declared.
    pub fn default_value(&self) -> Option<Value> {
        self.default
            .as_ref()
            .and_then(|d| self.normalise(&to_json(d)).ok())
    }
}

/// A regular expression that must match a whole string.
fn whole(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Whether `name` may name a setting: 1 to 64 lower-case letters, digits and `_`, starting
/// with a letter.
pub fn valid_key(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks a manifest's `[settings]`: names, defaults, bounds and patterns that fit their types.
pub fn validate_schema(schema: &SettingsSchema) -> Result<(), String> {
    if schema.len() > MAX_SETTINGS {
        return Err(format!(
            "field `settings`: {} settings declared; at most {MAX_SETTINGS}",
            schema.len()
        ));
    }
    for (name, spec) in schema {
        let field = format!("field `settings.{name}`");
        if !valid_key(name) {
            return Err(format!(
                "{field}: not a valid setting name (use 1 to 64 lower-case letters, digits or '_', starting with a letter)"
            ));
        }
        if let Some(pattern) = &spec.pattern {
            if spec.kind != SettingType::String {
                return Err(format!("{field}: `pattern` applies to strings only"));
            }
            if pattern.len() > MAX_PATTERN {
                return Err(format!(
                    "{field}: `pattern` is longer than {MAX_PATTERN} bytes"
                ));
            }
            whole(pattern).map_err(|e| format!("{field}: `pattern` is not valid: {e}"))?;
        }
        if spec.max_length.is_some()
            && !matches!(spec.kind, SettingType::String | SettingType::List)
        {
            return Err(format!(
                "{field}: `max_length` applies to strings and lists only"
            ));
        }
        if (spec.kind == SettingType::Enum) == spec.values.is_empty() {
            return Err(if spec.kind == SettingType::Enum {
                format!("{field}: an enum needs `values`")
            } else {
                format!("{field}: `values` applies to enums only")
            });
        }
        for (word, bound) in [("min", &spec.min), ("max", &spec.max)] {
            let Some(bound) = bound else { continue };
            if !spec.kind.is_ordered() {
                return Err(format!(
                    "{field}: `{word}` applies to integers, numbers, durations and sizes only"
                ));
            }
            let bare = SettingSpec {
                min: None,
                max: None,
                ..spec.clone()
            };
            bare.normalise(&to_json(bound))
                .map_err(|e| format!("{field}: `{word}` {e}"))?;
        }
        if let (Some(min), Some(max)) = (spec.bound(&spec.min), spec.bound(&spec.max)) {
            if as_f64(&min) > as_f64(&max) {
                return Err(format!("{field}: `min` is larger than `max`"));
            }
        }
        if let Some(default) = &spec.default {
            if spec.secret {
                return Err(format!(
                    "{field}: a secret cannot have a default (the manifest is not secret)"
                ));
            }
            spec.normalise(&to_json(default))
                .map_err(|e| format!("{field}: `default` {e}"))?;
        }
    }
    Ok(())
}

/// `problem` without the text of a secret's `value` (some problems quote what was given).
fn redact(problem: &str, value: &Value) -> String {
    match value {
        Value::String(s) if !s.is_empty() => problem
            .replace(&format!("{s:?}"), "the value")
            .replace(s.as_str(), "…"),
        _ => problem.to_owned(),
    }
}

/// One value an admin sent that the schema refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The setting's name.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Checks the values an admin sent: every key declared, every value of its type and within its
/// bounds. Answers them in normal form, or every problem found (not only the first).
pub fn check_values(
    schema: &SettingsSchema,
    values: &Map<String, Value>,
) -> Result<BTreeMap<String, Value>, Vec<FieldError>> {
    let mut normal = BTreeMap::new();
    let mut problems = Vec::new();
    for (key, value) in values {
        match schema.get(key) {
            None => problems.push(FieldError {
                key: key.clone(),
                problem: "is not a setting of this plugin".into(),
            }),
            Some(spec) => match spec.normalise(value) {
                Ok(v) => {
                    normal.insert(key.clone(), v);
                }
                Err(problem) => problems.push(FieldError {
                    key: key.clone(),
                    problem: if spec.secret {
                        redact(&problem, value)
                    } else {
                        problem
                    },
                }),
            },
        }
    }
    if problems.is_empty() {
        Ok(normal)
    } else {
        Err(problems)
    }
}

/// What a plugin runs with: every stored value its schema still accepts, else its default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effective {
    /// The values the plugin receives, by name.
    pub values: BTreeMap<String, Value>,
    /// Required settings with neither a value nor a default.
    pub missing: Vec<String>,
    /// Stored values the schema no longer accepts (a newer manifest), with why; they are
    /// ignored.
    pub ignored: Vec<FieldError>,
}

/// The effective settings from `stored` under `schema`.
pub fn effective(schema: &SettingsSchema, stored: &BTreeMap<String, Value>) -> Effective {
    let mut out = Effective::default();
    for (key, spec) in schema {
        let set = stored.get(key).and_then(|v| match spec.normalise(v) {
            Ok(v) => Some(v),
            Err(problem) => {
                out.ignored.push(FieldError {
                    key: key.clone(),
                    problem,
                });
                None
            }
        });
        match set.or_else(|| spec.default_value()) {
            Some(v) => {
                out.values.insert(key.clone(), v);
            }
            None if spec.required => out.missing.push(key.clone()),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(text: &str) -> Result<SettingsSchema, String> {
        #[derive(Deserialize)]
        struct Doc {
            settings: SettingsSchema,
        }
        let doc: Doc = toml::from_str(text).map_err(|e| e.to_string())?;
        validate_schema(&doc.settings)?;
        Ok(doc.settings)
    }

    const SCHEMA: &str = r#"
[settings.greeting]
type = "string"
default = "hello"
pattern = "[a-z ]+"
max_length = 20
[settings.retries]
type = "integer"
min = 0
max = 10
[settings.ratio]
type = "number"
max = 1.5
[settings.verbose]
type = "boolean"
default = false
[settings.mode]
type = "enum"
values = ["fast", "safe"]
required = true
[settings.tags]
type = "list"
max_length = 2
[settings.timeout]
type = "duration"
default = "5s"
min = "1s"
max = "1m"
[settings.limit]
type = "size"
max = "1MiB"
[settings.api_key]
type = "string"
secret = true
required = true
"#;

    #[test]
    fn values_are_checked_and_normalised() {
        let s = schema(SCHEMA).expect("valid schema");
        let good = json!({
            "greeting": "hi there", "retries": 3, "ratio": 0.5, "verbose": true,
            "mode": "safe", "tags": ["a", "b"], "timeout": "90s", "limit": "512KiB",
            "api_key": "k",
        });
        let bad_timeout = check_values(&s, good.as_object().expect("map"));
        let problems = bad_timeout.expect_err("90s is above the 1m max");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "timeout");
        assert!(problems[0].problem.contains("at most 1m"), "{problems:?}");

        let mut good = good.as_object().expect("map").clone();
        good.insert("timeout".into(), json!("30s"));
        let normal = check_values(&s, &good).expect("valid");
        assert_eq!(normal["timeout"], json!(30_000));
        assert_eq!(normal["limit"], json!(512 * 1024));
        assert_eq!(normal["greeting"], json!("hi there"));
    }

    #[test]
    fn every_bad_field_is_named_with_its_reason() {
        let s = schema(SCHEMA).expect("valid schema");
        let bad = json!({
            "greeting": "HELLO", "retries": 11, "ratio": "high", "verbose": 1,
            "mode": "reckless", "tags": ["a", "b", "c"], "limit": "2MiB", "colour": "red",
        });
        let problems = check_values(&s, bad.as_object().expect("map")).expect_err("all bad");
        let by_key: BTreeMap<_, _> = problems
            .iter()
            .map(|p| (p.key.as_str(), p.problem.as_str()))
            .collect();
        assert!(by_key["greeting"].contains("pattern"));
        assert!(by_key["retries"].contains("at most 10"));
        assert!(by_key["ratio"].contains("must be a number"));
        assert!(by_key["verbose"].contains("must be a boolean"));
        assert!(by_key["mode"].contains("\"fast\", \"safe\""));
        assert!(by_key["tags"].contains("more than 2"));
        assert!(by_key["limit"].contains("at most 1.0 MiB"), "{by_key:?}");
        assert!(by_key["colour"].contains("not a setting"));
        assert_eq!(problems.len(), 8);
    }

    #[test]
    fn a_refused_secret_is_not_quoted_in_the_problem() {
        let s = schema("[settings.token]\ntype = \"duration\"\nsecret = true\n").expect("schema");
        let problems = check_values(&s, json!({ "token": "hunter2" }).as_object().expect("map"))
            .expect_err("not a duration");
        assert!(!problems[0].problem.contains("hunter2"), "{problems:?}");
        assert!(
            problems[0].problem.contains("is not a duration"),
            "{problems:?}"
        );
    }

    #[test]
    fn effective_settings_use_defaults_and_report_missing_required_ones() {
        let s = schema(SCHEMA).expect("valid schema");
        let stored = BTreeMap::from([
            ("mode".to_owned(), json!("fast")),
            ("retries".to_owned(), json!(99)),
        ]);
        let e = effective(&s, &stored);
        assert_eq!(e.values["greeting"], json!("hello"));
        assert_eq!(e.values["timeout"], json!(5000));
        assert_eq!(e.values["mode"], json!("fast"));
        assert!(!e.values.contains_key("retries"), "out of bounds: ignored");
        assert_eq!(e.ignored.len(), 1);
        assert_eq!(e.missing, ["api_key"]);
    }

    #[test]
    fn bad_schemas_are_refused_naming_the_setting() {
        for (text, expect) in [
            (
                "[settings.A]\ntype = \"string\"\n",
                "not a valid setting name",
            ),
            ("[settings.a]\ntype = \"colour\"\n", "unknown variant"),
            ("[settings.a]\ntype = \"enum\"\n", "needs `values`"),
            (
                "[settings.a]\ntype = \"integer\"\npattern = \"x\"\n",
                "strings only",
            ),
            (
                "[settings.a]\ntype = \"string\"\npattern = \"(\"\n",
                "not valid",
            ),
            (
                "[settings.a]\ntype = \"integer\"\ndefault = \"x\"\n",
                "`default` must be a integer",
            ),
            (
                "[settings.a]\ntype = \"integer\"\nmin = 5\nmax = 1\n",
                "larger than `max`",
            ),
            (
                "[settings.a]\ntype = \"duration\"\nmin = \"soon\"\n",
                "`min` \"soon\" is not a duration",
            ),
            (
                "[settings.a]\ntype = \"string\"\nsecret = true\ndefault = \"x\"\n",
                "cannot have a default",
            ),
            (
                "[settings.a]\ntype = \"boolean\"\nmax_length = 3\n",
                "strings and lists only",
            ),
            (
                "[settings.a]\ntype = \"string\"\ncolour = 1\n",
                "unknown field",
            ),
        ] {
            let err = schema(text).expect_err(text);
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
