//! A throwaway PostgreSQL for the tests: `PLUGD_TEST_DATABASE_URL` when set, otherwise one
//! cluster per test binary, started from the machine's PostgreSQL server binaries (initdb,
//! pg_ctl) on a free port with a private socket directory, as the `postgres` user when the
//! tests run as root (PostgreSQL refuses to run as root). A watcher stops it and removes its
//! files when the test binary exits. Every test gets a fresh database.

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

fn start_cluster() -> String {
    if let Ok(url) = std::env::var("PLUGD_TEST_DATABASE_URL") {
        return url;
    }
    let dir = std::env::temp_dir().join(format!("plugd-pg-{}", std::process::id()));
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
    let data = dir.join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let data_s = data.display().to_string();
    run(
        as_postgres_user(
            &server_bin("initdb"),
            &[
                "-D",
                &data_s,
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
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
        dir.join("sock").display()
    );
    let log = dir.join("server.log").display().to_string();
    run(
        as_postgres_user(
            &server_bin("pg_ctl"),
            &[
                "-D", &data_s, "-o", &opts, "-l", &log, "-w", "-t", "60", "start",
            ],
        ),
        "pg_ctl start",
    );
    // Stop the cluster and remove its files once this test binary is gone.
    let pg_ctl = server_bin("pg_ctl").display().to_string();
    let stop = if nix::unistd::geteuid().is_root() {
        format!("runuser -u postgres -- {pg_ctl} -D {data_s} -m immediate stop")
    } else {
        format!("{pg_ctl} -D {data_s} -m immediate stop")
    };
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {}",
        std::process::id(),
        dir.display()
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
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// The URL of a fresh, empty database for one test.
pub async fn fresh_database() -> String {
    let server = SERVER.get_or_init(start_cluster).clone();
    let name = format!(
        "plugd_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&server)
        .await
        .expect("connect to the test server");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}
