//! Resource limits per plugin, in layers:
//!
//! 1. **rlimits**, set in the child before `exec`: open files, no core dumps, a data-segment
//!    backstop above the memory limit, and a CPU-time limit when one is set.
//! 2. **cgroups**: a leaf cgroup per plugin instance with memory, CPU and task limits, on
//!    cgroup v2 under plugd's delegated subtree (plugd moves itself into a leaf of its own) or
//!    on the v1 `memory`, `cpu` and `pids` controllers. Where neither can be written, plugd says
//!    so once at start-up and relies on rlimits and monitoring.
//! 3. **monitoring** ([`sample`]): memory, CPU, tasks and open files of each plugin, read from
//!    the cgroup and `/proc` every few seconds; a soft limit logs a warning, a hard limit kills
//!    the plugin with a reason that names the limit and the usage.
//!
//! Leaf cgroups are removed when their instance ends; ones left by an earlier run are removed
//! at start-up.

use crate::manifest::Limits;
use bytesize::ByteSize;
use serde::Serialize;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default memory limit.
pub const DEFAULT_MEMORY: u64 = 1024 * 1024 * 1024;
/// Default limit on processes plus threads.
pub const DEFAULT_TASKS: u32 = 512;
/// Default limit on open files.
pub const DEFAULT_OPEN_FILES: u64 = 1024;
/// Default limit on requests in flight.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 256;
/// The soft memory limit, when not set, as a share of the hard one.
const SOFT_SHARE: f64 = 0.8;
const CPU_PERIOD_US: u64 = 100_000;

/// A plugin's limits with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EffectiveLimits {
    /// Time to answer one request, in milliseconds.
    #[serde(rename = "request_timeout_ms", serialize_with = "as_millis")]
    pub request_timeout: Duration,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Hard memory limit, in bytes.
    pub memory: u64,
    /// Soft memory limit (a warning), in bytes.
    pub memory_soft: u64,
    /// CPU quota in cores, if any.
    pub cpu: Option<f64>,
    /// Total CPU time limit in seconds, if any.
    pub cpu_time_s: Option<u64>,
    /// Processes plus threads.
    pub tasks: u32,
    /// Open file descriptors.
    pub open_files: u64,
    /// Requests in flight at once.
    pub max_in_flight: u32,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl EffectiveLimits {
    /// Fills in the defaults: plugd's settings for timeout and body, this module's for the rest.
    pub fn resolve(l: &Limits, request_timeout: Duration, max_body: usize) -> EffectiveLimits {
        let memory = l.memory.map_or(DEFAULT_MEMORY, |m| m.as_u64());
        EffectiveLimits {
            request_timeout: l.request_timeout.unwrap_or(request_timeout),
            max_body: l.max_body.map_or(max_body, |b| {
                usize::try_from(b.as_u64()).unwrap_or(usize::MAX)
            }),
            memory,
            memory_soft: l
                .memory_soft
                .map_or((memory as f64 * SOFT_SHARE) as u64, |m| m.as_u64()),
            cpu: l.cpu,
            cpu_time_s: l.cpu_time.map(|d| d.as_secs().max(1)),
            tasks: l.tasks.unwrap_or(DEFAULT_TASKS),
            open_files: l.open_files.unwrap_or(DEFAULT_OPEN_FILES),
            max_in_flight: l.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
        }
    }
}

/// Checks a `[limits]` table; the error names the key.
pub fn validate(l: &Limits) -> Result<(), String> {
    if let Some(m) = l.memory {
        if m.as_u64() < 4 * 1024 * 1024 {
            return Err(format!(
                "field `limits.memory`: {m} is below the minimum of 4 MiB"
            ));
        }
    }
    let hard = l.memory.map_or(DEFAULT_MEMORY, |m| m.as_u64());
    if let Some(soft) = l.memory_soft {
        if soft.as_u64() > hard {
            return Err(format!(
                "field `limits.memory_soft`: {soft} is above the memory limit {}",
                ByteSize(hard)
            ));
        }
    }
    if let Some(cpu) = l.cpu {
        if !(cpu > 0.0 && cpu <= 1024.0) {
            return Err(format!(
                "field `limits.cpu`: {cpu} is not a number of cores between 0 and 1024"
            ));
        }
    }
    if l.tasks == Some(0) {
        return Err("field `limits.tasks`: must be at least 1".into());
    }
    if l.open_files.is_some_and(|n| n < 16) {
        return Err(
            "field `limits.open_files`: must be at least 16 (the runtime needs some)".into(),
        );
    }
    if l.max_in_flight == Some(0) {
        return Err("field `limits.max_in_flight`: must be at least 1".into());
    }
    if l.cpu_time.is_some_and(|d| d.is_zero()) {
        return Err("field `limits.cpu_time`: must be greater than zero".into());
    }
    Ok(())
}

/// The rlimits a child sets on itself before `exec`. Plain numbers, so applying them in the
/// forked child allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Rlimits {
    open_files: u64,
    data: u64,
    cpu_time_s: Option<u64>,
}

impl Rlimits {
    /// The rlimits for `limits`. The data-segment limit is a backstop well above the memory
    /// limit (runtimes reserve more than they touch); the cgroup and the monitor enforce the
    /// real one.
    pub fn for_limits(limits: &EffectiveLimits) -> Rlimits {
        Rlimits {
            open_files: limits.open_files,
            data: limits
                .memory
                .saturating_mul(2)
                .saturating_add(256 * 1024 * 1024),
            cpu_time_s: limits.cpu_time_s,
        }
    }

    /// Applies them to the calling process (async-signal-safe: only `setrlimit`).
    pub fn apply(&self) -> std::io::Result<()> {
        use nix::sys::resource::{setrlimit, Resource};
        setrlimit(Resource::RLIMIT_NOFILE, self.open_files, self.open_files)?;
        setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
        setrlimit(Resource::RLIMIT_DATA, self.data, self.data)?;
        if let Some(cpu) = self.cpu_time_s {
            // SIGXCPU at the soft limit, SIGKILL a little later if it is ignored.
            setrlimit(Resource::RLIMIT_CPU, cpu, cpu + 5)?;
        }
        Ok(())
    }
}

/// Which cgroup hierarchy plugd can write, found once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v2: plugin leaves go directly under `base` (plugd's own, delegated cgroup).
    V2 {
        /// plugd's cgroup directory.
        base: PathBuf,
    },
    /// cgroup v1: one directory per controller, each `plugd-<pid>` under plugd's own cgroup.
    V1 {
        /// Under the memory controller.
        memory: Option<PathBuf>,
        /// Under the cpu controller.
        cpu: Option<PathBuf>,
        /// Under the pids controller.
        pids: Option<PathBuf>,
    },
    /// No writable cgroups; the reason says why.
    Unavailable(String),
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Cgroups {
    /// Finds a writable hierarchy, removes leaves left by earlier runs, and prepares plugd's own
    /// directory. Logs once what it found.
    pub fn detect() -> Cgroups {
        let found = Cgroups::try_detect(Path::new(CGROUP_ROOT));
        match &found {
            Cgroups::V2 { base } => tracing::info!(
                "cgroup v2: plugin limits enforced under {}",
                base.display()
            ),
            Cgroups::V1 { memory, cpu, pids } => {
                let have: Vec<&str> = [("memory", memory), ("cpu", cpu), ("pids", pids)]
                    .iter()
                    .filter(|(_, p)| p.is_some())
                    .map(|(n, _)| *n)
                    .collect();
                tracing::info!("cgroup v1: plugin limits enforced with the {} controllers", have.join(", "));
            }
            Cgroups::Unavailable(why) => tracing::warn!(
                "cgroups unavailable ({why}): memory, CPU and task limits are enforced by rlimits and monitoring only"
            ),
        }
        found
    }

    fn try_detect(root: &Path) -> Cgroups {
        let Ok(membership) = std::fs::read_to_string("/proc/self/cgroup") else {
            return Cgroups::Unavailable("cannot read /proc/self/cgroup".into());
        };
        let unified_only = membership.lines().all(|l| l.starts_with("0::"));
        if unified_only && root.join("cgroup.controllers").exists() {
            return Cgroups::detect_v2(root, &membership);
        }
        let mut v1 = (None, None, None);
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            for controller in controllers.split(',') {
                let slot = match controller {
                    "memory" => &mut v1.0,
                    "cpu" => &mut v1.1,
                    "pids" => &mut v1.2,
                    _ => continue,
                };
                let mount = root.join(controller);
                let own = mount.join(path.trim_start_matches('/'));
                if let Some(dir) = prepare_v1(&own) {
                    *slot = Some(dir);
                }
            }
        }
        match v1 {
            (None, None, None) => Cgroups::Unavailable(
                "no writable cgroup v2 subtree or v1 memory, cpu or pids controller".into(),
            ),
            (memory, cpu, pids) => Cgroups::V1 { memory, cpu, pids },
        }
    }

    fn detect_v2(root: &Path, membership: &str) -> Cgroups {
        let path = membership
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        let base = root.join(path.trim_start_matches('/'));
        // No process may sit in a cgroup whose controllers are handed to its children: plugd
        // moves itself into a leaf of its own first.
        let own = base.join("plugd-supervisor");
        let moved = std::fs::create_dir_all(&own)
            .and_then(|_| std::fs::write(own.join("cgroup.procs"), std::process::id().to_string()))
            .and_then(|_| {
                std::fs::write(base.join("cgroup.subtree_control"), "+memory +cpu +pids")
            });
        if let Err(e) = moved {
            return Cgroups::Unavailable(format!(
                "cgroup v2 subtree {} is not delegated to plugd: {e}",
                base.display()
            ));
        }
        remove_stale(&base, "plugd-p");
        Cgroups::V2 { base }
    }

    /// Removes this run's cgroup directories (at shutdown, once every plugin has stopped).
    pub fn cleanup(&self) {
        if let Cgroups::V1 { memory, cpu, pids } = self {
            for dir in [memory, cpu, pids].into_iter().flatten() {
                remove_cgroup(dir);
            }
        }
    }

    /// Creates the leaf for one instance and writes its limits.
    pub fn create_leaf(&self, plugin: &str, epoch: u64, limits: &EffectiveLimits) -> Option<Leaf> {
        let name = format!("plugd-p{}-{plugin}-{epoch}", std::process::id());
        let result = match self {
            Cgroups::Unavailable(_) => return None,
            Cgroups::V2 { base } => Leaf::create_v2(base.join(&name), limits),
            Cgroups::V1 { memory, cpu, pids } => Leaf::create_v1(
                memory.as_ref().map(|d| d.join(&name)),
                cpu.as_ref().map(|d| d.join(&name)),
                pids.as_ref().map(|d| d.join(&name)),
                limits,
            ),
        };
        match result {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::warn!(
                    plugin,
                    "cannot create its cgroup: {e}; limits rely on rlimits and monitoring"
                );
                None
            }
        }
    }
}

/// Makes `<own>/plugd-<pid>` for this run after removing those of earlier runs.
fn prepare_v1(own: &Path) -> Option<PathBuf> {
    if !own.is_dir() {
        return None;
    }
    remove_stale(own, "plugd-p");
    let dir = own.join(format!("plugd-{}", std::process::id()));
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Some(dir),
        Err(_) => None,
    }
}

/// Removes cgroups named `<prefix><pid>…` whose plugd process is gone, killing anything left in
/// them first. Also removes v1 run directories `plugd-<pid>`.
fn remove_stale(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix(prefix)
            .or_else(|| name.strip_prefix("plugd-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(owner) = owner else {
            continue;
        };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let path = entry.path();
        if let Ok(children) = std::fs::read_dir(&path) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                remove_cgroup(&child.path());
            }
        }
        remove_cgroup(&path);
        tracing::info!("removed stale cgroup {}", path.display());
    }
}

/// Kills every process in a cgroup and removes it.
fn remove_cgroup(dir: &Path) {
    for _ in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!("cannot remove cgroup {}", dir.display());
}

/// One instance's cgroup (one directory per controller on v1).
#[derive(Debug)]
pub struct Leaf {
    v2: bool,
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
    /// `cgroup.procs` of each directory, ready for the forked child.
    procs: Vec<CString>,
}

impl Leaf {
    fn create_v1(
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
        limits: &EffectiveLimits,
    ) -> std::io::Result<Leaf> {
        let mut leaf = Leaf {
            v2: false,
            dirs: Vec::new(),
            memory: None,
            cpu: None,
            pids: None,
            procs: Vec::new(),
        };
        if let Some(dir) = memory {
            leaf.add(&dir)?;
            std::fs::write(dir.join("memory.limit_in_bytes"), limits.memory.to_string())?;
            // Swap must not be a way around the limit (absent when swap accounting is off).
            let _ = std::fs::write(
                dir.join("memory.memsw.limit_in_bytes"),
                limits.memory.to_string(),
            );
            let _ = std::fs::write(
                dir.join("memory.soft_limit_in_bytes"),
                limits.memory_soft.to_string(),
            );
            leaf.memory = Some(dir);
        }
        if let Some(dir) = cpu {
            leaf.add(&dir)?;
            if let Some(cores) = limits.cpu {
                std::fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                let quota = ((cores * CPU_PERIOD_US as f64) as u64).max(1000);
                std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
            leaf.cpu = Some(dir);
        }
        if let Some(dir) = pids {
            leaf.add(&dir)?;
            std::fs::write(dir.join("pids.max"), limits.tasks.to_string())?;
            leaf.pids = Some(dir);
        }
        Ok(leaf)
    }

    fn create_v2(dir: PathBuf, limits: &EffectiveLimits) -> std::io::Result<Leaf> {
        let mut leaf = Leaf {
            v2: true,
            dirs: Vec::new(),
            memory: Some(dir.clone()),
            cpu: Some(dir.clone()),
            pids: Some(dir.clone()),
            procs: Vec::new(),
        };
        leaf.add(&dir)?;
        std::fs::write(dir.join("memory.max"), limits.memory.to_string())?;
        std::fs::write(dir.join("memory.high"), limits.memory_soft.to_string())?;
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        if let Some(cores) = limits.cpu {
            let quota = ((cores * CPU_PERIOD_US as f64) as u64).max(1000);
            std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
        }
        std::fs::write(dir.join("pids.max"), limits.tasks.to_string())?;
        Ok(leaf)
    }

    fn add(&mut self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir(dir)?;
        self.dirs.push(dir.to_path_buf());
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(std::io::Error::other)?;
        self.procs.push(procs);
        Ok(())
    }

    /// The `cgroup.procs` files the child writes itself into before `exec`.
    pub fn procs_files(&self) -> Vec<CString> {
        self.procs.clone()
    }

    /// Times the kernel's OOM killer killed a process in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else {
            return 0;
        };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        read_key(&dir.join(file), "oom_kill").unwrap_or(0)
    }

    /// Whether the kernel enforces the memory limit (so the monitor need not).
    pub fn limits_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Whether the kernel enforces the task limit.
    pub fn limits_tasks(&self) -> bool {
        self.pids.is_some()
    }

    /// Kills whatever is left in the cgroup and removes it.
    pub fn remove(&self) {
        for dir in &self.dirs {
            remove_cgroup(dir);
        }
    }

    fn memory_bytes(&self) -> Option<u64> {
        let dir = self.memory.as_ref()?;
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        read_number(&dir.join(file))
    }

    fn tasks(&self) -> Option<u64> {
        read_number(&self.pids.as_ref()?.join("pids.current"))
    }

    fn throttled(&self) -> Option<u64> {
        read_key(&self.cpu.as_ref()?.join("cpu.stat"), "nr_throttled")
    }
}

/// Writes `0` (the calling process) into each `cgroup.procs`: called in the forked child before
/// `exec`, so the plugin and everything it forks start inside its limits.
pub fn join_cgroups(procs: &[CString]) -> std::io::Result<()> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    for path in procs {
        let fd = open(
            path.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let written = nix::unistd::write(fd_ref(fd), b"0");
        let _ = nix::unistd::close(fd);
        written?;
    }
    Ok(())
}

fn fd_ref(fd: std::os::fd::RawFd) -> std::os::fd::BorrowedFd<'static> {
    // The descriptor stays open until closed right after the write.
    #[allow(unsafe_code)]
    // SAFETY: `fd` was just returned by open() and is closed only after this borrow ends.
    unsafe {
        std::os::fd::BorrowedFd::borrow_raw(fd)
    }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// One sample of a plugin's resource use.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Memory charged to the plugin (its cgroup's, or the process's RSS), in bytes.
    pub memory_bytes: u64,
    /// CPU time used so far, in seconds.
    pub cpu_seconds: f64,
    /// CPU use since the previous sample, in cores.
    pub cpu_cores: f64,
    /// Processes plus threads.
    pub tasks: u64,
    /// Open file descriptors of the main process.
    pub open_files: u64,
    /// Periods in which the CPU quota held the plugin back (cgroup only).
    pub cpu_throttled: Option<u64>,
}

/// Reads the plugin's usage: the cgroup's figures where there is one, `/proc/<pid>` otherwise.
/// `previous` (time and CPU seconds of the last sample) gives the CPU rate.
pub fn sample(pid: u32, leaf: Option<&Leaf>, previous: Option<(Instant, f64)>) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = clock_ticks();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let threads: u64 = fields.get(17)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    let cpu_seconds = (utime + stime) / ticks;
    let cpu_cores = previous.map_or(0.0, |(at, cpu)| {
        let wall = at.elapsed().as_secs_f64();
        if wall > 0.0 {
            ((cpu_seconds - cpu) / wall).max(0.0)
        } else {
            0.0
        }
    });
    let open_files = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    Some(Usage {
        memory_bytes: leaf
            .and_then(Leaf::memory_bytes)
            .unwrap_or(rss_pages * page_size()),
        cpu_seconds,
        cpu_cores,
        tasks: leaf.and_then(Leaf::tasks).unwrap_or(threads),
        open_files,
        cpu_throttled: leaf.and_then(Leaf::throttled),
    })
}

fn clock_ticks() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

fn page_size() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64)
}

/// What the monitor concludes from one sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within limits.
    Fine,
    /// Over a soft limit: log a warning (once per crossing).
    Soft(String),
    /// Over a hard limit that the kernel does not enforce here: kill, with this reason.
    Hard(String),
}

/// Compares a sample against the limits. Limits the cgroup enforces are left to the kernel.
pub fn judge(usage: &Usage, limits: &EffectiveLimits, leaf: Option<&Leaf>) -> Verdict {
    let mem = ByteSize(usage.memory_bytes);
    if usage.memory_bytes > limits.memory && !leaf.is_some_and(Leaf::limits_memory) {
        return Verdict::Hard(format!(
            "memory limit {} exceeded (rss {mem})",
            ByteSize(limits.memory)
        ));
    }
    if usage.tasks > u64::from(limits.tasks) && !leaf.is_some_and(Leaf::limits_tasks) {
        return Verdict::Hard(format!(
            "task limit {} exceeded ({} tasks)",
            limits.tasks, usage.tasks
        ));
    }
    if usage.memory_bytes > limits.memory_soft {
        return Verdict::Soft(format!(
            "memory {mem} is over the soft limit {} (hard limit {})",
            ByteSize(limits.memory_soft),
            ByteSize(limits.memory)
        ));
    }
    Verdict::Fine
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EffectiveLimits {
        EffectiveLimits::resolve(
            &Limits {
                memory: Some(ByteSize::mib(64)),
                ..Limits::default()
            },
            Duration::from_secs(30),
            1024,
        )
    }

    #[test]
    fn defaults_fill_every_unset_limit() {
        let l = EffectiveLimits::resolve(&Limits::default(), Duration::from_secs(7), 99);
        assert_eq!(l.memory, DEFAULT_MEMORY);
        assert_eq!(l.memory_soft, (DEFAULT_MEMORY as f64 * 0.8) as u64);
        assert_eq!((l.tasks, l.open_files), (DEFAULT_TASKS, DEFAULT_OPEN_FILES));
        assert_eq!(
            (l.request_timeout, l.max_body),
            (Duration::from_secs(7), 99)
        );
        assert_eq!(l.cpu, None);
    }

    #[test]
    fn bad_limits_name_their_key() {
        let cases = [
            (
                Limits {
                    memory: Some(ByteSize::kib(10)),
                    ..Limits::default()
                },
                "limits.memory",
            ),
            (
                Limits {
                    cpu: Some(0.0),
                    ..Limits::default()
                },
                "limits.cpu",
            ),
            (
                Limits {
                    tasks: Some(0),
                    ..Limits::default()
                },
                "limits.tasks",
            ),
            (
                Limits {
                    open_files: Some(3),
                    ..Limits::default()
                },
                "limits.open_files",
            ),
            (
                Limits {
                    max_in_flight: Some(0),
                    ..Limits::default()
                },
                "limits.max_in_flight",
            ),
            (
                Limits {
                    memory: Some(ByteSize::mib(64)),
                    memory_soft: Some(ByteSize::mib(65)),
                    ..Limits::default()
                },
                "limits.memory_soft",
            ),
        ];
        for (l, key) in cases {
            let err = validate(&l).expect_err(key);
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn the_monitor_kills_only_where_the_kernel_does_not_enforce() {
        let l = limits();
        let over = Usage {
            memory_bytes: 70 * 1024 * 1024,
            ..Usage::default()
        };
        assert_eq!(
            judge(&over, &l, None),
            Verdict::Hard("memory limit 64.0 MiB exceeded (rss 70.0 MiB)".into())
        );
        let soft = Usage {
            memory_bytes: 60 * 1024 * 1024,
            ..Usage::default()
        };
        assert!(matches!(judge(&soft, &l, None), Verdict::Soft(_)));
        assert_eq!(judge(&Usage::default(), &l, None), Verdict::Fine);
    }

    #[test]
    fn samples_this_process() {
        let usage = sample(std::process::id(), None, None).expect("own /proc entry");
        assert!(usage.memory_bytes > 0 && usage.tasks >= 1 && usage.open_files >= 1);
    }

    #[test]
    fn reads_cgroup_key_value_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.oom_control");
        std::fs::write(&path, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").expect("write");
        assert_eq!(read_key(&path, "oom_kill"), Some(3));
        assert_eq!(read_key(&path, "missing"), None);
    }
}
