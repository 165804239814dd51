//! The application: prepares directories, binds, wires the layers together, serves HTTP, and
//! shuts down in order (stop accepting, finish requests in flight, stop plugins, clean up).
//!
//! Construction runs bottom-up, so no part needs another that is built after it: the store,
//! the [`Registry`] the reconcile loop will publish into, the answers to plugins' calls (which
//! reach other plugins through the registry), the reconcile loop with its launcher, and last
//! the HTTP edge with the loop's handle.

mod setup;
mod shards;

use crate::feed::Feed;
use crate::http::{self, Edge, RequestIds};
use crate::ipc::Calls;
use crate::os::cgroups::Cgroups;
use crate::os::orphans;
use crate::settings::Settings;
use crate::store::Store;
use crate::supervise::cluster::{self, Worker};
use crate::supervise::instance::StartContext;
use crate::supervise::peers::RegistryPeers;
use crate::supervise::reconcile::readiness::announce;
use crate::supervise::reconcile::Processes;
use crate::supervise::spare::Spares;
use crate::supervise::{Event, Handle, Reconciler, Registry};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A bound, not yet running supervisor.
#[derive(Debug)]
pub struct Application {
    settings: Settings,
    listener: TcpListener,
    socket_dir: PathBuf,
    store: Store,
    /// Held for plugd's lifetime on the SQLite store: one worker per data directory.
    _worker_lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl Application {
    /// Resolves and creates the data and runtime directories, opens and migrates the store,
    /// and binds the listen address.
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
            None => Some(setup::lock_data_dir(&settings.data_dir)?),
            Some(_) => None,
        };
        let mut store = Store::open(settings.database_url.as_deref(), &settings.data_dir).await?;
        store.migrate().await?;
        store.unlock_secrets(&settings.data_dir).await?;
        tracing::info!(backend = ?store.backend(), "state store ready");
        let socket_dir = setup::private_socket_dir(&settings.runtime_dir)?;
        let listener = setup::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        Ok(Application {
            settings,
            listener,
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
            socket_dir,
            store,
            _worker_lock,
        } = self;
        let addr = listener.local_addr()?;
        // Before the first plugin starts: whatever a plugin abandons is adopted by plugd.
        let subreaper = orphans::become_subreaper();
        let worker = Worker::new();
        let feed = Feed::new(&worker.id);
        let registry = Registry::new(settings.hook_timeout, feed.clone());
        // Detection may remove cgroups an earlier run left, which waits for the kernel.
        let cgroups = Arc::new(if settings.cgroups {
            tokio::task::spawn_blocking(Cgroups::detect)
                .await
                .context("cgroup detection failed")?
        } else {
            Cgroups::Unavailable("turned off by the cgroups setting".into())
        });
        let peers = Arc::new(RegistryPeers::new(registry.clone()));
        let stub = crate::os::stub::stub_program();
        if stub.is_none() && !matches!(*cgroups, Cgroups::Unavailable(_)) {
            tracing::info!(
                "{} is not next to plugd's binary: plugin restarts are not prepared ahead of time",
                crate::os::stub::STUB_PROGRAM
            );
        }
        let spares = Arc::new(Spares::new(stub));
        let shards = shards::Shards::start(settings.http_threads() - 1)?;
        let ctx = StartContext {
            socket_dir: socket_dir.clone(),
            handshake_timeout: settings.handshake_timeout,
            max_frame: usize::try_from(settings.max_frame.as_u64()).unwrap_or(usize::MAX),
            request_timeout: settings.request_timeout,
            max_body: usize::try_from(settings.max_body.as_u64()).unwrap_or(usize::MAX),
            cgroups: cgroups.clone(),
            monitor_interval: settings.monitor_interval,
            calls: Some(Arc::new(Calls::new(store.clone(), peers))),
            spares: spares.clone(),
            lanes: shards.lane_runtimes(),
        };
        let (reconciler, handle) = Reconciler::new(
            settings.plugins_dir.clone(),
            Arc::new(Processes::new(ctx)),
            settings.shutdown_timeout,
            registry.clone(),
            Arc::new(store.clone()),
        );
        let reconciler = reconciler.with_releases(settings.max_builds, canary_policy(&settings));
        let edge = Arc::new(Edge {
            metrics: http::metrics::Metrics::new(registry.clone()),
            registry: registry.clone(),
            store: store.clone(),
            store_probe: http::health::StoreProbe::default(),
            admin_tokens: settings.admin_tokens.clone(),
            reconciler: handle.clone(),
            plugins_dir: settings.plugins_dir.clone(),
            worker: worker.clone(),
            request_ids: RequestIds::default(),
            feed: feed.clone(),
            keep_versions: settings.keep_versions,
            canary_policy: canary_policy(&settings),
            streams: Arc::new(tokio::sync::Semaphore::new(
                http::admin::stream::MAX_STREAMS,
            )),
        });
        let stop_http = tokio_util::sync::CancellationToken::new();
        let app = http::App::new(edge.clone(), settings.access_log);
        let gate = http::serve::Gate::new(http::serve::Limits {
            max_connections: setup::connection_cap(settings.max_connections),
            header_read_timeout: settings.header_read_timeout,
        });
        // The other HTTP threads listen on the address the main one got (port 0 resolved).
        let mut servers = Vec::new();
        for handle in shards.handles() {
            let listener = setup::bind_std(addr)
                .with_context(|| format!("cannot listen on {addr} for another HTTP thread"))?;
            let (app, gate, stop) = (app.clone(), gate.clone(), stop_http.clone());
            servers.push(handle.spawn(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        http::serve::serve(listener, app, gate, stop.cancelled_owned()).await;
                    }
                    Err(e) => tracing::error!("an HTTP thread cannot listen: {e}"),
                }
            }));
        }
        servers.push(tokio::spawn(http::serve::serve(
            listener,
            app,
            gate,
            stop_http.clone().cancelled_owned(),
        )));
        tracing::info!(%addr, "listening");
        if !edge
            .admin_tokens
            .iter()
            .any(|t| t.role != crate::settings::Role::Host)
        {
            tracing::warn!(
                "NO ADMIN TOKEN IS CONFIGURED: the admin API under /admin refuses every request; set PLUGD_ADMIN_TOKEN or [[admin_tokens]] in the config file to use it"
            );
        }
        announce(&format!("plugd listening on http://{addr}"));

        // Read before the reconcile loop reads the desired state, so no change falls between.
        let change_cursor = match settings.database_url {
            Some(_) => Some(cluster::start_cursor(&store).await),
            None => None,
        };
        let reconciling = tokio::spawn(reconciler.run());
        let heartbeat = tokio::spawn(cluster::heartbeat(worker, registry, store.clone()));
        let watching = tokio::spawn(cluster::watch_cluster(store.clone(), feed.clone()));
        let following = settings
            .database_url
            .clone()
            .zip(change_cursor)
            .map(|(url, start)| {
                tokio::spawn(cluster::follow_changes(
                    url,
                    store.clone(),
                    handle.clone(),
                    start,
                ))
            });
        let hangups = tokio::spawn(forward_hangups(handle.clone()));
        let reaping = subreaper.then(|| tokio::spawn(reap_leftovers()));

        shutdown.await;
        hangups.abort();
        if let Some(reaping) = reaping {
            reaping.abort();
        }
        heartbeat.abort();
        watching.abort();
        // Open live streams end now, so they do not hold the HTTP server open.
        feed.close();
        if let Some(following) = following {
            following.abort();
        }
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        // One budget for the whole stop: HTTP requests in flight, then the plugins.
        let deadline = std::time::Instant::now() + settings.shutdown_timeout;
        stop_http.cancel();
        match tokio::time::timeout_at(deadline.into(), futures_util::future::join_all(servers))
            .await
        {
            Ok(ended) => {
                for e in ended.into_iter().filter_map(Result::err) {
                    tracing::warn!("HTTP server task failed: {e}");
                }
            }
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
        if subreaper {
            let _ = tokio::task::spawn_blocking(|| orphans::kill(orphans::Whose::All)).await;
        }
        spares.close().await;
        shards.stop().await;
        cgroups.cleanup().await;
        let _ = std::fs::remove_dir_all(&socket_dir);
        tracing::info!("stopped");
        Ok(())
    }
}

/// How often exited leftovers of plugins are reaped.
const REAP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Collects the exit status of processes plugins abandoned that ended on their own, so none
/// stays a zombie.
async fn reap_leftovers() {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        if tokio::task::spawn_blocking(orphans::reap).await.is_err() {
            return;
        }
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

/// When canaries are rolled back automatically, from the `canary_*` settings.
fn canary_policy(settings: &Settings) -> crate::supervise::canary::CanaryPolicy {
    crate::supervise::canary::CanaryPolicy {
        window: settings.canary_window,
        min_requests: settings.canary_min_requests,
        error_factor: settings.canary_error_factor,
        min_error_ratio: settings.canary_min_error_ratio,
        latency_factor: settings.canary_latency_factor,
        latency_floor: settings.canary_latency_floor,
    }
}
