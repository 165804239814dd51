//! The one helper that starts plugin processes (through [`super::process`]); nothing else does.
//!
//! Each child gets: its own process group (so a stop reaches its children too), a death signal
//! tied to the supervisor (`PR_SET_PDEATHSIG`, so it cannot outlive a supervisor killed with
//! SIGKILL), its rlimits and cgroup before `exec`, the protocol's environment variables (socket,
//! one-time token, epoch), and piped stdout/stderr whose lines are logged under the plugin's
//! name.

use super::output::{LineBudget, LogRing, Verdict, LOG_BURST, LOG_LINES_PER_SEC};
use super::process::{Launch, Process, Started};
use super::rlimits::Rlimits;
use super::stub::Control;
use crate::error::Failure;
use crate::manifest::Manifest;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use plugd_protocol::{ENV_EPOCH, ENV_MAX_FRAME, ENV_PLUGIN_NAME, ENV_SOCKET, ENV_TOKEN};
use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Longest piece of a log line logged as one event; longer lines are split and marked.
const MAX_LOG_LINE: usize = 16 * 1024;

/// What a plugin process is started with, besides its manifest.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    /// The plugin's manifest (command, args, env, directory).
    pub manifest: &'a Manifest,
    /// The socket the plugin must connect to.
    pub socket: &'a Path,
    /// The one-time token it must present.
    pub token: &'a str,
    /// The instance epoch it must echo.
    pub epoch: u64,
    /// The largest frame the supervisor accepts.
    pub max_frame: usize,
    /// Where the plugin's output lines are kept.
    pub logs: Arc<LogRing>,
    /// rlimits the child sets on itself.
    pub rlimits: Rlimits,
    /// `cgroup.procs` files the child joins before `exec` (empty without cgroups).
    pub cgroup_procs: Vec<CString>,
}

/// A started process and the task reading its output.
#[derive(Debug)]
pub struct Spawned {
    /// The process.
    pub child: Process,
    /// Ends when both stdout and stderr reached their end (so every line is logged).
    pub output: tokio::task::JoinHandle<()>,
    /// A prepared start's control socket, where its order goes (see [`super::stub`]).
    pub control: Option<Control>,
}

/// What a started process runs.
#[derive(Debug, Clone, Copy)]
enum Run<'a> {
    /// `program` with `args`, now.
    Program {
        program: &'a Path,
        args: &'a [String],
    },
    /// The start stub `stub`, set up and waiting for its order: a prepared start.
    Prepared { stub: &'a Path },
}

/// The longest a start stub may take to start the program once ordered.
const STUB_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the plugin's process and begins logging its output. A missing or non-executable
/// command is a fatal failure: restarting cannot mend it.
pub async fn spawn(spec: &SpawnSpec<'_>) -> Result<Spawned, Failure> {
    let m = spec.manifest;
    let program = m.program();
    let instance = vec![
        (ENV_SOCKET, spec.socket.as_os_str().to_owned()),
        (ENV_TOKEN, spec.token.into()),
        (ENV_EPOCH, spec.epoch.to_string().into()),
        (ENV_MAX_FRAME, spec.max_frame.to_string().into()),
    ];
    let run = Run::Program {
        program: &program,
        args: &m.args,
    };
    let procs = spec.cgroup_procs.clone();
    start(run, instance, m, spec.rlimits, procs, &spec.logs, None).await
}

/// Starts a stub for the plugin's next instance (see [`super::stub`]): everything of a plugin
/// start but the program and the instance's own variables, which [`order_stub`] hands it
/// later.
pub async fn spawn_stub(
    stub: &Path,
    m: &Manifest,
    rlimits: Rlimits,
    cgroup_procs: Vec<CString>,
    logs: &Arc<LogRing>,
) -> Result<Spawned, Failure> {
    let run = Run::Prepared { stub };
    start(run, Vec::new(), m, rlimits, cgroup_procs, logs, None).await
}

/// Tells a stub to become the plugin: its program, arguments and the instance's variables
/// (socket, one-time token, epoch, frame limit). `None` when the manifest's program or
/// arguments are not UTF-8 (the caller starts the plugin the usual way).
pub fn stub_order(spec: &SpawnSpec<'_>) -> Option<super::stub::StubOrder> {
    let program = spec
        .manifest
        .program()
        .into_os_string()
        .into_string()
        .ok()?;
    let socket = spec.socket.to_str()?.to_owned();
    Some(super::stub::StubOrder {
        program,
        args: spec.manifest.args.clone(),
        env: vec![
            (ENV_SOCKET.into(), socket),
            (ENV_TOKEN.into(), spec.token.to_owned()),
            (ENV_EPOCH.into(), spec.epoch.to_string()),
            (ENV_MAX_FRAME.into(), spec.max_frame.to_string()),
        ],
    })
}

/// Sends `order` to a stub started by [`spawn_stub`] and waits until it became the plugin.
pub async fn order_stub(
    spawned: &mut Spawned,
    order: &super::stub::StubOrder,
) -> std::io::Result<()> {
    let control = spawned
        .control
        .as_mut()
        .ok_or_else(|| std::io::Error::other("the start stub has no control socket"))?;
    let ordered = async {
        control.send(order).await?;
        control.started().await
    };
    tokio::time::timeout(STUB_TIMEOUT, ordered)
        .await
        .map_err(|_| std::io::Error::other("the start stub did not start the plugin in time"))?
}

/// Starts the plugin's build command (`build` in its manifest) in its directory, in a process
/// group of its own with `rlimits`; its output goes to the plugin's log as stream `build`.
pub async fn spawn_build(
    m: &Manifest,
    logs: &Arc<LogRing>,
    rlimits: Rlimits,
) -> Result<Spawned, Failure> {
    let Some((first, args)) = m.build.split_first() else {
        return Err(Failure::never("the manifest names no build command"));
    };
    let program = if first.contains('/') {
        m.dir.join(first)
    } else {
        first.into()
    };
    let run = Run::Program {
        program: &program,
        args,
    };
    start(run, Vec::new(), m, rlimits, Vec::new(), logs, Some("build")).await
}

/// What every process started for a plugin shares: its directory and environment (plugd's own
/// `PLUGD_*` variables removed: they hold tokens, keys and the database's address, and
/// `instance`, this instance's own, added), its own process group, the death signal, rlimits
/// and cgroup before `exec`, and its output logged. Started without a copy of plugd (see
/// [`super::process`]).
async fn start(
    run: Run<'_>,
    instance: Vec<(&'static str, std::ffi::OsString)>,
    m: &Manifest,
    rlimits: Rlimits,
    cgroup_procs: Vec<CString>,
    logs: &Arc<LogRing>,
    tag: Option<&'static str>,
) -> Result<Spawned, Failure> {
    let env = m
        .env
        .iter()
        .map(|(k, v)| (k.into(), v.into()))
        .chain([(ENV_PLUGIN_NAME.into(), m.name.clone().into())])
        .chain(instance.into_iter().map(|(k, v)| (k.into(), v)));
    type Failed = fn(&Path, &std::io::Error) -> Failure;
    let (program, args, control, failed): (_, &[String], _, Failed) = match run {
        Run::Program { program, args } => (program, args, None, spawn_failure),
        // The stub missing or broken is plugd's installation at fault, not the plugin's:
        // retried.
        Run::Prepared { stub } => {
            let pair = Control::pair().map_err(|e| stub_failure(stub, &e))?;
            (stub, &[], Some(pair), stub_failure)
        }
    };
    let launch = Launch::new(program, args, &m.dir, "PLUGD_", env, rlimits, cgroup_procs)
        .map_err(|e| failed(program, &e))?;
    let (launch, control) = match control {
        Some((theirs, control)) => (launch.stdin(theirs), Some(control)),
        None => (launch, None),
    };
    let mut child = on_spawner(launch)
        .await
        .and_then(Started::watch)
        .map_err(|e| failed(program, &e))?;
    let pid = child
        .id()
        .ok_or_else(|| Failure::later("the process exited at once"))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let (name, logs) = (m.name.clone(), logs.clone());
    let output = tokio::spawn(async move {
        let out = async {
            if let Some(out) = stdout {
                log_lines(&name, pid, tag.unwrap_or("stdout"), out, &logs).await;
            }
        };
        let err = async {
            if let Some(err) = stderr {
                log_lines(&name, pid, tag.unwrap_or("stderr"), err, &logs).await;
            }
        };
        tokio::join!(out, err);
    });
    Ok(Spawned {
        child,
        output,
        control,
    })
}

/// A failed start of `program`: fatal when the command is missing or not executable.
fn spawn_failure(program: &Path, e: &std::io::Error) -> Failure {
    let (what, fatal) = match e.kind() {
        std::io::ErrorKind::NotFound => ("command not found".to_string(), true),
        std::io::ErrorKind::PermissionDenied => ("command is not executable".to_string(), true),
        _ => (e.to_string(), false),
    };
    let message = format!("cannot start {}: {what}", program.display());
    if fatal {
        Failure::never(message)
    } else {
        Failure::from_io(message, e)
    }
}

/// A failed start of the start stub `stub`: retried.
fn stub_failure(stub: &Path, e: &std::io::Error) -> Failure {
    Failure::from_io(
        format!("cannot start the start stub {}: {e}", stub.display()),
        e,
    )
}

/// Starts `launch` on plugd's spawner thread and registers the child (see `orphans`).
///
/// The clone returns only once the child has joined its cgroup (on cgroup v2 that can wait for
/// an RCU grace period, several milliseconds) and executed: that wait must not hold one of the
/// runtime's workers. The thread is plugd's for its whole life, since a child's death signal
/// (`PR_SET_PDEATHSIG`) fires when the *thread* that cloned it ends, which rules out the
/// runtime's blocking pool.
async fn on_spawner(launch: Launch) -> std::io::Result<Started> {
    use std::sync::mpsc;
    type Job = Box<dyn FnOnce() + Send>;
    static SPAWNER: std::sync::OnceLock<mpsc::Sender<Job>> = std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("plugd-spawner".into())
            .spawn(move || {
                for job in rx {
                    // A panic here must not end the thread: its children would die with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        if let Err(e) = started {
            tracing::error!("cannot start the spawner thread: {e}");
        }
        tx
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // Registered before anyone can see the child as a leftover (see `orphans`).
        let mut spawned = super::orphans::spawned();
        let started = launch.spawn();
        if let Ok(started) = &started {
            spawned.insert(started.pid);
        }
        drop(spawned);
        drop(launch);
        let _ = tx.send(started);
    });
    if spawner.send(job).is_err() {
        return Err(std::io::Error::other("the spawner thread is gone"));
    }
    rx.await
        .map_err(|_| std::io::Error::other("the spawner thread dropped a spawn"))?
}

/// Why a process ended, in words: `exited with code 1`, `killed by signal SIGKILL`.
pub fn exit_reason(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
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

/// Kills a process started here (its whole group) and reaps it, so it leaves the register of
/// spawned processes (see `orphans`): for a start stub that will not be used.
pub async fn kill_and_reap(child: &mut Process) {
    let pid = child.id().unwrap_or(0);
    signal_group(pid, Signal::SIGKILL);
    let _ = child.wait().await;
    super::orphans::exited(pid);
}

/// Sends `signal` to the whole process group led by `pid`. Pid 0 (no process) is ignored:
/// `killpg(0)` would signal plugd's own group.
pub fn signal_group(pid: u32, signal: Signal) {
    if pid == 0 {
        return;
    }
    if let Ok(pid) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// Logs each line of a child's stdout or stderr as a tracing event tagged with the plugin.
/// A line longer than [`MAX_LOG_LINE`] is logged in pieces, each marked as continued. Lines
/// past the stream's [`LineBudget`] are counted and summarised instead of logged one by one.
async fn log_lines(
    plugin: &str,
    pid: u32,
    stream: &'static str,
    output: impl AsyncRead + Unpin,
    ring: &LogRing,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, output);
    let mut line = Vec::with_capacity(256);
    let mut budget = LineBudget::new(LOG_LINES_PER_SEC, LOG_BURST, std::time::Instant::now());
    let summary = |suppressed: u64| {
        let text = format!(
            "[{suppressed} lines suppressed: more than {LOG_LINES_PER_SEC} lines per second]"
        );
        tracing::warn!(target: "plugd::plugin", plugin, pid, stream, suppressed, "{text}");
        ring.push(pid, stream, &text);
    };
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LOG_LINE as u64);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) => {
                match budget.take(std::time::Instant::now()) {
                    Verdict::Suppress => continue,
                    Verdict::LogAfterSuppressing(n) => summary(n),
                    Verdict::Log => {}
                }
                let whole = line.ends_with(b"\n");
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                let marker = if whole { "" } else { " [line continues]" };
                tracing::info!(target: "plugd::plugin", plugin, pid, stream, "{text}{marker}");
                ring.push(pid, stream, text);
            }
            Err(e) => {
                tracing::warn!(target: "plugd::plugin", plugin, pid, stream, "cannot read output: {e}");
                break;
            }
        }
    }
    let suppressed = budget.pending();
    if suppressed > 0 {
        summary(suppressed);
    }
}
