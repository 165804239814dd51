//! `TestSupervisor`: the real `plugd` binary in a temporary directory, on port 0, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long any wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A binary built from this workspace (`cargo build --workspace --bins` builds them all).
pub fn workspace_bin(name: &str) -> PathBuf {
    let plugd = Path::new(env!("CARGO_BIN_EXE_plugd"));
    let path = plugd.parent().expect("target dir").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`, which scripts/test runs)",
        path.display()
    );
    path
}

/// One plugin directory to create for a test.
#[derive(Debug, Clone)]
pub struct PluginDef {
    pub name: String,
    pub manifest: String,
    /// Extra files in the plugin's directory: (relative path, content).
    pub files: Vec<(String, String)>,
}

impl PluginDef {
    /// Writes the plugin's directory under `plugins_dir`: its files first, the manifest last,
    /// so a watching plugd never sees the manifest without the rest.
    pub fn install(&self, plugins_dir: &std::path::Path) {
        let pd = plugins_dir.join(&self.name);
        std::fs::create_dir_all(&pd).expect("plugin dir");
        for (path, content) in &self.files {
            let file = pd.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, content).expect("plugin file");
        }
        if let Some((_, target)) = self.manifest.split_once("# link -> ") {
            std::os::unix::fs::symlink(target.trim(), pd.join("link")).expect("link");
        }
        std::fs::write(pd.join("plugin.toml"), &self.manifest).expect("manifest");
    }

    /// A plugin run from a workspace binary, with extra manifest lines (such as `[limits]`).
    pub fn bin(name: &str, bin: &str, args: &[&str], extra: &str) -> PluginDef {
        let command = workspace_bin(bin);
        let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
        PluginDef {
            files: Vec::new(),
            name: name.to_owned(),
            manifest: format!(
                "name = {name:?}\nversion = \"0.0.1\"\ncommand = {:?}\nargs = [{}]\n{extra}\n",
                command.display().to_string(),
                args.join(", ")
            ),
        }
    }

    /// The test echo plugin under `name`.
    pub fn echo(name: &str, extra: &str) -> PluginDef {
        PluginDef::bin(name, "plugd-testkit-echo", &[], extra)
    }

    /// The raw-protocol test plugin misbehaving in `mode`.
    pub fn raw(name: &str, mode: &str) -> PluginDef {
        PluginDef::bin(name, "plugd-testkit-raw", &[mode], "")
    }

    /// A plugin whose `command` is a path relative to its own directory (a link to `bin` named
    /// `link`, created by the harness), as in the example plugins' manifests.
    pub fn relative(name: &str, bin: &str) -> PluginDef {
        PluginDef {
            files: Vec::new(),
            name: name.to_owned(),
            manifest: format!(
                "name = {name:?}\nversion = \"0.0.1\"\ncommand = \"./link\"\n# link -> {}\n",
                workspace_bin(bin).display()
            ),
        }
    }

    /// A plugin whose manifest is exactly `text`.
    pub fn manifest(name: &str, text: &str) -> PluginDef {
        PluginDef {
            files: Vec::new(),
            name: name.to_owned(),
            manifest: text.to_owned(),
        }
    }

    /// The same plugin with one more file in its directory.
    pub fn with_file(mut self, path: &str, content: &str) -> PluginDef {
        self.files.push((path.to_owned(), content.to_owned()));
        self
    }
}

/// A running `plugd serve`.
pub struct TestSupervisor {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    flags: Vec<String>,
    env: Vec<(String, String)>,
}

/// `plugd serve` in `dir` on any free port, with relative directories as a user running it in a
/// checkout would have them, and none of the caller's `PLUGD_*` settings.
pub fn serve_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plugd"));
    cmd.current_dir(dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--plugins-dir",
            "plugins",
        ])
        .args(["--data-dir", "data", "--runtime-dir", "run"])
        .env_remove("PLUGD_ADMIN_TOKEN")
        .env_remove("PLUGD_CONFIG")
        .env_remove("PLUGD_SECRET_KEY")
        .env_remove("PLUGD_DATABASE_URL");
    cmd
}

/// Starts `plugd serve` in `dir` and waits for the address it announces.
fn spawn_plugd(dir: &Path, flags: &[String], env: &[(String, String)]) -> (Child, SocketAddr) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("plugd.log"))
        .expect("log file");
    let mut child = serve_command(dir)
        .args(flags)
        .env("PLUGD_LOG", "debug,sqlx=warn")
        .env("PLUGD_HOST_TOKEN", HOST_TOKEN)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start plugd");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("plugd listening on http://") {
                let _ = tx.send(addr.parse::<SocketAddr>().expect("address"));
            }
        }
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(addr) => (child, addr),
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join("plugd.log")).unwrap_or_default();
            panic!("plugd did not announce its address within {DEADLINE:?}; log:\n{log}");
        }
    }
}

/// The token with the `host` role every test plugd accepts for firing hooks.
pub const HOST_TOKEN: &str = "host-token-for-the-tests";

impl TestSupervisor {
    /// Starts plugd with `plugins` and extra command-line flags, and waits until it reports ready.
    pub async fn start(plugins: &[PluginDef], flags: &[&str]) -> TestSupervisor {
        TestSupervisor::start_with_env(plugins, flags, &[]).await
    }

    /// Like [`TestSupervisor::start`], with extra environment variables for plugd.
    pub async fn start_with_env(
        plugins: &[PluginDef],
        flags: &[&str],
        env: &[(&str, String)],
    ) -> TestSupervisor {
        TestSupervisor::start_full(plugins, flags, env, None).await
    }

    /// Like [`TestSupervisor::start_with_env`], with a config file (`--config plugd.toml`).
    pub async fn start_full(
        plugins: &[PluginDef],
        flags: &[&str],
        env: &[(&str, String)],
        config: Option<&str>,
    ) -> TestSupervisor {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut flags: Vec<&str> = flags.to_vec();
        if let Some(config) = config {
            std::fs::write(dir.path().join("plugd.toml"), config).expect("config file");
            flags.extend(["--config", "plugd.toml"]);
        }
        let plugins_dir = dir.path().join("plugins");
        for p in plugins {
            p.install(&plugins_dir);
        }
        std::fs::create_dir_all(&plugins_dir).expect("plugins dir");
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let (child, addr) = spawn_plugd(dir.path(), &flags, &env);
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let sup = TestSupervisor {
            child: Some(child),
            addr,
            dir,
            client,
            flags,
            env,
        };
        sup.wait_ready().await;
        sup
    }

    async fn wait_ready(&self) {
        self.wait_until("plugd reports ready", || async {
            self.get("/readyz").await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    /// Stops plugd with SIGTERM and starts it again on the same directories and settings.
    pub async fn restart(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(self.wait_exit().await.code(), Some(0));
        let (child, addr) = spawn_plugd(self.dir.path(), &self.flags, &self.env);
        self.child = Some(child);
        self.addr = addr;
        self.wait_ready().await;
    }

    /// Starts plugd again after it exited, on the same directories and settings.
    pub async fn restart_stopped(&mut self) {
        let (child, addr) = spawn_plugd(self.dir.path(), &self.flags, &self.env);
        self.child = Some(child);
        self.addr = addr;
        self.wait_ready().await;
    }

    /// Kills plugd with SIGKILL (it cleans nothing up) and starts it again on the same
    /// directories and settings.
    pub async fn kill_and_restart(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait_exit().await;
        let (child, addr) = spawn_plugd(self.dir.path(), &self.flags, &self.env);
        self.child = Some(child);
        self.addr = addr;
        self.wait_ready().await;
    }

    /// plugd's working directory (holding `plugins`, `data`, `run` and `plugd.log`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The address plugd listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.client.get(self.url(path)).send().await
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics").await.expect("metrics");
        r.text().await.expect("metrics text")
    }

    /// GET `path` and parse the JSON body, asserting the status.
    pub async fn get_json(&self, path: &str, status: u16) -> serde_json::Value {
        let r = self.get(path).await.expect("request");
        assert_eq!(r.status().as_u16(), status, "GET {path}");
        r.json().await.expect("JSON body")
    }

    /// The `/readyz` entry of plugin `name`.
    pub async fn plugin_status(&self, name: &str) -> serde_json::Value {
        let ready = self.get("/readyz").await.expect("readyz");
        let body: serde_json::Value = ready.json().await.expect("json");
        body["plugins"][name].clone()
    }

    /// Polls `check` until it holds, failing the test after [`DEADLINE`].
    pub async fn wait_until<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.wait_until_within(what, DEADLINE, check).await;
    }

    /// Polls `check` until it holds, failing the test after `deadline`: for conditions that
    /// take several of plugd's own timeouts to come about.
    pub async fn wait_until_within<F, Fut>(&self, what: &str, deadline: Duration, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while !check().await {
            if start.elapsed() > deadline {
                panic!("timed out waiting until {what}; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id of plugd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` to plugd.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal plugd");
    }

    /// Waits for plugd to exit, failing after [`DEADLINE`].
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if start.elapsed() > DEADLINE {
                panic!("plugd did not exit; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether any line plugd logged contains every one of `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.logged_count(parts) > 0
    }

    /// How many lines plugd logged that contain every one of `parts`.
    pub fn logged_count(&self, parts: &[&str]) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("plugd.log")).unwrap_or_default();
        log.lines()
            .filter(|line| parts.iter().all(|p| line.contains(p)))
            .count()
    }

    /// The last lines plugd logged.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("plugd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for TestSupervisor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- plugd log tail ---\n{}", self.log_tail());
        }
    }
}

/// Whether process `pid` is gone (or a zombie nobody has reaped yet, which runs no code).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}
