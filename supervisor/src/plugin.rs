//! Starting and stopping plugins, and the current state of each.
//!
//! A [`PluginSlot`] holds one plugin's manifest and its state. [`start`] runs the whole start
//! sequence: a fresh socket in the private runtime directory, the process through
//! [`crate::process::spawn`], the handshake within its deadline, and the route table; a plugin
//! that fails any step is left in `failed` with the reason, and the others are unaffected. A
//! task waits on each process, so an exit is seen at once, and a connection cut off for a bad
//! frame kills its process.

use crate::ipc::{self, Connection, Expected};
use crate::manifest::Manifest;
use crate::process::{self, SpawnSpec};
use crate::router::RouteTable;
use arc_swap::ArcSwap;
use nix::sys::signal::Signal;
use plugd_protocol::message::control::{Shutdown, ShutdownParams};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UnixListener;
use tokio::sync::watch;

/// What a plugin is doing now.
#[derive(Debug)]
pub enum PluginState {
    /// Its process is starting and has not finished the handshake.
    Starting,
    /// Handshake done: serving requests.
    Ready(Arc<Instance>),
    /// Asked to shut down: finishing requests in flight, taking no new ones.
    Draining,
    /// Could not start, or stopped unexpectedly; the reason says why.
    Failed(String),
    /// Stopped on purpose.
    Stopped(String),
}

impl PluginState {
    /// The state's name as admins see it.
    pub fn name(&self) -> &'static str {
        match self {
            PluginState::Starting => "starting",
            PluginState::Ready(_) => "ready",
            PluginState::Draining => "draining",
            PluginState::Failed(_) => "failed",
            PluginState::Stopped(_) => "stopped",
        }
    }
}

/// One running instance of a plugin: its process, connection and routes.
#[derive(Debug)]
pub struct Instance {
    /// Process id (also its process group id).
    pub pid: u32,
    /// Instance epoch, new at every start.
    pub epoch: u64,
    /// The version the plugin reported in its handshake.
    pub version: String,
    /// The protocol connection.
    pub conn: Arc<Connection>,
    /// Its routes.
    pub routes: RouteTable,
    /// Set to the exit reason once the process has exited.
    exited: watch::Receiver<Option<String>>,
}

/// One plugin: its manifest, effective limits and state.
#[derive(Debug)]
pub struct PluginSlot {
    /// The manifest it was discovered with.
    pub manifest: Manifest,
    /// Time it has to answer one HTTP request.
    pub request_timeout: Duration,
    /// Largest request body forwarded to it.
    pub max_body: usize,
    state: ArcSwap<PluginState>,
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
}

impl PluginSlot {
    /// A slot for `manifest`, not yet started.
    pub fn new(manifest: Manifest, request_timeout: Duration, max_body: usize) -> Arc<PluginSlot> {
        Arc::new(PluginSlot {
            request_timeout: manifest.limits.request_timeout.unwrap_or(request_timeout),
            max_body: manifest.limits.max_body.map_or(max_body, |b| {
                usize::try_from(b.as_u64()).unwrap_or(usize::MAX)
            }),
            manifest,
            state: ArcSwap::from_pointee(PluginState::Stopped("not started".into())),
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The current state.
    pub fn state(&self) -> Arc<PluginState> {
        self.state.load_full()
    }

    fn set(&self, state: PluginState) {
        tracing::info!(plugin = %self.name(), state = state.name(), "{}", describe(&state));
        self.state.store(Arc::new(state));
    }

    /// Moves to `state` only if instance `epoch` is still the current one.
    fn set_if_current(&self, epoch: u64, state: PluginState) {
        let current = self.state.load();
        if let PluginState::Ready(instance) = &**current {
            if instance.epoch == epoch {
                self.set(state);
            }
        }
    }
}

fn describe(state: &PluginState) -> String {
    match state {
        PluginState::Ready(i) => format!(
            "ready: pid {}, version {}, {} routes",
            i.pid,
            i.version,
            i.routes.len()
        ),
        PluginState::Failed(reason) => format!("failed: {reason}"),
        PluginState::Stopped(reason) => format!("stopped: {reason}"),
        other => other.name().to_owned(),
    }
}

/// A number that is new at every start, also across supervisor restarts: the time in
/// microseconds, bumped when two starts fall in the same microsecond.
fn next_epoch() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
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

fn exit_reason(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(sig) => format!("killed by signal {sig}"),
                Err(_) => format!("killed by signal {sig}"),
            },
            _ => format!("exited: {s}"),
        },
        Err(e) => format!("cannot wait for the process: {e}"),
    }
}

/// Waits until the process has exited and returns why.
async fn wait_exit(exited: &mut watch::Receiver<Option<String>>) -> String {
    match exited.wait_for(|r| r.is_some()).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        Err(_) => "the process watcher stopped".into(),
    }
}

/// Starts `slot`'s plugin and leaves it `ready` or `failed`.
pub async fn start(slot: Arc<PluginSlot>, ctx: StartContext) {
    slot.set(PluginState::Starting);
    match try_start(&slot, &ctx).await {
        Ok(instance) => slot.set(PluginState::Ready(instance)),
        Err(reason) => slot.set(PluginState::Failed(reason)),
    }
}

async fn try_start(slot: &Arc<PluginSlot>, ctx: &StartContext) -> Result<Arc<Instance>, String> {
    let epoch = next_epoch();
    let token = new_token();
    let socket = ctx.socket_dir.join(format!("{epoch}.sock"));
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("cannot create socket {}: {e}", socket.display()))?;
    let spec = SpawnSpec {
        manifest: &slot.manifest,
        socket: &socket,
        token: &token,
        epoch,
        max_frame: ctx.max_frame,
    };
    let spawned = process::spawn(&spec);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(format!("{e:#}"));
        }
    };
    let pid = child.id().unwrap_or(0);
    let (exit_tx, mut exited) = watch::channel(None::<String>);
    tokio::spawn(async move {
        let reason = exit_reason(child.wait().await);
        let _ = exit_tx.send(Some(reason));
    });

    let expected = Expected {
        name: &slot.manifest.name,
        token: &token,
        epoch,
        max_frame: ctx.max_frame,
    };
    let connect_and_handshake = async {
        let (stream, _) = listener
            .accept()
            .await
            .map_err(|e| format!("accept failed: {e}"))?;
        ipc::handshake(stream, &expected, |hello| RouteTable::build(&hello.routes)).await
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(ctx.handshake_timeout, connect_and_handshake) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("no handshake within {:?}", ctx.handshake_timeout)),
        },
        reason = wait_exit(&mut exited) => Err(format!("{reason} before completing the handshake")),
    };
    drop(listener);
    let _ = std::fs::remove_file(&socket);
    let (hello, routes, conn) = match outcome {
        Ok(done) => done,
        Err(reason) => {
            process::signal_group(pid, Signal::SIGKILL);
            return Err(reason);
        }
    };
    let instance = Arc::new(Instance {
        pid,
        epoch,
        version: hello.version,
        conn,
        routes,
        exited,
    });
    tokio::spawn(watch_instance(slot.clone(), instance.clone()));
    Ok(instance)
}

/// How long a plugin that closed its connection has to exit on its own before it is killed.
const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(2);

/// Follows a ready instance: the process's exit closes the connection and records why; a
/// connection cut off for a bad frame kills the process at once, and a plugin that closed its
/// connection but keeps running is killed after [`EXIT_AFTER_CLOSE`].
async fn watch_instance(slot: Arc<PluginSlot>, instance: Arc<Instance>) {
    let mut exited = instance.exited.clone();
    let exit = tokio::select! {
        reason = wait_exit(&mut exited) => reason,
        _ = instance.conn.closed() => {
            let grace = if instance.conn.was_cut_off() { Duration::ZERO } else { EXIT_AFTER_CLOSE };
            match tokio::time::timeout(grace, wait_exit(&mut exited)).await {
                Ok(reason) => reason,
                Err(_) => {
                    process::signal_group(instance.pid, Signal::SIGKILL);
                    wait_exit(&mut exited).await
                }
            }
        }
    };
    let reason = match instance.conn.close_reason() {
        Some(cut) if instance.conn.was_cut_off() => format!("{cut}; {exit}"),
        _ => exit,
    };
    instance.conn.close(&reason);
    // Children it left in its group go with it.
    process::signal_group(instance.pid, Signal::SIGKILL);
    slot.set_if_current(instance.epoch, PluginState::Failed(reason));
}

/// Stops `slot`'s plugin: asks it to shut down within `grace`, then kills what is left.
pub async fn stop(slot: &PluginSlot, grace: Duration, reason: &str) {
    let current = slot.state();
    let PluginState::Ready(instance) = &*current else {
        return;
    };
    let deadline = Instant::now() + grace;
    slot.set(PluginState::Draining);
    let params = ShutdownParams {
        grace_ms: grace.as_millis() as u64,
    };
    if let Err(e) = instance.conn.call::<Shutdown>(&params, grace).await {
        tracing::warn!(plugin = %slot.name(), "shutdown request: {e}");
    }
    let mut exited = instance.exited.clone();
    let left = deadline.saturating_duration_since(Instant::now());
    let exit = match tokio::time::timeout(left, wait_exit(&mut exited)).await {
        Ok(exit) => exit,
        Err(_) => {
            tracing::warn!(plugin = %slot.name(), pid = instance.pid, "did not exit within {grace:?}; killing it");
            process::signal_group(instance.pid, Signal::SIGKILL);
            tokio::time::timeout(Duration::from_secs(5), wait_exit(&mut exited))
                .await
                .unwrap_or_else(|_| "did not exit after SIGKILL".into())
        }
    };
    process::signal_group(instance.pid, Signal::SIGKILL);
    instance.conn.close("the plugin was stopped");
    slot.set(PluginState::Stopped(format!("{reason} ({exit})")));
}
