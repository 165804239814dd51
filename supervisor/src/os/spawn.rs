//! The one helper that starts plugin processes. Nothing else calls `Command::new` for a plugin.
//!
//! Each child gets: its own process group (so a stop reaches its children too), a death signal
//! tied to the supervisor (`PR_SET_PDEATHSIG`, so it cannot outlive a supervisor killed with
//! SIGKILL), its rlimits and cgroup before `exec`, the protocol's environment variables (socket,
//! one-time token, epoch), and piped stdout/stderr whose lines are logged under the plugin's
//! name.
#![allow(unsafe_code)]

use super::cgroups::join_cgroups;
use super::output::{LineBudget, LogRing, Verdict, LOG_BURST, LOG_LINES_PER_SEC};
use super::rlimits::Rlimits;
use super::stub::{Control, StubOrder, StubSetup};
use crate::error::Failure;
use crate::manifest::Manifest;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use plugd_protocol::{ENV_EPOCH, ENV_MAX_FRAME, ENV_PLUGIN_NAME, ENV_SOCKET, ENV_TOKEN};
use std::ffi::CString;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

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
    pub child: Child,
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

/// The longest a start stub may take to set itself up and start the program.
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
/// and cgroup before `exec`, and its output logged.
///
/// It is started through the start stub when that is installed (no fork of plugd, see
/// [`super::stub`]), otherwise forked with those steps run in the child before `exec`.
async fn start(
    run: Run<'_>,
    instance: Vec<(&'static str, std::ffi::OsString)>,
    m: &Manifest,
    rlimits: Rlimits,
    cgroup_procs: Vec<CString>,
    logs: &Arc<LogRing>,
    tag: Option<&'static str>,
) -> Result<Spawned, Failure> {
    let supervisor = nix::unistd::getpid();
    let via = match run {
        Run::Prepared { stub } => Some(stub),
        Run::Program { .. } => installed_stub(),
    };
    let setup = cgroup_procs
        .iter()
        .map(|p| p.to_str().ok().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .map(|procs| StubSetup {
            parent: supervisor.as_raw(),
            cgroup_procs: procs,
            rlimits,
        });
    let order = match run {
        Run::Program { program, args } => program.to_str().map(|program| {
            Some(StubOrder {
                program: program.to_owned(),
                args: args.to_vec(),
                env: Vec::new(),
            })
        }),
        Run::Prepared { .. } => Some(None),
    };
    let shown = match run {
        Run::Program { program, .. } => program,
        Run::Prepared { stub } => stub,
    };
    let (mut child, control) = match (via, setup, order) {
        (Some(stub), Some(setup), Some(order)) => {
            via_stub(stub, shown, setup, order, m, instance).await?
        }
        _ => {
            let Run::Program { program, args } = run else {
                let why = std::io::Error::other("a cgroup path is not UTF-8");
                return Err(spawn_failure(shown, &why));
            };
            let mut cmd = Command::new(program);
            cmd.args(args).stdin(Stdio::null());
            prepare(&mut cmd, m, instance);
            // SAFETY: the closure runs in the forked child before exec and calls only
            // async-signal-safe functions (prctl, getppid, setrlimit, open, write, close); it
            // allocates nothing, since the paths were prepared before the fork.
            unsafe {
                cmd.pre_exec(move || confine(supervisor, &cgroup_procs, rlimits));
            }
            let child = on_spawner(cmd)
                .await
                .map_err(|e| spawn_failure(program, &e))?;
            (child, None)
        }
    };
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

/// What a plugin's process does to itself before the plugin runs: its death signal tied to
/// plugd (`supervisor`, which may have died meanwhile), its cgroups, then its rlimits. Run in a
/// forked child before `exec`, or by the start stub; async-signal-safe and allocation-free.
pub fn confine(supervisor: Pid, cgroup_procs: &[CString], rlimits: Rlimits) -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // The supervisor may have died before the death signal was set; then nobody would kill us.
    if nix::unistd::getppid() != supervisor {
        return Err(std::io::Error::other(
            "the supervisor exited during the spawn",
        ));
    }
    // Into the plugin's cgroup first: nothing it forks can start outside it. Before the
    // rlimits: a forked child holds every descriptor plugd has open until exec, and under a
    // lower open-files limit opening `cgroup.procs` would fail.
    join_cgroups(cgroup_procs)?;
    rlimits.apply()
}

/// Starts `stub` with its control socket, sends it `setup` and, for a plugin start, the
/// `order`, and waits until it is set up (and, with an order, became the program). A prepared
/// start keeps the control socket for its order.
async fn via_stub(
    stub: &Path,
    shown: &Path,
    setup: StubSetup,
    order: Option<StubOrder>,
    m: &Manifest,
    instance: Vec<(&'static str, std::ffi::OsString)>,
) -> Result<(Child, Option<Control>), Failure> {
    let (theirs, mut control) = Control::pair().map_err(|e| spawn_failure(shown, &e))?;
    let mut cmd = Command::new(stub);
    prepare(&mut cmd, m, instance);
    cmd.stdin(Stdio::from(theirs));
    // The stub missing or broken is plugd's installation at fault, not the plugin: retried.
    let mut child = on_spawner(cmd).await.map_err(|e| {
        Failure::from_io(
            format!("cannot start the start stub {}: {e}", stub.display()),
            &e,
        )
    })?;
    let talk = async {
        control.send(&setup).await?;
        if let Some(order) = &order {
            control.send(order).await?;
        }
        control.ready().await?;
        if order.is_some() {
            control.started().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let talked = tokio::time::timeout(STUB_TIMEOUT, talk)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::other(format!(
                "the start stub did not answer within {STUB_TIMEOUT:?}"
            )))
        });
    if let Err(e) = talked {
        kill_and_reap(&mut child).await;
        return Err(spawn_failure(shown, &e));
    }
    Ok((child, order.is_none().then_some(control)))
}

/// The directory, environment, process group and output pipes every plugin process gets.
fn prepare(cmd: &mut Command, m: &Manifest, instance: Vec<(&'static str, std::ffi::OsString)>) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PLUGD_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(&m.dir)
        .envs(&m.env)
        .env(ENV_PLUGIN_NAME, &m.name)
        .envs(instance)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
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

/// The start stub installed next to plugd's binary, looked up once.
fn installed_stub() -> Option<&'static Path> {
    static STUB: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    STUB.get_or_init(super::stub::stub_program).as_deref()
}

/// Spawns `cmd` on plugd's spawner thread and registers the child (see `orphans`).
///
/// `fork` returns at once, but the spawn returns only once the child has run its `pre_exec`
/// (joining a cgroup there can wait for an RCU grace period on cgroup v2, several milliseconds)
/// and executed: that wait must not hold one of the runtime's workers. The thread is plugd's
/// for its whole life, since a child's death signal (`PR_SET_PDEATHSIG`) fires when the
/// *thread* that forked it ends, which rules out the runtime's blocking pool.
async fn on_spawner(mut cmd: Command) -> std::io::Result<Child> {
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
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // The child is reaped by this runtime's process driver.
        let _runtime = handle.enter();
        // Registered before anyone can see the child as a leftover (see `orphans`).
        let mut spawned = super::orphans::spawned();
        let child = cmd.spawn();
        if let Some(pid) = child.as_ref().ok().and_then(Child::id) {
            spawned.insert(pid);
        }
        drop(spawned);
        let _ = tx.send(child);
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
pub async fn kill_and_reap(child: &mut Child) {
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
