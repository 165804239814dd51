//! A throwaway PostgreSQL for the tests: `PLUGD_TEST_DATABASE_URL` when set, otherwise one
//! cluster per test binary, started from the machine's PostgreSQL server binaries (initdb,
//! pg_ctl) on a free port with a private socket directory, as the `postgres` user when the
//! tests run as root (PostgreSQL refuses to run as root). A watcher stops it and removes its
//! files when the test binary exits. Every test gets a fresh database. A test that stops and
//! starts the server (the outage test) always makes a [`Cluster`] of its own, so it needs the
//! server binaries even when `PLUGD_TEST_DATABASE_URL` is set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

static SERVER: OnceLock<String> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn server_bin(name: &str) -> PathBuf {
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        versions.sort();
        if let Some(dir) = versions.last() {
            let bin = dir.join("bin").join(name);
            if bin.exists() {
                return bin;
            }
        }
    }
    PathBuf::from(name)
}

fn as_postgres_user(cmd: &Path, args: &[&str]) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd).args(args);
        c
    } else {
        let mut c = Command::new(cmd);
        c.args(args);
        c
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: {e} (is PostgreSQL installed? scripts/test installs it)")
    });
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL server of the tests' own, started from the machine's server binaries.
pub struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    /// Creates and starts a new cluster on a free port. Its files are removed, and the server
    /// stopped, when this test binary exits (or when the value is dropped).
    pub fn start_new() -> Cluster {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "plugd-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).expect("pg dir");
        if nix::unistd::geteuid().is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&dir);
                    c
                },
                "chown the cluster directory",
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let cluster = Cluster { dir, port };
        let data = cluster.data();
        run(
            as_postgres_user(
                &server_bin("initdb"),
                &[
                    "-D",
                    &data,
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            ),
            "initdb",
        );
        cluster.start();
        // Stop the cluster and remove its files once this test binary is gone.
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; {} >/dev/null 2>&1; rm -rf {}",
            std::process::id(),
            cluster.stop_command(),
            cluster.dir.display()
        );
        // Not waited for on purpose: it must outlive this process.
        #[allow(clippy::zombie_processes)]
        let _watcher = Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cluster watcher");
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn stop_command(&self) -> String {
        let pg_ctl = server_bin("pg_ctl").display().to_string();
        let stop = format!("{pg_ctl} -D {} -m immediate stop", self.data());
        if nix::unistd::geteuid().is_root() {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        }
    }

    /// Starts the server (again), on the same port, and waits until it accepts connections.
    pub fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.join("sock").display()
        );
        let log = self.dir.join("server.log").display().to_string();
        run(
            as_postgres_user(
                &server_bin("pg_ctl"),
                &[
                    "-D",
                    &self.data(),
                    "-o",
                    &opts,
                    "-l",
                    &log,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ),
            "pg_ctl start",
        );
    }

    /// Stops the server the way an operator would for maintenance: clients are disconnected,
    /// and nothing is served until [`Cluster::start`].
    pub fn stop(&self) {
        run(
            as_postgres_user(
                &server_bin("pg_ctl"),
                &["-D", &self.data(), "-m", "fast", "-w", "stop"],
            ),
            "pg_ctl stop",
        );
    }

    /// The URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", &format!("{} >/dev/null 2>&1", self.stop_command())])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_cluster() -> String {
    if let Ok(url) = std::env::var("PLUGD_TEST_DATABASE_URL") {
        return url;
    }
    // Kept for the whole test binary: the watcher removes it at exit.
    let cluster = std::mem::ManuallyDrop::new(Cluster::start_new());
    cluster.url()
}

/// The URL of a fresh, empty database for one test.
pub async fn fresh_database() -> String {
    let server = SERVER.get_or_init(start_cluster).clone();
    database_on(&server).await
}

/// A fresh, empty database on the server at `server` (a URL of any database on it).
pub async fn database_on(server: &str) -> String {
    let name = format!(
        "plugd_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(server)
        .await
        .expect("connect to the test server");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
    format!("{base}/{name}")
}
