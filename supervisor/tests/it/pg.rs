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

/// A TCP proxy in front of a database server whose connections can be made to go silent:
/// bytes stop flowing both ways while the sockets stay open, as in a network partition or
/// with a host that vanished without a reset. Connections made afterwards flow normally.
pub struct SilentProxy {
    era: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl SilentProxy {
    /// Starts a proxy to the server of `url`, and returns it with `url` rewritten to use it.
    pub async fn start(url: &str) -> (SilentProxy, String) {
        let (_, rest) = url.split_once('@').expect("a URL with user@host:port");
        let server = rest.split('/').next().expect("host:port").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let era = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let shared = era.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(&server).await else {
                    continue;
                };
                let born = shared.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = upstream.into_split();
                tokio::spawn(pipe(client_read, server_write, shared.clone(), born));
                tokio::spawn(pipe(server_read, client_write, shared.clone(), born));
            }
        });
        let proxied = url.replacen(
            rest.split('/').next().unwrap_or_default(),
            &addr.to_string(),
            1,
        );
        (SilentProxy { era, accept }, proxied)
    }

    /// Every connection open now goes silent, for good.
    pub fn silence(&self) {
        self.era.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies bytes one way until either side closes, or holds them (and the sockets) for ever
/// once the proxy's era moved past the one the connection was made in.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    era: std::sync::Arc<std::sync::atomic::AtomicU64>,
    born: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if era.load(Ordering::SeqCst) != born {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
