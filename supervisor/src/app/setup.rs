//! What plugd prepares before it serves: the listen socket, the lock that keeps a second
//! worker off a SQLite data directory, and the private directory for the plugins' sockets.

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Binds the listen address with `SO_REUSEPORT`, so several plugd workers on one host (on the
/// PostgreSQL store) can share the port; the kernel spreads connections across them.
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr)?)
}

/// [`bind`] without a runtime: for a thread whose own runtime will register it.
pub(super) fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// File descriptors kept back from HTTP connections, for plugins, the store and plugd itself:
/// a quarter of the limit, and at least this many.
const MIN_FD_RESERVE: u64 = 256;

/// Raises plugd's soft `nofile` limit to its hard limit and returns the connection cap that
/// keeps HTTP connections below it with room to spare (at most `wanted`).
pub(super) fn connection_cap(wanted: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            return wanted;
        }
    };
    let reserve = (soft / 4).max(MIN_FD_RESERVE);
    let room = usize::try_from(soft.saturating_sub(reserve)).unwrap_or(usize::MAX);
    let cap = wanted.min(room).max(1);
    if cap < wanted {
        tracing::warn!(
            nofile = soft,
            "max_connections lowered from {wanted} to {cap} to stay below the open-file limit"
        );
    }
    cap
}

/// Takes `<data_dir>/plugd.lock` for this process, or says which process holds it.
pub(super) fn lock_data_dir(data_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join("plugd.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            lock.rewind()?;
            write!(lock, "{}", std::process::id())?;
            Ok(lock)
        }
        Err((mut file, _)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "another plugd (pid {}) already uses the data directory {} with the SQLite store, which serves one worker; run several workers on PostgreSQL (--database-url postgres://…)",
                holder.trim(),
                data_dir.display()
            )
        }
    }
}

/// Creates `<runtime_dir>/p<pid>`, readable by this user only, for the plugins' sockets.
pub(super) fn private_socket_dir(runtime_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(runtime_dir)
        .with_context(|| format!("cannot create runtime directory {}", runtime_dir.display()))?;
    // Someone else's directory here could swap our socket directory and read the tokens.
    let meta = std::fs::symlink_metadata(runtime_dir)
        .with_context(|| format!("cannot inspect runtime directory {}", runtime_dir.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    {
        use std::os::unix::fs::MetadataExt;
        if !meta.is_dir() {
            bail!(
                "runtime directory {} is not a directory",
                runtime_dir.display()
            );
        }
        if meta.uid() != euid {
            bail!(
                "runtime directory {} belongs to uid {}, not to plugd's uid {euid}; choose another --runtime-dir",
                runtime_dir.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o022 != 0 {
            bail!(
                "runtime directory {} is writable by group or others (mode {:o}); make it 0700 or choose another --runtime-dir",
                runtime_dir.display(),
                meta.mode() & 0o777
            );
        }
    }
    remove_stale_socket_dirs(runtime_dir);
    let dir = runtime_dir.join(format!("p{}", std::process::id()));
    if dir.exists() {
        // Left by an earlier process with the same pid; nothing in it can be in use.
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove stale {}", dir.display()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    // The umask may have narrowed the mode; it must not have widened it, but say exactly.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let longest = dir.join(format!("{}.sock", u64::MAX)).as_os_str().len();
    if longest > MAX_SOCKET_PATH {
        bail!(
            "runtime directory {} is too long for Unix socket paths ({longest} > {MAX_SOCKET_PATH} bytes); choose a shorter --runtime-dir",
            runtime_dir.display()
        );
    }
    Ok(dir)
}

/// Removes the socket directories (`p<pid>`) of plugd processes that are gone (killed with
/// SIGKILL, so they could not clean up). Those of live processes, such as other workers on the
/// same host, stay.
fn remove_stale_socket_dirs(runtime_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(runtime_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix('p'))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!("removed stale socket directory {}", entry.path().display()),
            Err(e) => tracing::warn!(
                "cannot remove stale socket directory {}: {e}",
                entry.path().display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_directory_is_private_and_the_runtime_directory_trusted() {
        let root = tempfile::tempdir().expect("tempdir");
        let runtime = root.path().join("run");
        let dir = private_socket_dir(&runtime).expect("created");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        let open = root.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = private_socket_dir(&open).expect_err("world-writable");
        assert!(
            format!("{err:#}").contains("writable by group or others"),
            "{err:#}"
        );

        // A directory of a process that is gone is removed; one of a live process stays.
        let gone = runtime.join(format!("p{}", u32::MAX - 1));
        let live = runtime.join("p1");
        std::fs::create_dir(&gone).expect("mkdir");
        std::fs::create_dir(&live).expect("mkdir");
        private_socket_dir(&runtime).expect("again");
        assert!(!gone.exists(), "stale directory removed");
        assert!(live.exists(), "pid 1 is alive: its directory stays");

        let link = root.path().join("link");
        std::os::unix::fs::symlink(&runtime, &link).expect("symlink");
        let err = private_socket_dir(&link).expect_err("a symlink");
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
    }
}
