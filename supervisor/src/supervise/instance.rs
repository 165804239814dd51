//! One plugin instance's life: [`start_instance`] runs the start sequence (a fresh socket in
//! the private runtime directory, the process through [`crate::os::spawn`], the handshake
//! within its deadline, the route table); [`follow_instance`] then reports the instance's exit
//! (at once, from a task that waits on the process), its failed health checks and its limit
//! breaches; [`stop_instance`] asks it to shut down, then kills what is left.
//!
//! These functions never change a plugin's visible state: they report to the reconcile loop,
//! which decides.

use super::router::RouteTable;
use super::settings::{to_wire, Applied};
use super::spare::Spares;
use crate::error::Failure;
use crate::ipc::{self, CallError, Calls, Connection, Expected, LaneExpected, LaneRuntimes, Lanes};
use crate::manifest::Manifest;
use crate::os::cgroups::{Cgroups, Leaf};
use crate::os::limits::EffectiveLimits;
use crate::os::orphans::{self, Whose};
use crate::os::output::LogRing;
use crate::os::rlimits::Rlimits;
use crate::os::spawn::{self, exit_reason, SpawnSpec};
use crate::os::usage::{self, Usage, Verdict};
use nix::sys::signal::Signal;
use plugd_protocol::message::control::{Shutdown, ShutdownParams};
use plugd_protocol::message::handshake::{HookDecl, PermissionDecl};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};

/// One running instance of a plugin.
#[derive(Debug)]
pub struct Instance {
    /// Process id (also its process group id).
    pub pid: u32,
    /// Instance epoch, new at every start.
    pub epoch: u64,
    /// The version the plugin reported in its handshake.
    pub version: String,
    /// The manifest it was started from.
    pub manifest: Arc<Manifest>,
    /// Its limits, defaults filled in.
    pub limits: EffectiveLimits,
    /// One permit per request it may have in flight.
    pub in_flight: Arc<Semaphore>,
    /// Permits for open streams, [`EffectiveLimits::max_streams`] of them.
    pub streams: Arc<Semaphore>,
    /// The latest resource sample.
    pub usage: Mutex<Option<Usage>>,
    /// Its cgroup, when plugd can create one.
    leaf: Option<Leaf>,
    /// The protocol connection: the first one, which carries everything but the HTTP
    /// requests that have a lane.
    pub conn: Arc<Connection>,
    /// Its lanes (see [`ipc::lane`]), each set once open.
    pub lanes: Arc<Lanes>,
    /// Its routes.
    pub routes: RouteTable,
    /// The hooks it handles.
    pub hooks: Vec<HookDecl>,
    /// The permissions it defines.
    pub permissions: Vec<PermissionDecl>,
    /// The services it provides.
    pub services: Vec<String>,
    /// When it became ready.
    pub ready_at: Instant,
    /// The settings it runs with; held while new ones are offered to it.
    pub settings: tokio::sync::Mutex<Applied>,
    /// Set to the exit reason once the process has exited.
    exited: watch::Receiver<Option<String>>,
    /// Set once its cgroup and leftovers are gone: a stop and the follower both get there,
    /// and the second waits for the first instead of doing it again.
    cleaned: tokio::sync::OnceCell<()>,
}

impl Instance {
    /// An instance with no process behind it, for tests of the reconcile loop: its connection's
    /// other end is closed and it has no pid, so nothing can signal a process through it.
    #[cfg(test)]
    pub(crate) fn detached(manifest: Arc<Manifest>, epoch: u64) -> Instance {
        let limits = EffectiveLimits::resolve(&manifest.limits, Duration::from_secs(30), 1 << 20);
        let (_, exited) = watch::channel(None);
        Instance {
            pid: 0,
            epoch,
            version: manifest.version.clone(),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight as usize)),
            streams: Arc::new(Semaphore::new(limits.max_streams as usize)),
            limits,
            usage: Mutex::new(None),
            leaf: None,
            conn: Connection::detached(&manifest.name),
            lanes: Arc::default(),
            manifest,
            routes: RouteTable::build(&[]).expect("an empty route table"),
            hooks: Vec::new(),
            permissions: Vec::new(),
            services: Vec::new(),
            ready_at: Instant::now(),
            settings: Default::default(),
            exited,
            cleaned: tokio::sync::OnceCell::new(),
        }
    }

    /// Removes its cgroup (killing what is left in it) and ends what it left outside its
    /// process group; done once, whoever asks first.
    async fn clean_up(&self) {
        self.cleaned
            .get_or_init(|| async {
                if let Some(leaf) = &self.leaf {
                    leaf.remove().await;
                }
                end_leftovers(&self.manifest.name, self.epoch).await;
            })
            .await;
    }

    /// The connection for a plain HTTP request made on this thread: its lane when open, the
    /// first connection otherwise.
    pub fn http_conn(&self) -> &Arc<Connection> {
        match ipc::lane::current() {
            0 => &self.conn,
            lane => self.lanes.get(lane).unwrap_or(&self.conn),
        }
    }

    /// Closes the first connection and the lanes, failing every call waiting on them with
    /// `reason`.
    pub fn close(&self, reason: &str) {
        self.conn.close(reason);
        self.lanes.close(reason);
    }

    /// Calls waiting for the plugin's answer, on every connection.
    pub fn calls_in_flight(&self) -> usize {
        self.conn.in_flight() + self.lanes.in_flight()
    }

    /// The latest resource sample, if one was taken.
    pub fn usage_now(&self) -> Option<Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What every plugin start needs from the supervisor's settings.
#[derive(Debug, Clone)]
pub struct StartContext {
    /// The private directory for sockets.
    pub socket_dir: PathBuf,
    /// Deadline for connect + handshake.
    pub handshake_timeout: Duration,
    /// Largest frame the supervisor accepts.
    pub max_frame: usize,
    /// Default request timeout for manifests that set none.
    pub request_timeout: Duration,
    /// Default body limit for manifests that set none.
    pub max_body: usize,
    /// The cgroup hierarchy plugd writes, if any.
    pub cgroups: Arc<Cgroups>,
    /// Time between resource samples (zero: no monitoring).
    pub monitor_interval: Duration,
    /// Answers plugins' own calls (the key-value store, services, hooks).
    pub calls: Option<Arc<Calls>>,
    /// Each plugin's next start, prepared ahead of time.
    pub spares: Arc<Spares>,
    /// The runtimes of the lanes offered to each instance (none: no lanes).
    pub lanes: LaneRuntimes,
}

/// A number that is new at every start, also across supervisor restarts: the time in
/// microseconds, bumped when two starts fall in the same microsecond.
pub fn next_epoch() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => prev = seen,
        }
    }
}

fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// How long the connection of a plugin that exited has to read what the plugin wrote before
/// it went (its socket ends as soon as that is read).
const READ_THE_REST: Duration = Duration::from_millis(200);

/// Lets the connection of an exited plugin read the answers still in its socket before it is
/// closed: a plugin that answered and then exited (a graceful stop) must not have its last
/// answers reported to their callers as lost.
async fn read_the_rest(conn: &Connection) {
    let _ = tokio::time::timeout(READ_THE_REST, conn.closed()).await;
}

/// Waits until the process has exited and returns why.
async fn wait_exit(exited: &mut watch::Receiver<Option<String>>) -> String {
    match exited.wait_for(|r| r.is_some()).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        Err(_) => "the process watcher stopped".into(),
    }
}

/// Starts one instance of `manifest` with `epoch`. `on_spawned` is called with the pid once the
/// process runs and the handshake is awaited.
pub async fn start_instance(
    manifest: Arc<Manifest>,
    epoch: u64,
    ctx: &StartContext,
    logs: Arc<LogRing>,
    on_spawned: impl FnOnce(u32),
    settings: Applied,
) -> Result<Arc<Instance>, Failure> {
    let token = new_token();
    let limits = EffectiveLimits::resolve(&manifest.limits, ctx.request_timeout, ctx.max_body);
    let (leaf, stub) = match ctx.spares.take(&manifest, &limits) {
        Some(spare) => (Some(spare.leaf), Some(spare.spawned)),
        None => (
            ctx.cgroups
                .create_leaf(&manifest.name, epoch, &limits)
                .await,
            None,
        ),
    };
    let result = start_in(
        manifest.clone(),
        epoch,
        ctx,
        logs.clone(),
        on_spawned,
        token,
        limits.clone(),
        (&leaf, stub),
        settings,
    )
    .await;
    match result {
        Ok(parts) => {
            if leaf.is_some() {
                ctx.spares
                    .prepare(&ctx.cgroups, manifest, limits, logs, epoch);
            }
            Ok(Arc::new(Instance { leaf, ..parts }))
        }
        Err(e) => {
            if let Some(leaf) = &leaf {
                leaf.remove().await;
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_in(
    manifest: Arc<Manifest>,
    epoch: u64,
    ctx: &StartContext,
    logs: Arc<LogRing>,
    on_spawned: impl FnOnce(u32),
    token: String,
    limits: EffectiveLimits,
    (leaf, stub): (&Option<Leaf>, Option<spawn::Spawned>),
    settings: Applied,
) -> Result<Instance, Failure> {
    let socket = ctx.socket_dir.join(format!("{epoch}.sock"));
    let listener = UnixListener::bind(&socket).map_err(|e| {
        Failure::from_io(
            format!("cannot create socket {}: {e}", socket.display()),
            &e,
        )
    })?;
    let spec = SpawnSpec {
        manifest: &manifest,
        socket: &socket,
        token: &token,
        epoch,
        max_frame: ctx.max_frame,
        logs,
        rlimits: Rlimits::for_limits(&limits),
        cgroup_procs: leaf.as_ref().map(Leaf::procs_files).unwrap_or_default(),
    };
    let spawned = match stub {
        Some(stub) => from_stub(stub, &spec).await,
        None => spawn::spawn(&spec).await,
    };
    let spawn::Spawned {
        mut child, output, ..
    } = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    let pid = child.id().unwrap_or(0);
    on_spawned(pid);
    let (exit_tx, mut exited) = watch::channel(None::<String>);
    tokio::spawn(async move {
        let reason = exit_reason(child.wait().await);
        orphans::exited(pid);
        // Its last lines may still be in the pipes; they explain the exit, so read them first
        // (briefly: a child it left behind may hold the pipes open).
        let _ = tokio::time::timeout(Duration::from_millis(500), output).await;
        let _ = exit_tx.send(Some(reason));
    });

    let expected = Expected {
        name: &manifest.name,
        token: &token,
        epoch,
        max_frame: ctx.max_frame,
        settings: to_wire(&settings.values),
        stream_window: limits.stream_window,
        lanes: ctx.lanes.count(),
    };
    let connect_and_handshake = async {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(|e| Failure::from_io(format!("accept failed: {e}"), &e))?;
        ipc::handshake(stream, &expected, ctx.calls.clone(), |hello| {
            // Off the runtime's threads: the handshake deadline stays in force around it, and
            // nothing else waits while a large table is built.
            let routes = hello.routes.clone();
            async move {
                tokio::task::spawn_blocking(move || RouteTable::build(&routes))
                    .await
                    .map_err(|e| format!("building the route table failed: {e}"))?
            }
        })
        .await
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(ctx.handshake_timeout, connect_and_handshake) => match r {
            Ok(r) => r,
            Err(_) => Err(Failure::later(format!(
                "no handshake within {:?}",
                ctx.handshake_timeout
            ))),
        },
        reason = wait_exit(&mut exited) => Err(Failure::later(format!(
            "{reason} before completing the handshake"
        ))),
    };
    let (hello, routes, conn) = match outcome {
        Ok(done) => done,
        Err(e) => {
            drop(listener);
            let _ = std::fs::remove_file(&socket);
            spawn::signal_group(pid, Signal::SIGKILL);
            end_leftovers(&manifest.name, epoch).await;
            return Err(e);
        }
    };
    // The lanes the welcome asked for open after it, while the instance already serves on its
    // first connection; the socket stays until they are open or their time is up.
    let agreed = ipc::handshake::agreed(&expected, &hello);
    let lanes = Arc::new(Lanes::new(agreed.lanes as usize));
    if agreed.lanes == 0 {
        drop(listener);
        let _ = std::fs::remove_file(&socket);
    } else {
        let opening = ipc::lane::accept(
            listener,
            LaneExpected {
                plugin: manifest.name.clone(),
                token: token.clone(),
                epoch,
                max_frame: agreed.max_frame,
            },
            lanes.clone(),
            ctx.lanes.clone(),
            conn.clone(),
            tokio::time::Instant::now() + ctx.handshake_timeout,
        );
        tokio::spawn(async move {
            opening.await;
            let _ = std::fs::remove_file(&socket);
        });
    }
    Ok(Instance {
        pid,
        epoch,
        version: hello.version,
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight as usize)),
        streams: Arc::new(Semaphore::new(limits.max_streams as usize)),
        limits,
        usage: Mutex::new(None),
        leaf: None,
        manifest,
        conn,
        lanes,
        routes,
        hooks: hello.hooks,
        permissions: hello.permissions,
        services: hello.services,
        ready_at: Instant::now(),
        settings: tokio::sync::Mutex::new(settings),
        exited,
        cleaned: tokio::sync::OnceCell::new(),
    })
}

/// Starts the instance from a prepared stub (see [`Spares`]); when the stub cannot take the
/// order (it died meanwhile), ends it and starts the usual way, in the same leaf.
async fn from_stub(
    mut stub: spawn::Spawned,
    spec: &SpawnSpec<'_>,
) -> Result<spawn::Spawned, Failure> {
    let ordered = match spawn::stub_order(spec) {
        Some(order) => spawn::order_stub(&mut stub, &order).await,
        None => Err(std::io::Error::other(
            "the program or socket path is not UTF-8",
        )),
    };
    match ordered {
        Ok(()) => Ok(stub),
        Err(e) => {
            tracing::debug!(plugin = %spec.manifest.name, "prepared start unusable ({e}); starting it the usual way");
            spawn::kill_and_reap(&mut stub.child).await;
            spawn::spawn(spec).await
        }
    }
}

/// How long a plugin that closed its connection has to exit on its own before it is killed.
const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(2);

/// What [`follow_instance`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEvent {
    /// The process exited (or was killed after its connection broke), with the reason.
    Exited(String),
    /// The plugin did not answer a health ping in time; it has not been killed yet.
    Unresponsive(String),
    /// The plugin went past a hard limit the kernel does not enforce; not killed yet.
    LimitBreach(String),
    /// Its connection closed before the process was seen to exit (a process that dies closes
    /// it first): it can serve nothing more. `Exited` follows.
    Disconnected,
}

/// Follows a ready instance until its process is gone, reporting each event through `report`.
///
/// Pings it every `health.interval`; a ping unanswered within `health.timeout` is reported as
/// `Unresponsive` (the caller decides to kill). A connection cut off for a bad frame kills the
/// process at once; one the plugin closed itself gets [`EXIT_AFTER_CLOSE`] to exit on its own.
pub async fn follow_instance(
    instance: Arc<Instance>,
    monitor_interval: Duration,
    report: impl Fn(InstanceEvent),
) {
    let mut exited = instance.exited.clone();
    let health = instance.manifest.health.clone();
    let pings = async {
        loop {
            tokio::time::sleep(health.interval).await;
            match instance.conn.ping(health.timeout).await {
                Ok(()) => {}
                Err(CallError::Timeout(after)) => {
                    report(InstanceEvent::Unresponsive(format!(
                        "no answer to a health ping within {after:?}"
                    )));
                    // Keep waiting for the exit; the caller kills it.
                    std::future::pending::<()>().await;
                }
                Err(e @ (CallError::Remote(_) | CallError::Protocol(_))) => {
                    report(InstanceEvent::Unresponsive(format!(
                        "answered a health ping with an error: {e}"
                    )));
                    std::future::pending::<()>().await;
                }
                // Closed: the exit is on its way.
                Err(_) => std::future::pending::<()>().await,
            }
        }
    };
    let monitor = async {
        if monitor_interval.is_zero() {
            return std::future::pending::<()>().await;
        }
        let mut previous = None;
        let mut over_soft = false;
        loop {
            tokio::time::sleep(monitor_interval).await;
            let Some(usage) = usage::sample(instance.pid, instance.leaf.as_ref(), previous) else {
                continue;
            };
            previous = Some((Instant::now(), usage.cpu_seconds));
            let verdict = usage::judge(&usage, &instance.limits, instance.leaf.as_ref());
            *instance.usage.lock().unwrap_or_else(|e| e.into_inner()) = Some(usage);
            match verdict {
                Verdict::Fine => over_soft = false,
                Verdict::Soft(why) => {
                    if !over_soft {
                        tracing::warn!(plugin = %instance.manifest.name, pid = instance.pid, "{why}");
                    }
                    over_soft = true;
                }
                Verdict::Hard(why) => {
                    report(InstanceEvent::LimitBreach(why));
                    return std::future::pending::<()>().await;
                }
            }
        }
    };
    let exit = tokio::select! {
        reason = wait_exit(&mut exited) => {
            read_the_rest(&instance.conn).await;
            reason
        }
        _ = instance.conn.closed() => {
            report(InstanceEvent::Disconnected);
            let grace = if instance.conn.was_cut_off() { Duration::ZERO } else { EXIT_AFTER_CLOSE };
            match tokio::time::timeout(grace, wait_exit(&mut exited)).await {
                Ok(reason) => reason,
                Err(_) => {
                    spawn::signal_group(instance.pid, Signal::SIGKILL);
                    wait_exit(&mut exited).await
                }
            }
        }
        _ = pings => unreachable!("the ping loop never ends by itself"),
        _ = monitor => unreachable!("the monitor never ends by itself"),
    };
    // The requests this death failed over (to a warm standby) go out before its bookkeeping.
    tokio::task::yield_now().await;
    let oom = instance.leaf.as_ref().map_or(0, Leaf::oom_kills);
    let reason = match instance.conn.close_reason() {
        Some(cut) if instance.conn.was_cut_off() => format!("{cut}; {exit}"),
        _ if oom > 0 => format!(
            "killed by the kernel's OOM killer: memory limit {} exceeded ({exit})",
            bytesize::ByteSize(instance.limits.memory)
        ),
        _ => exit,
    };
    instance.close(&reason);
    // Children it left in its group go with it, and so does its cgroup. The exit is reported
    // first: the restart need not wait for the kernel to let go of the old cgroup, and the
    // leftovers are this instance's only (by epoch and leaf).
    spawn::signal_group(instance.pid, Signal::SIGKILL);
    report(InstanceEvent::Exited(reason));
    instance.clean_up().await;
}

/// Kills the instance's whole process group now.
pub fn kill_instance(instance: &Instance) {
    spawn::signal_group(instance.pid, Signal::SIGKILL);
}

/// Asks an instance to shut down within `grace` (it finishes its requests in flight), then
/// kills what is left. Returns how it ended.
pub async fn stop_instance(instance: &Instance, grace: Duration) -> String {
    let deadline = Instant::now() + grace;
    // The plugin drains for most of the grace period and keeps the rest for its on_unload and
    // its exit, so a clean stop never races the kill.
    let params = ShutdownParams {
        grace_ms: (grace.as_millis() as u64) * 3 / 4,
    };
    if let Err(e) = instance.conn.call::<Shutdown>(&params, grace).await {
        tracing::debug!(plugin = %instance.manifest.name, "shutdown request: {e}");
    }
    let mut exited = instance.exited.clone();
    let left = deadline.saturating_duration_since(Instant::now());
    let exit = match tokio::time::timeout(left, wait_exit(&mut exited)).await {
        Ok(exit) => exit,
        Err(_) => {
            tracing::warn!(plugin = %instance.manifest.name, pid = instance.pid, "did not exit within {grace:?}; killing it");
            spawn::signal_group(instance.pid, Signal::SIGKILL);
            tokio::time::timeout(Duration::from_secs(5), wait_exit(&mut exited))
                .await
                .unwrap_or_else(|_| "did not exit after SIGKILL".into())
        }
    };
    spawn::signal_group(instance.pid, Signal::SIGKILL);
    read_the_rest(&instance.conn).await;
    instance.close("the plugin was stopped");
    instance.clean_up().await;
    exit
}

/// Kills what an instance left behind outside its process group (a `setsid` daemon), found as
/// plugd's adopted children; see [`orphans`].
async fn end_leftovers(plugin: &str, epoch: u64) {
    let plugin = plugin.to_owned();
    let killing = tokio::task::spawn_blocking(move || {
        orphans::kill(Whose::Instance {
            plugin: &plugin,
            epoch,
        })
    });
    if let Err(e) = killing.await {
        tracing::warn!("cannot end a plugin's leftover processes: {e}");
    }
}
