//! cgroups: a leaf cgroup per plugin instance with memory, CPU and task limits, on cgroup v2
//! under plugd's delegated subtree (plugd moves itself into a leaf of its own) or on the v1
//! `memory`, `cpu` and `pids` controllers. Where neither can be written, plugd says so once at
//! start-up and relies on rlimits and monitoring.
//!
//! When its instance ends a leaf is emptied (whatever still runs in it is killed) and kept for
//! the plugin's next start with the same limits, at most [`POOLED_PER_PLUGIN`] per plugin and
//! [`POOLED_LEAVES`] in all; the rest are removed, and the kept ones when plugd stops. Creating
//! and removing a cgroup is the kernel's costliest part of a start: the `mkdir` takes the
//! cgroup lock, and each removed memory cgroup is taken offline and freed by kernel workers
//! (about 4 ms of CPU per enable and disable on this kind of machine). Leaves left by an
//! earlier run are removed (with whatever still runs in them) at start-up. Emptying and removal
//! wait for the kernel to let go of processes that were just killed, so they run on a blocking
//! thread, never on the async runtime's workers.

use super::limits::EffectiveLimits;
use std::collections::VecDeque;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const CPU_PERIOD_US: u64 = 100_000;

/// Most empty leaves kept for next starts, over all plugins.
pub const POOLED_LEAVES: usize = 64;

/// Most empty leaves kept for one plugin's next starts: its instance's and its prepared
/// start's.
pub const POOLED_PER_PLUGIN: usize = 2;

/// The empty leaves kept for next starts, oldest first. One per process: plugd has one cgroup
/// tree.
static POOL: Mutex<VecDeque<Leaf>> = Mutex::new(VecDeque::new());

fn pool() -> std::sync::MutexGuard<'static, VecDeque<Leaf>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
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
        /// Under the freezer controller: lets a leaf be frozen before it is killed, so nothing
        /// in it can fork while it is being emptied.
        freezer: Option<PathBuf>,
    },
    /// No writable cgroups; the reason says why.
    Unavailable(String),
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Cgroups {
    /// Finds a writable hierarchy, removes leaves left by earlier runs, and prepares plugd's own
    /// directory. Logs once what it found. Blocking (it may wait for stale cgroups to empty):
    /// call it off the async runtime.
    pub fn detect() -> Cgroups {
        let found = Cgroups::try_detect(Path::new(CGROUP_ROOT));
        match &found {
            Cgroups::V2 { base } => tracing::info!(
                "cgroup v2: plugin limits enforced under {}",
                base.display()
            ),
            Cgroups::V1 { memory, cpu, pids, freezer } => {
                let have: Vec<&str> = [("memory", memory), ("cpu", cpu), ("pids", pids), ("freezer", freezer)]
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
        let mut v1 = (None, None, None, None);
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
                    "freezer" => &mut v1.3,
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
            (None, None, None, freezer) => {
                // The freezer alone limits nothing; its run directory is not needed.
                if let Some(dir) = freezer {
                    remove_cgroup(&dir);
                }
                Cgroups::Unavailable(
                    "no writable cgroup v2 subtree or v1 memory, cpu or pids controller".into(),
                )
            }
            (memory, cpu, pids, freezer) => Cgroups::V1 {
                memory,
                cpu,
                pids,
                freezer,
            },
        }
    }

    fn detect_v2(root: &Path, membership: &str) -> Cgroups {
        let path = membership
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/");
        let base = root.join(path.trim_start_matches('/'));
        // What a predecessor killed with SIGKILL left goes first, even if plugd cannot use the
        // subtree this time.
        remove_stale(&base, "plugd-p");
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
        Cgroups::V2 { base }
    }

    /// Removes this run's cgroup directories (at shutdown, once every plugin has stopped),
    /// the kept leaves first.
    pub async fn cleanup(&self) {
        let kept: Vec<PathBuf> = pool().drain(..).flat_map(|leaf| leaf.dirs).collect();
        remove_off_runtime(kept).await;
        if let Cgroups::V1 {
            memory,
            cpu,
            pids,
            freezer,
        } = self
        {
            let dirs: Vec<PathBuf> = [freezer, memory, cpu, pids]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            remove_off_runtime(dirs).await;
        }
    }

    /// Creates the leaf for one instance and writes its limits, on a blocking thread: a
    /// `mkdir` waits for the kernel's cgroup lock, which another process's migration into a
    /// cgroup holds for an RCU grace period (about 11 ms here), and that wait must not hold a
    /// runtime worker.
    pub async fn create_leaf(
        &self,
        plugin: &str,
        epoch: u64,
        limits: &EffectiveLimits,
    ) -> Option<Leaf> {
        if let Some(leaf) = Leaf::kept(plugin, limits) {
            return Some(leaf);
        }
        let name = format!("plugd-p{}-{plugin}-{epoch}", std::process::id());
        let limits = limits.clone();
        let create: Box<dyn FnOnce() -> std::io::Result<Leaf> + Send> = match self {
            Cgroups::Unavailable(_) => return None,
            Cgroups::V2 { base } => {
                let dir = base.join(&name);
                Box::new(move || Leaf::create_v2(dir, &limits))
            }
            Cgroups::V1 {
                memory,
                cpu,
                pids,
                freezer,
            } => {
                let dirs = [memory, cpu, pids, freezer].map(|d| d.as_ref().map(|d| d.join(&name)));
                Box::new(move || Leaf::create_v1(dirs, &limits))
            }
        };
        let result = tokio::task::spawn_blocking(create)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match result {
            Ok(mut leaf) => {
                leaf.plugin = plugin.to_owned();
                Some(leaf)
            }
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

/// Keeps an emptied leaf for a next start; returns the leaves no longer kept (the plugin's
/// oldest beyond [`POOLED_PER_PLUGIN`], the oldest of all beyond [`POOLED_LEAVES`]).
fn keep(leaf: Leaf) -> Vec<Leaf> {
    let mut pool = pool();
    let mut unwanted = Vec::new();
    if pool.iter().filter(|l| l.plugin == leaf.plugin).count() >= POOLED_PER_PLUGIN {
        if let Some(at) = pool.iter().position(|l| l.plugin == leaf.plugin) {
            unwanted.extend(pool.remove(at));
        }
    }
    pool.push_back(leaf);
    while pool.len() > POOLED_LEAVES {
        unwanted.extend(pool.pop_front());
    }
    unwanted
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

/// Removes cgroups on a blocking thread: the kernel may take a few milliseconds to let go of
/// one whose processes were just killed, and that wait must not hold a runtime worker.
async fn remove_off_runtime(dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    let removed = tokio::task::spawn_blocking(move || {
        for dir in &dirs {
            remove_cgroup(dir);
        }
    })
    .await;
    if let Err(e) = removed {
        tracing::warn!("cannot remove cgroups: {e}");
    }
}

/// Kills every process in a cgroup and removes it (blocking: it polls until the kernel lets go).
fn remove_cgroup(dir: &Path) {
    // Most leaves are empty by now (their instance exited): removed at once, without the
    // freeze and thaw, which flip kernel-wide static keys (a text patch on every CPU).
    match std::fs::remove_dir(dir) {
        Ok(()) => return,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(_) => {}
    }
    empty_cgroup(dir);
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!("cannot remove cgroup {}", dir.display());
}

/// Kills every process in a cgroup until none is left (blocking, half a second at most);
/// returns whether it is empty. On v2 `cgroup.kill` kills the whole cgroup at once; on v1 a
/// frozen cgroup (freezer controller) is killed while frozen, so no process in it can fork
/// during the kill; otherwise the processes are killed until none is left.
fn empty_cgroup(dir: &Path) -> bool {
    let listed = || -> Vec<i32> {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        procs
            .lines()
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    };
    let kill_listed = || {
        let pids = listed();
        for &pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        pids.is_empty()
    };
    if listed().is_empty() {
        return true;
    }
    if dir.join("cgroup.kill").exists() {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    }
    if dir.join("freezer.state").exists() && freeze(dir) {
        kill_listed();
        // Killed while frozen; they die once thawed.
        let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    }
    for _ in 0..50 {
        if kill_listed() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Freezes a v1 freezer cgroup and waits (briefly) until the kernel says it is frozen.
fn freeze(dir: &Path) -> bool {
    let state = dir.join("freezer.state");
    if std::fs::write(&state, "FROZEN").is_err() {
        return false;
    }
    for _ in 0..100 {
        if std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == "FROZEN") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// One instance's cgroup (one directory per controller on v1).
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The plugin it was made for, and its limits: a kept leaf is taken again only by the
    /// same plugin with the same limits.
    plugin: String,
    limits: EffectiveLimits,
    /// The OOM kills counted before this instance (a kept leaf's count goes on).
    oom_before: u64,
    v2: bool,
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
    /// The file of each directory the forked child writes itself into (`tasks` on v1,
    /// `cgroup.procs` on v2), ready before the fork.
    procs: Vec<CString>,
}

impl Leaf {
    fn create_v1(dirs: [Option<PathBuf>; 4], limits: &EffectiveLimits) -> std::io::Result<Leaf> {
        let [memory, cpu, pids, freezer] = dirs;
        let mut leaf = Leaf {
            plugin: String::new(),
            limits: limits.clone(),
            oom_before: 0,
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
        if let Some(dir) = freezer {
            // First in line when the leaf is removed: frozen, nothing in it can fork away.
            leaf.add(&dir)?;
            leaf.dirs.rotate_right(1);
        }
        Ok(leaf)
    }

    fn create_v2(dir: PathBuf, limits: &EffectiveLimits) -> std::io::Result<Leaf> {
        let mut leaf = Leaf {
            plugin: String::new(),
            limits: limits.clone(),
            oom_before: 0,
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
        // On v1 the child joins through `tasks`: it moves only the calling thread, the whole
        // of a child between fork and exec, and the kernel then skips the lock that writing
        // `cgroup.procs` takes for all of the machine's cgroups for an RCU grace period (7 to
        // 17 ms here, 0.1 ms through `tasks`). v2 has no such file outside threaded cgroups.
        let file = if self.v2 { "cgroup.procs" } else { "tasks" };
        let procs =
            CString::new(dir.join(file).as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        self.procs.push(procs);
        Ok(())
    }

    /// The files the child writes itself into before `exec` (see [`Leaf::add`]).
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
        read_key(&dir.join(file), "oom_kill")
            .unwrap_or(0)
            .saturating_sub(self.oom_before)
    }

    /// Whether the kernel enforces the memory limit (so the monitor need not).
    pub fn limits_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Whether the kernel enforces the task limit.
    pub fn limits_tasks(&self) -> bool {
        self.pids.is_some()
    }

    /// Kills whatever is left in the cgroup and keeps it, empty, for the plugin's next start
    /// (removing the leaf it replaces among the kept ones); removes it when it cannot be
    /// emptied.
    pub async fn remove(&self) {
        let leaf = self.clone();
        let released = tokio::task::spawn_blocking(move || {
            // Reading `cgroup.procs` on v1 leaves the kernel a pid list to free later: the
            // task count says it is empty more cheaply (counting processes not yet reaped,
            // which then take the slower way).
            let idle = leaf.tasks() == Some(0);
            let emptied = leaf
                .dirs
                .iter()
                .all(|d| d.is_dir() && (idle || empty_cgroup(d)));
            let unwanted = if emptied { keep(leaf) } else { vec![leaf] };
            for dir in unwanted.iter().flat_map(|l| &l.dirs) {
                remove_cgroup(dir);
            }
        })
        .await;
        if let Err(e) = released {
            tracing::warn!("cannot release a cgroup: {e}");
        }
    }

    /// A kept leaf made for `plugin` with `limits`, taken out of the pool.
    fn kept(plugin: &str, limits: &EffectiveLimits) -> Option<Leaf> {
        let mut pool = pool();
        let at = pool
            .iter()
            .position(|l| l.plugin == plugin && l.limits == *limits)?;
        let mut leaf = pool.remove(at)?;
        drop(pool);
        leaf.oom_before = 0;
        leaf.oom_before = leaf.oom_kills();
        Some(leaf)
    }

    pub(super) fn memory_bytes(&self) -> Option<u64> {
        let dir = self.memory.as_ref()?;
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        read_number(&dir.join(file))
    }

    pub(super) fn tasks(&self) -> Option<u64> {
        read_number(&self.pids.as_ref()?.join("pids.current"))
    }

    pub(super) fn throttled(&self) -> Option<u64> {
        read_key(&self.cpu.as_ref()?.join("cpu.stat"), "nr_throttled")
    }
}

/// Writes `0` (the caller) into each of a leaf's join files (see [`Leaf::procs_files`]):
/// called in the forked child before `exec`, so the plugin and everything it forks start
/// inside its limits.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroup_key_value_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.oom_control");
        std::fs::write(&path, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").expect("write");
        assert_eq!(read_key(&path, "oom_kill"), Some(3));
        assert_eq!(read_key(&path, "missing"), None);
    }

    #[test]
    fn kept_leaves_are_bounded_and_taken_only_with_the_same_limits() {
        let limits = |tasks: u32| {
            let mut l = EffectiveLimits::resolve(&Default::default(), Duration::from_secs(1), 1024);
            l.tasks = tasks;
            l
        };
        // Not real cgroups: the pool keeps paths, and these names are this test's own.
        let leaf = |plugin: &str, n: usize, tasks: u32| Leaf {
            plugin: plugin.into(),
            limits: limits(tasks),
            oom_before: 0,
            v2: true,
            dirs: vec![PathBuf::from(format!("/nonexistent/{plugin}-{n}"))],
            memory: None,
            cpu: None,
            pids: None,
            procs: Vec::new(),
        };
        let plugin = "pool-test-plugin";
        assert!(keep(leaf(plugin, 1, 8)).is_empty());
        assert!(keep(leaf(plugin, 2, 8)).is_empty());
        // A third for the same plugin pushes out its oldest.
        let out = keep(leaf(plugin, 3, 8));
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].dirs[0],
            PathBuf::from(format!("/nonexistent/{plugin}-1"))
        );
        // Other limits: not taken.
        assert!(Leaf::kept(plugin, &limits(9)).is_none());
        let taken = Leaf::kept(plugin, &limits(8)).expect("kept");
        assert_eq!(
            taken.dirs[0],
            PathBuf::from(format!("/nonexistent/{plugin}-2"))
        );
        assert!(Leaf::kept(plugin, &limits(8)).is_some());
        assert!(
            Leaf::kept(plugin, &limits(8)).is_none(),
            "each is taken once"
        );
        // Over all plugins, the oldest go beyond the bound.
        let mut out = Vec::new();
        for n in 0..=POOLED_LEAVES {
            out.extend(keep(leaf(&format!("pool-test-{n}"), n, 8)));
        }
        assert_eq!(out.len(), 1);
        assert!(pool().len() <= POOLED_LEAVES);
        pool().retain(|l| !l.plugin.starts_with("pool-test"));
    }
}
