//! Plugin discovery: every `<plugins_dir>/*/plugin.toml`, parsed strictly.
//!
//! A manifest with an unknown key, a missing field or a bad value is reported with its file and
//! the field, and discovery goes on: one broken plugin never keeps the others from starting.

pub mod bundle;
mod limits;
mod policy;
pub mod settings;

pub use limits::{
    validate_limits, Limits, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_STREAMS, DEFAULT_MAX_WS_MESSAGE,
    DEFAULT_MEMORY, DEFAULT_OPEN_FILES, DEFAULT_STREAM_IDLE, DEFAULT_STREAM_WINDOW, DEFAULT_TASKS,
};
pub use policy::{HealthPolicy, RestartPolicy};
pub use settings::{SettingSpec, SettingsSchema};

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The file name discovery looks for in each plugin directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// A validated `plugin.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Unique name: lower-case letters, digits, `-` and `_`, starting with a letter or digit.
    pub name: String,
    /// The plugin's version, shown to admins.
    pub version: String,
    /// One line saying what the plugin does.
    #[serde(default)]
    pub description: String,
    /// Who wrote it.
    #[serde(default)]
    pub author: String,
    /// The program to run: a path relative to the plugin's directory if it contains `/`,
    /// otherwise a name looked up in `PATH`.
    pub command: String,
    /// Arguments passed to `command`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables for the process (names starting with `PLUGD_` are reserved).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Per-plugin limits; unset ones take the supervisor's defaults.
    #[serde(default)]
    pub limits: Limits,
    /// When to restart the plugin after it exits, and when to give up.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// How often the plugin is pinged, and how long it has to answer.
    #[serde(default)]
    pub health: HealthPolicy,
    /// The settings an admin may set (`[settings.NAME]`), delivered to the plugin.
    #[serde(default)]
    pub settings: SettingsSchema,
    /// A command that builds the plugin (`["cargo", "build", "--release"]`), run in its
    /// directory before it starts: on discovery, on install and when a `watch` path changes.
    #[serde(default)]
    pub build: Vec<String>,
    /// Source paths, relative to the plugin's directory, whose change rebuilds and reloads it.
    #[serde(default)]
    pub watch: Vec<String>,
    /// Longest a build may run before it is killed and counted as failed (default 10 min).
    #[serde(default = "default_build_timeout", with = "humantime_serde")]
    pub build_timeout: std::time::Duration,
    /// The directory the manifest was found in (not part of the file).
    #[serde(skip)]
    pub dir: PathBuf,
    /// sha256 of the bundle the directory was installed from, if it was (not part of the file).
    #[serde(skip)]
    pub bundle: Option<String>,
}

/// How long a build may run unless its manifest says otherwise.
pub const DEFAULT_BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Most files under a plugin's `watch` paths that are checked for changes.
pub const MAX_WATCHED_SOURCES: usize = 4096;

fn default_build_timeout() -> std::time::Duration {
    DEFAULT_BUILD_TIMEOUT
}

/// A manifest that could not be used: the file and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The manifest file.
    pub path: PathBuf,
    /// What was wrong, naming the field.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Everything discovery found: the usable manifests (sorted by name) and the broken ones.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Valid manifests.
    pub manifests: Vec<Manifest>,
    /// One error per manifest that could not be used.
    pub errors: Vec<ManifestError>,
}

/// Reads every `*/plugin.toml` under `dir`. A directory without a manifest is skipped.
pub fn discover(dir: &Path) -> Result<Discovery, ManifestError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ManifestError {
        path: dir.to_owned(),
        message: format!("cannot read the plugins directory: {e}"),
    })?;
    // Dot-directories are staging and trash areas of installs, never plugins.
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path().join(MANIFEST_FILE))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut found = Discovery::default();
    let mut names = HashSet::new();
    for path in paths {
        match load(&path) {
            Ok(m) if !names.insert(m.name.clone()) => found.errors.push(ManifestError {
                message: format!("field `name`: another plugin is already named {:?}", m.name),
                path,
            }),
            Ok(m) => found.manifests.push(m),
            Err(e) => found.errors.push(e),
        }
    }
    found.manifests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Reads and validates one manifest file.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let fail = |message: String| ManifestError {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut manifest = parse(&text).map_err(fail)?;
    manifest.dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    manifest.bundle = bundle::installed_sha256(&manifest.dir);
    Ok(manifest)
}

/// Parses and validates manifest text; the error names the line and the field.
pub fn parse(text: &str) -> Result<Manifest, String> {
    let manifest: Manifest = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .filter(|span| span.start > 0)
            .map(|span| text[..span.start].matches('\n').count() + 1);
        match line {
            Some(line) => {
                let source = text.lines().nth(line - 1).unwrap_or_default().trim();
                format!("line {line} (`{source}`): {}", e.message())
            }
            None => e.message().to_owned(),
        }
    })?;
    validate(&manifest)?;
    Ok(manifest)
}

fn validate(m: &Manifest) -> Result<(), String> {
    let name_ok = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name
            .starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && m.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        return Err(format!(
            "field `name`: {:?} is not a valid plugin name (use 1 to 64 lower-case letters, digits, '-' or '_', starting with a letter or digit)",
            m.name
        ));
    }
    if m.version.trim().is_empty() {
        return Err("field `version`: must not be empty".into());
    }
    if m.command.trim().is_empty() {
        return Err("field `command`: must not be empty".into());
    }
    if let Some(key) = m.env.keys().find(|k| k.starts_with("PLUGD_")) {
        return Err(format!(
            "field `env.{key}`: variables starting with PLUGD_ are set by the supervisor"
        ));
    }
    if let Some(key) = m
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains(['=', '\0']))
    {
        return Err(format!("field `env`: {key:?} is not a valid variable name"));
    }
    validate_limits(&m.limits)?;
    validate_build(m)?;
    settings::validate_schema(&m.settings)
}

fn validate_build(m: &Manifest) -> Result<(), String> {
    if m.build.first().is_some_and(|c| c.trim().is_empty()) {
        return Err("field `build`: the command must not be empty".into());
    }
    if m.build.is_empty() && !m.watch.is_empty() {
        return Err("field `watch`: needs a `build` command to run when a path changes".into());
    }
    if let Some(bad) = m.watch.iter().find(|w| {
        let p = Path::new(w.as_str());
        w.is_empty()
            || p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
    }) {
        return Err(format!(
            "field `watch`: {bad:?} must be a path inside the plugin's directory"
        ));
    }
    if m.build_timeout.is_zero() {
        return Err("field `build_timeout`: must be longer than 0s".into());
    }
    Ok(())
}

impl Manifest {
    /// The program to execute, resolved against the plugin's directory when it is a path.
    pub fn program(&self) -> PathBuf {
        if self.command.contains('/') {
            self.dir.join(&self.command)
        } else {
            PathBuf::from(&self.command)
        }
    }

    /// The files whose change reloads the plugin: its program, and its script: the first
    /// argument that is not a flag, when it names a file inside the plugin's directory (as
    /// `main.py` in `command = "python3"`, `args = ["main.py"]`). Only that one: a later
    /// argument may name a file the plugin writes itself (`--db state.sqlite`), which must not
    /// reload it.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let script = self
            .args
            .iter()
            .find(|a| !a.starts_with('-'))
            .filter(|a| !a.is_empty() && !Path::new(a.as_str()).is_absolute())
            .map(|a| self.dir.join(a))
            .filter(|p| p.is_file())
            .filter(|p| match (p.canonicalize(), self.dir.canonicalize()) {
                (Ok(p), Ok(dir)) => p.starts_with(dir),
                _ => false,
            });
        std::iter::once(self.program()).chain(script).collect()
    }

    /// The files under its `watch` paths (at most [`MAX_WATCHED_SOURCES`], in a stable
    /// order), whose change rebuilds it. Blocking: it walks directories.
    pub fn watched_sources(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending: Vec<PathBuf> = self.watch.iter().map(|w| self.dir.join(w)).collect();
        pending.reverse();
        while let Some(path) = pending.pop() {
            if found.len() >= MAX_WATCHED_SOURCES {
                break;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                let Ok(entries) = std::fs::read_dir(&path) else {
                    continue;
                };
                let mut children: Vec<PathBuf> =
                    entries.filter_map(|e| Some(e.ok()?.path())).collect();
                children.sort();
                pending.extend(children.into_iter().rev());
            } else if meta.is_file() {
                found.push(path);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytesize::ByteSize;
    use std::time::Duration;

    const GOOD: &str = r#"
name = "hello"
version = "1.0.0"
description = "says hello"
author = "plugd"
command = "./hello"
args = ["--fast"]
[env]
GREETING = "hi"
[limits]
request_timeout = "5s"
max_body = "1MiB"
[restart]
max_restarts = 3
window = "30s"
[health]
interval = "1s"
"#;

    #[test]
    fn a_complete_manifest_parses() {
        let m = parse(GOOD).expect("valid");
        assert_eq!(m.name, "hello");
        assert_eq!(m.args, vec!["--fast"]);
        assert_eq!(m.env["GREETING"], "hi");
        assert_eq!(m.limits.request_timeout, Some(Duration::from_secs(5)));
        assert_eq!(m.limits.max_body, Some(ByteSize::mib(1)));
        assert_eq!(m.restart.max_restarts, 3);
        assert_eq!(m.restart.window, Duration::from_secs(30));
        assert_eq!(m.restart.max_backoff, RestartPolicy::default().max_backoff);
        assert_eq!(m.health.interval, Duration::from_secs(1));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("name = \"a\"\nversion = \"1\"\ncommand = \"x\"\ncolour = \"red\"\n")
            .expect_err("unknown key");
        assert!(err.contains("colour") && err.contains("line 4"), "{err}");
        let err =
            parse("name = \"a\"\nversion = \"1\"\ncommand = \"x\"\n[limits]\nmemory = \"lots\"\n")
                .expect_err("bad size");
        assert!(
            err.contains("memory = \"lots\"") && err.contains("line 5"),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse("name = \"a\"\nversion = \"1\"\n").expect_err("no command");
        assert!(err.contains("command"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let bad_name = parse("name = \"Bad Name\"\nversion = \"1\"\ncommand = \"x\"\n");
        assert!(bad_name.expect_err("bad name").contains("`name`"));
        let bad_timeout = parse(
            "name = \"a\"\nversion = \"1\"\ncommand = \"x\"\n[limits]\nrequest_timeout = \"often\"\n",
        );
        let err = bad_timeout.expect_err("bad duration");
        assert!(
            err.contains("request_timeout") || err.contains("often"),
            "{err}"
        );
        let reserved =
            parse("name = \"a\"\nversion = \"1\"\ncommand = \"x\"\n[env]\nPLUGD_TOKEN = \"x\"\n");
        assert!(reserved.expect_err("reserved").contains("env.PLUGD_TOKEN"));
    }

    #[test]
    fn the_script_an_interpreter_runs_is_watched_but_not_files_the_plugin_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        for file in ["main.py", "state.sqlite"] {
            std::fs::write(dir.path().join(file), "x").expect("write");
        }
        let manifest = |command: &str, args: &[&str]| {
            let mut m = parse(GOOD).expect("parses");
            m.dir = dir.path().to_path_buf();
            m.command = command.into();
            m.args = args.iter().map(|a| a.to_string()).collect();
            m
        };
        let python = manifest("python3", &["-u", "main.py", "--db", "state.sqlite"]);
        assert_eq!(
            python.watched_files(),
            [PathBuf::from("python3"), dir.path().join("main.py")]
        );
        // The first argument that is not a flag is not a file: nothing but the program.
        let server = manifest("./server", &["serve", "--db", "state.sqlite"]);
        assert_eq!(server.watched_files(), [dir.path().join("./server")]);
        // A file outside the plugin's directory is not watched.
        let outside = manifest("python3", &["../main.py"]);
        assert_eq!(outside.watched_files(), [PathBuf::from("python3")]);
    }

    #[test]
    fn discovery_keeps_good_manifests_and_reports_broken_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (sub, text) in [("good", GOOD), ("broken", "name = \"b\"\n"), ("dup", GOOD)] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
            std::fs::write(dir.path().join(sub).join(MANIFEST_FILE), text).expect("write");
        }
        std::fs::create_dir(dir.path().join("not-a-plugin")).expect("mkdir");
        let found = discover(dir.path()).expect("discover");
        assert_eq!(found.manifests.len(), 1);
        assert_eq!(found.manifests[0].dir, dir.path().join("dup"));
        assert_eq!(found.errors.len(), 2, "{:?}", found.errors);
        assert!(found
            .errors
            .iter()
            .any(|e| e.path.ends_with("broken/plugin.toml") && e.message.contains("version")));
        assert!(found
            .errors
            .iter()
            .any(|e| e.path.ends_with("good/plugin.toml") && e.message.contains("already named")));
    }
}
