//! The application: prepares directories, binds, discovers and starts plugins, serves HTTP, and
//! shuts down in order (stop accepting, finish requests in flight, stop plugins, clean up).

use crate::limits::Cgroups;
use crate::plugin::StartContext;
use crate::proxy::{self, AppState};
use crate::reconcile::{Event, Handle, Reconciler};
use crate::settings::Settings;
use crate::store::Store;
use anyhow::{bail, Context};
use axum::routing::{any, get};
use axum::Router;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A bound, not yet running supervisor.
#[derive(Debug)]
pub struct Application {
    settings: Settings,
    listener: TcpListener,
    state: Arc<AppState>,
    socket_dir: PathBuf,
    store: Store,
    /// Held for plugd's lifetime on the SQLite store: one worker per data directory.
    _worker_lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl Application {
    /// Resolves and creates the data and runtime directories and binds the listen address.
    pub async fn build(mut settings: Settings) -> anyhow::Result<Application> {
        // Plugins run in their own directories, so every path handed to them (socket, command)
        // must not depend on plugd's working directory.
        for dir in [
            &mut settings.plugins_dir,
            &mut settings.data_dir,
            &mut settings.runtime_dir,
        ] {
            *dir = std::path::absolute(&*dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
        }
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "cannot create data directory {}",
                settings.data_dir.display()
            )
        })?;
        // SQLite serves one worker: a second plugd on the same data directory is refused.
        let worker_lock = match settings.database_url {
            None => Some(lock_data_dir(&settings.data_dir)?),
            Some(_) => None,
        };
        let store = Store::open(settings.database_url.as_deref(), &settings.data_dir).await?;
        store.migrate().await?;
        tracing::info!(backend = ?store.backend(), "state store ready");
        let socket_dir = private_socket_dir(&settings.runtime_dir)?;
        let listener = bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let mut state = AppState::new(
            store.clone(),
            settings.admin_tokens.clone(),
            settings.plugins_dir.clone(),
        );
        state.hook_timeout = settings.hook_timeout;
        let state = Arc::new(state);
        Ok(Application {
            settings,
            listener,
            state,
            socket_dir,
            store,
            _worker_lock: worker_lock,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains and stops everything. SIGHUP rescans the
    /// plugins directory.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            settings,
            listener,
            state,
            socket_dir,
            store,
            _worker_lock,
        } = self;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/plugins/{*rest}", any(proxy::proxy))
            .route("/plugins/", any(proxy::proxy))
            .route("/healthz", get(proxy::healthz))
            .route("/readyz", get(proxy::readyz))
            .route("/metrics", get(crate::metrics::metrics))
            .route(
                "/hooks/{hook}",
                axum::routing::post(crate::hooks::post_hook),
            )
            .nest("/admin", crate::admin::router(state.clone()))
            .with_state(state.clone());
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = http_stopped.await;
                })
                .await
        });
        tracing::info!(%addr, "listening");
        if state.admin_tokens.is_empty() {
            tracing::warn!(
                "NO ADMIN TOKEN IS CONFIGURED: the admin API under /admin refuses every request; set PLUGD_ADMIN_TOKEN or [[admin_tokens]] in the config file to use it"
            );
        }
        announce(&format!("plugd listening on http://{addr}"));

        let cgroups = Arc::new(if settings.cgroups {
            Cgroups::detect()
        } else {
            Cgroups::Unavailable("turned off by the cgroups setting".into())
        });
        let ctx = StartContext {
            socket_dir: socket_dir.clone(),
            handshake_timeout: settings.handshake_timeout,
            max_frame: usize::try_from(settings.max_frame.as_u64()).unwrap_or(usize::MAX),
            request_timeout: settings.request_timeout,
            max_body: usize::try_from(settings.max_body.as_u64()).unwrap_or(usize::MAX),
            cgroups: cgroups.clone(),
            monitor_interval: settings.monitor_interval,
            calls: Some(crate::kv::calls(state.clone())),
        };
        let (reconciler, handle) = Reconciler::new(
            settings.plugins_dir.clone(),
            ctx,
            settings.shutdown_timeout,
            state.clone(),
            store.clone(),
        );
        let _ = state.reconciler.set(handle.clone());
        let reconciling = tokio::spawn(reconciler.run());
        let heartbeat = tokio::spawn(crate::cluster::heartbeat(state.clone()));
        let following = settings.database_url.clone().map(|url| {
            tokio::spawn(crate::cluster::follow_changes(
                url,
                store.clone(),
                handle.clone(),
            ))
        });
        let hangups = tokio::spawn(forward_hangups(handle.clone()));

        shutdown.await;
        hangups.abort();
        heartbeat.abort();
        if let Some(following) = following {
            following.abort();
        }
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        // One budget for the whole stop: HTTP requests in flight, then the plugins.
        let deadline = std::time::Instant::now() + settings.shutdown_timeout;
        let _ = stop_http.send(());
        match tokio::time::timeout_at(deadline.into(), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("HTTP server error: {e}"),
            Ok(Err(e)) => tracing::warn!("HTTP server task failed: {e}"),
            Err(_) => tracing::warn!(
                "requests still in flight after {:?}; stopping anyway",
                settings.shutdown_timeout
            ),
        }
        let (done, stopped) = tokio::sync::oneshot::channel();
        if handle.send(Event::Shutdown { deadline, done }) {
            let _ = stopped.await;
        }
        let _ = reconciling.await;
        cgroups.cleanup();
        let _ = std::fs::remove_dir_all(&socket_dir);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Turns every SIGHUP into a rescan of the plugins directory.
async fn forward_hangups(handle: Handle) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; rescans only happen on file changes");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("received SIGHUP");
        if !handle.send(Event::Rescan { requested: true }) {
            return;
        }
    }
}

/// Binds the listen address with `SO_REUSEPORT`, so several plugd workers on one host (on the
/// PostgreSQL store) can share the port; the kernel spreads connections across them.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Takes `<data_dir>/plugd.lock` for this process, or says which process holds it.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
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

/// Prints a line for whoever started plugd (scripts and tests wait for these on stdout).
pub(crate) fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Creates `<runtime_dir>/p<pid>`, readable by this user only, for the plugins' sockets.
fn private_socket_dir(runtime_dir: &Path) -> anyhow::Result<PathBuf> {
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

        let link = root.path().join("link");
        std::os::unix::fs::symlink(&runtime, &link).expect("symlink");
        let err = private_socket_dir(&link).expect_err("a symlink");
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
    }
}
