//! One settings tree, layered: built-in defaults, then the TOML config file, then `PLUGD_*`
//! environment variables, then command-line flags. Every layer uses the same keys, so
//! `listen = "…"` in the file, `PLUGD_LISTEN` in the environment and `--listen` on the command line
//! set the same thing. A bad value is reported with the layer it came from.

use anyhow::{bail, Context};
use bytesize::ByteSize;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `plugd serve` needs to know.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP server binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Directory whose `*/plugin.toml` are the plugins to run.
    pub plugins_dir: PathBuf,
    /// Directory for the supervisor's persistent state.
    pub data_dir: PathBuf,
    /// Directory under which a private `0700` directory holds the plugins' sockets.
    pub runtime_dir: PathBuf,
    /// How long a started plugin has to connect and complete its handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Default time a plugin has to answer one HTTP request (a manifest may set its own).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long shutdown waits for HTTP requests and then for plugins before killing them.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Default largest HTTP request body forwarded to a plugin (a manifest may set its own).
    pub max_body: ByteSize,
    /// Largest protocol frame either side may send.
    pub max_frame: ByteSize,
    /// Time between resource samples of each plugin; `0s` turns monitoring off.
    #[serde(with = "humantime_serde")]
    pub monitor_interval: Duration,
    /// Whether to put each plugin in a cgroup of its own with its limits (`true` or `false`).
    pub cgroups: bool,
    /// Deadline of one hook handler call.
    #[serde(with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// PostgreSQL URL for the state store; none means SQLite in the data directory.
    pub database_url: Option<String>,
    /// Whether to log one line per HTTP request (method, path, status, latency, request id)
    /// under the `plugd::access` log target.
    pub access_log: bool,
    /// Most HTTP connections open at once; plugd lowers it at start-up to stay below its
    /// file-descriptor limit. Connections past it get a `503` at once.
    pub max_connections: usize,
    /// Longest wait for an HTTP request head, and longest a kept-alive connection may sit idle.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Installed versions kept per plugin for rollback and download; older ones are pruned.
    pub keep_versions: u32,
    /// Most plugin builds (`build` in a manifest) running at once.
    pub max_builds: usize,
    /// The sliding window over which a canary is compared with the stable version.
    #[serde(with = "humantime_serde")]
    pub canary_window: Duration,
    /// Requests a canary must have answered in the window before it is judged.
    pub canary_min_requests: u64,
    /// A canary whose 5xx ratio is above this factor times the stable one's (and above
    /// `canary_min_error_ratio`) is rolled back.
    pub canary_error_factor: f64,
    /// The 5xx ratio below which a canary is never rolled back for its errors.
    pub canary_min_error_ratio: f64,
    /// A canary whose p99 is above this factor times the stable one's (and more than
    /// `canary_latency_floor` above it) is rolled back.
    pub canary_latency_factor: f64,
    /// How far above the stable p99 a canary's may be whatever the factor.
    #[serde(with = "humantime_serde")]
    pub canary_latency_floor: Duration,
    /// Threads that run plugd's HTTP server and plugin connections; none means half the CPUs
    /// (at least one), since the plugins, separate processes, do the work and need the rest.
    /// Blocking work (unpacking bundles, killing process trees) runs on threads of its own.
    pub worker_threads: Option<usize>,
    /// Threads that take HTTP connections, the main runtime's included: each of the others is
    /// a thread with a single-threaded runtime, its own listening socket on the same address
    /// and its own lane to each plugin that offers lanes (protocol 1.3), so a request and its
    /// plugin's answer stay on one thread. None means half the CPUs (at least one, at most
    /// [`DEFAULT_MAX_HTTP_THREADS`]), as for `worker_threads`: on two cores a second HTTP
    /// thread served no more requests and cost about 10 % more CPU per request, the plugins
    /// needing the other core.
    pub http_threads: Option<usize>,
    /// Bearer tokens for the admin API (config file only; `PLUGD_ADMIN_TOKEN` adds one).
    pub admin_tokens: Vec<AdminToken>,
}

/// One admin API token: `[[admin_tokens]]` with `name`, `token` and `role`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who holds it; written to the audit log with every change made with it.
    pub name: String,
    /// The secret.
    pub token: String,
    /// `admin` (everything), `viewer` (GET only in the admin API) or `host` (fires hooks,
    /// nothing else).
    pub role: Role,
    /// Permissions granted to callers presenting this token on plugin routes.
    #[serde(default)]
    pub permissions: Vec<String>,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("token", &"***")
            .field("role", &self.role)
            .field("permissions", &self.permissions)
            .finish()
    }
}

/// What an admin token may do: `admin`, `viewer` or `host`.
pub use plugd_api::Role;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            plugins_dir: PathBuf::from("plugins"),
            data_dir: PathBuf::from("data"),
            runtime_dir: default_runtime_dir(),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            max_body: ByteSize::mib(8),
            max_frame: ByteSize::mib(16),
            monitor_interval: Duration::from_secs(2),
            cgroups: true,
            hook_timeout: Duration::from_secs(5),
            database_url: None,
            access_log: false,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            keep_versions: plugd_api::releases::DEFAULT_KEEP_VERSIONS,
            max_builds: 2,
            canary_window: Duration::from_secs(60),
            canary_min_requests: 20,
            canary_error_factor: 2.0,
            canary_min_error_ratio: 0.01,
            canary_latency_factor: 2.0,
            canary_latency_floor: Duration::from_millis(10),
            worker_threads: None,
            http_threads: None,
            admin_tokens: Vec::new(),
        }
    }
}

/// `$XDG_RUNTIME_DIR/plugd` (systemd's `RUNTIME_DIRECTORY` takes precedence), else a per-user
/// directory under the system temporary directory.
fn default_runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("plugd");
    }
    std::env::temp_dir().join(format!("plugd-{}", nix::unistd::getuid()))
}

/// The keys every layer may set, with their environment variable.
pub const KEYS: &[(&str, &str)] = &[
    ("listen", "PLUGD_LISTEN"),
    ("plugins_dir", "PLUGD_PLUGINS_DIR"),
    ("data_dir", "PLUGD_DATA_DIR"),
    ("runtime_dir", "PLUGD_RUNTIME_DIR"),
    ("handshake_timeout", "PLUGD_HANDSHAKE_TIMEOUT"),
    ("request_timeout", "PLUGD_REQUEST_TIMEOUT"),
    ("shutdown_timeout", "PLUGD_SHUTDOWN_TIMEOUT"),
    ("max_body", "PLUGD_MAX_BODY"),
    ("max_frame", "PLUGD_MAX_FRAME"),
    ("monitor_interval", "PLUGD_MONITOR_INTERVAL"),
    ("cgroups", "PLUGD_CGROUPS"),
    ("database_url", "PLUGD_DATABASE_URL"),
    ("hook_timeout", "PLUGD_HOOK_TIMEOUT"),
    ("access_log", "PLUGD_ACCESS_LOG"),
    ("max_connections", "PLUGD_MAX_CONNECTIONS"),
    ("header_read_timeout", "PLUGD_HEADER_READ_TIMEOUT"),
    ("keep_versions", "PLUGD_KEEP_VERSIONS"),
    ("max_builds", "PLUGD_MAX_BUILDS"),
    ("canary_window", "PLUGD_CANARY_WINDOW"),
    ("canary_min_requests", "PLUGD_CANARY_MIN_REQUESTS"),
    ("canary_error_factor", "PLUGD_CANARY_ERROR_FACTOR"),
    ("canary_min_error_ratio", "PLUGD_CANARY_MIN_ERROR_RATIO"),
    ("canary_latency_factor", "PLUGD_CANARY_LATENCY_FACTOR"),
    ("canary_latency_floor", "PLUGD_CANARY_LATENCY_FLOOR"),
    ("worker_threads", "PLUGD_WORKER_THREADS"),
    ("http_threads", "PLUGD_HTTP_THREADS"),
];

/// Most HTTP threads by default: each costs every plugin instance a lane (a socket and its
/// buffers on both sides), so a large machine does not multiply that by its CPUs.
pub const DEFAULT_MAX_HTTP_THREADS: usize = 4;

/// Most HTTP threads allowed: a plugin built with plugd's runtime offers at most 16 lanes.
pub const MAX_HTTP_THREADS: usize = 17;

/// The environment variable holding an admin token (named `env`, role `admin`).
pub const ENV_ADMIN_TOKEN: &str = "PLUGD_ADMIN_TOKEN";

/// The environment variable holding a token for host applications (named `env-host`, role
/// `host`: it may fire hooks and nothing else).
pub const ENV_HOST_TOKEN: &str = "PLUGD_HOST_TOKEN";

/// The environment variable naming the config file when `--config` is not given.
pub const ENV_CONFIG: &str = "PLUGD_CONFIG";

impl Settings {
    /// The runtime's worker threads: `worker_threads`, or half the CPUs (at least one).
    pub fn workers(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            (cpus / 2).max(1)
        })
    }

    /// Threads taking HTTP connections: `http_threads`, or half the CPUs (at least one, at
    /// most [`DEFAULT_MAX_HTTP_THREADS`]).
    pub fn http_threads(&self) -> usize {
        self.http_threads.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            (cpus / 2).clamp(1, DEFAULT_MAX_HTTP_THREADS)
        })
    }

    /// Layers the config file (if any), the environment and the flags over the defaults.
    ///
    /// `flags` are `(key, value)` pairs from the command line, keys as in [`KEYS`].
    pub fn load(
        config: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &[(&str, String)],
    ) -> anyhow::Result<Settings> {
        let mut table = toml::Table::new();
        if let Some(path) = config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            table = text
                .parse::<toml::Table>()
                .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
            // Quoted values keep working where a typed one is expected (`cgroups = "false"`).
            for (key, _) in KEYS {
                if let Some(toml::Value::String(value)) = table.get(*key).cloned() {
                    set(&mut table, key, value)
                        .with_context(|| format!("config file {}", path.display()))?;
                }
            }
            check(&table).with_context(|| format!("config file {}", path.display()))?;
        }
        for (key, var) in KEYS {
            if let Some(value) = env(var) {
                set(&mut table, key, value)
                    .with_context(|| format!("environment variable {var}"))?;
            }
        }
        for (key, value) in flags {
            set(&mut table, key, value.clone())
                .with_context(|| format!("flag --{}", key.replace('_', "-")))?;
        }
        let mut settings = check(&table)?;
        if let Some(token) = env(ENV_ADMIN_TOKEN).filter(|t| !t.is_empty()) {
            settings.admin_tokens.push(AdminToken {
                name: "env".into(),
                token,
                role: Role::Admin,
                permissions: Vec::new(),
            });
        }
        if let Some(token) = env(ENV_HOST_TOKEN).filter(|t| !t.is_empty()) {
            settings.admin_tokens.push(AdminToken {
                name: "env-host".into(),
                token,
                role: Role::Host,
                permissions: Vec::new(),
            });
        }
        if let Some(t) = settings.admin_tokens.iter().find(|t| t.token.len() < 16) {
            bail!(
                "admin token {:?} is too short: use at least 16 characters (32 random bytes in hex is better)",
                t.name
            );
        }
        if settings.keep_versions == 0 {
            bail!("keep_versions must be at least 1: the stable version is always kept");
        }
        if settings.max_builds == 0 {
            bail!("max_builds must be at least 1");
        }
        if settings.canary_window < Duration::from_millis(200) {
            bail!("canary_window must be at least 200ms");
        }
        if settings.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        if settings.worker_threads == Some(0) {
            bail!("worker_threads must be at least 1 (leave it out for half the CPUs)");
        }
        match settings.http_threads {
            Some(0) => bail!("http_threads must be at least 1 (leave it out for half the CPUs, at most {DEFAULT_MAX_HTTP_THREADS})"),
            Some(n) if n > MAX_HTTP_THREADS => bail!("http_threads is {n}, at most {MAX_HTTP_THREADS} are allowed"),
            _ => {}
        }
        if settings.header_read_timeout.is_zero() {
            bail!("header_read_timeout must be longer than 0s");
        }
        if settings.max_body.as_u64() >= settings.max_frame.as_u64() {
            bail!(
                "max_body ({}) must be smaller than max_frame ({}): a request body travels in one frame",
                settings.max_body,
                settings.max_frame
            );
        }
        Ok(settings)
    }
}

/// Sets one key from the environment or a flag, checking its value on its own so the error
/// names this layer. The value is taken as a string first (paths, durations, sizes, URLs) and
/// otherwise as a TOML value (`false`, `1048576`), so every layer accepts what the file does.
fn set(table: &mut toml::Table, key: &str, value: String) -> anyhow::Result<()> {
    let as_string = toml::Value::String(value.clone());
    let mut single = toml::Table::new();
    single.insert(key.to_owned(), as_string.clone());
    let chosen = match check(&single) {
        Ok(_) => as_string,
        Err(first) => {
            let typed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"));
            let Some(typed) = typed else {
                return Err(first).with_context(|| format!("invalid value {value:?}"));
            };
            single.insert(key.to_owned(), typed.clone());
            check(&single).with_context(|| format!("invalid value {value:?}"))?;
            typed
        }
    };
    table.insert(key.to_owned(), chosen);
    Ok(())
}

fn check(table: &toml::Table) -> anyhow::Result<Settings> {
    Settings::deserialize(table.clone()).map_err(|e| anyhow::anyhow!("{}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write");
        file
    }

    #[test]
    fn defaults_apply_without_any_layer() {
        let s = Settings::load(None, env_of(&[]), &[]).expect("defaults load");
        assert_eq!(s.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(s.plugins_dir, PathBuf::from("plugins"));
        assert_eq!(s.request_timeout, Duration::from_secs(30));
    }

    #[test]
    fn flags_override_environment_which_overrides_the_file() {
        let file = config_file(
            "listen = \"127.0.0.1:1000\"\nplugins_dir = \"/from/file\"\ndata_dir = \"/file/data\"\n",
        );
        let env = env_of(&[
            ("PLUGD_LISTEN", "127.0.0.1:2000"),
            ("PLUGD_PLUGINS_DIR", "/from/env"),
        ]);
        let flags = [("listen", "127.0.0.1:3000".to_string())];
        let s = Settings::load(Some(file.path()), env, &flags).expect("load");
        assert_eq!(s.listen.port(), 3000, "flag wins");
        assert_eq!(s.plugins_dir, PathBuf::from("/from/env"), "env beats file");
        assert_eq!(
            s.data_dir,
            PathBuf::from("/file/data"),
            "file beats default"
        );
    }

    #[test]
    fn unknown_key_in_the_file_is_named() {
        let file = config_file("listen = \"127.0.0.1:1\"\nlisten_port = 3\n");
        let err = Settings::load(Some(file.path()), env_of(&[]), &[]).expect_err("unknown key");
        let text = format!("{err:#}");
        assert!(text.contains("listen_port"), "{text}");
        assert!(text.contains(&file.path().display().to_string()), "{text}");
    }

    #[test]
    fn bad_environment_value_names_the_variable() {
        let env = env_of(&[("PLUGD_REQUEST_TIMEOUT", "soon")]);
        let err = Settings::load(None, env, &[]).expect_err("bad duration");
        let text = format!("{err:#}");
        assert!(text.contains("PLUGD_REQUEST_TIMEOUT"), "{text}");
        assert!(text.contains("soon"), "{text}");
    }

    #[test]
    fn typed_values_are_accepted_in_the_file_and_as_strings_elsewhere() {
        let file = config_file("cgroups = false\nmax_body = 1048576\nrequest_timeout = \"5s\"\n");
        let s = Settings::load(Some(file.path()), env_of(&[]), &[]).expect("typed values load");
        assert!(!s.cgroups);
        assert_eq!(s.max_body, ByteSize::mib(1));
        assert_eq!(s.request_timeout, Duration::from_secs(5));
        let env = env_of(&[("PLUGD_CGROUPS", "false"), ("PLUGD_MAX_BODY", "2MiB")]);
        let flags = [("max_frame", "33554432".to_string())];
        let s = Settings::load(None, env, &flags).expect("strings load");
        assert!(!s.cgroups);
        assert_eq!(s.max_body, ByteSize::mib(2));
        assert_eq!(s.max_frame, ByteSize::mib(32));
        let err = Settings::load(None, env_of(&[("PLUGD_CGROUPS", "maybe")]), &[])
            .expect_err("not a boolean");
        let text = format!("{err:#}");
        assert!(
            text.contains("PLUGD_CGROUPS") && text.contains("maybe"),
            "{text}"
        );
    }

    #[test]
    fn body_limit_must_fit_in_a_frame() {
        let flags = [("max_body", "32MiB".to_string())];
        let err = Settings::load(None, env_of(&[]), &flags).expect_err("too big");
        assert!(format!("{err:#}").contains("max_frame"));
    }
}
