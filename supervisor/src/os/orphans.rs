//! Processes a plugin left behind, found without cgroups.
//!
//! plugd makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process a plugin started
//! and then abandoned (a daemon that called `setsid` and whose parent exited) is re-parented to
//! plugd instead of to init. Such a process is a child of plugd that plugd never spawned, so it
//! is told apart from the plugin processes by the register [`spawn`](super::spawn) keeps, and
//! tied to its instance by the `PLUGD_PLUGIN_NAME` and `PLUGD_EPOCH` in its environment.
//! [`kill`] ends an instance's leftovers when the instance ends; [`reap`] collects the exit
//! status of leftovers that ended on their own, so none stays a zombie.

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use plugd_protocol::{ENV_EPOCH, ENV_PLUGIN_NAME};
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

/// The plugin processes plugd spawned and has not yet seen exit.
static SPAWNED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// The register of spawned processes, held while spawning so a scan never mistakes a process
/// being spawned for a leftover.
pub(super) fn spawned() -> MutexGuard<'static, BTreeSet<u32>> {
    SPAWNED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forgets a spawned process once it has been waited for.
pub fn exited(pid: u32) {
    spawned().remove(&pid);
}

/// Makes plugd the subreaper of everything its plugins start. Returns whether it worked.
pub fn become_subreaper() -> bool {
    match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot become a child subreaper ({e}): processes a plugin abandons are only ended through its cgroup");
            false
        }
    }
}

/// Which leftovers to end.
#[derive(Debug, Clone, Copy)]
pub enum Whose<'a> {
    /// Those of one instance (and those that cannot be tied to any).
    Instance {
        /// The plugin's name.
        plugin: &'a str,
        /// The instance's epoch.
        epoch: u64,
    },
    /// All of them (plugd is stopping).
    All,
}

/// A leftover: a child of plugd that plugd did not spawn.
struct Leftover {
    pid: i32,
    zombie: bool,
    owner: Option<(String, u64)>,
}

fn leftovers() -> Vec<Leftover> {
    let me = std::process::id();
    let spawned = spawned();
    let mut found = Vec::new();
    for pid in children().unwrap_or_else(every_process) {
        if spawned.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: the fields start after the last ')'.
        let Some(fields) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let mut fields = fields.split_whitespace();
        let state = fields.next().unwrap_or_default();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me) {
            continue;
        }
        found.push(Leftover {
            pid: pid as i32,
            zombie: state == "Z",
            owner: owner(pid),
        });
    }
    found
}

/// plugd's children, from each of its threads' `children` file (a child's parent is the
/// thread that forked it, or any thread for one re-parented to plugd). A few reads instead of
/// one per process on the machine, which the scan after every instance's end and the periodic
/// reap would otherwise cost. `None` where the kernel has no such file
/// (`CONFIG_PROC_CHILDREN`).
fn children() -> Option<Vec<u32>> {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*AVAILABLE.get_or_init(|| std::path::Path::new("/proc/thread-self/children").exists()) {
        return None;
    }
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let mut path = task.path();
        path.push("children");
        // A thread that ended meanwhile has no file any more, and forked nothing left.
        if let Ok(list) = std::fs::read_to_string(&path) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    // A file read in more than one piece may repeat a child that others' exits moved.
    pids.sort_unstable();
    pids.dedup();
    Some(pids)
}

/// Every process id on the machine (the fallback of [`children`]).
fn every_process() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .collect()
}

/// The plugin and epoch in a process's environment, if it has both.
fn owner(pid: u32) -> Option<(String, u64)> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let (mut name, mut epoch) = (None, None);
    for var in environ.split(|&b| b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(v) = var
            .strip_prefix(ENV_PLUGIN_NAME)
            .and_then(|v| v.strip_prefix('='))
        {
            name = Some(v.to_owned());
        } else if let Some(v) = var
            .strip_prefix(ENV_EPOCH)
            .and_then(|v| v.strip_prefix('='))
        {
            epoch = v.parse::<u64>().ok();
        }
    }
    Some((name?, epoch?))
}

/// Kills the leftovers `whose` names and collects their exit status. Blocking for as long as
/// the kernel takes to end a killed process: call it off the async runtime. Returns how many
/// it killed.
pub fn kill(whose: Whose<'_>) -> usize {
    let mut killed = 0;
    for leftover in leftovers() {
        let ours = match (whose, &leftover.owner) {
            (Whose::All, _) | (Whose::Instance { .. }, None) => true,
            (Whose::Instance { plugin, epoch }, Some((name, e))) => name == plugin && *e == epoch,
        };
        if !ours {
            continue;
        }
        let pid = Pid::from_raw(leftover.pid);
        if !leftover.zombie {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            killed += 1;
            match &leftover.owner {
                Some((name, epoch)) => {
                    tracing::info!(plugin = %name, epoch, pid = leftover.pid, "killed a process the plugin left behind")
                }
                None => tracing::info!(pid = leftover.pid, "killed a process a plugin left behind"),
            }
        }
        let _ = waitpid(pid, None);
    }
    killed
}

/// Collects the exit status of leftovers that ended on their own. Never blocks.
pub fn reap() {
    for leftover in leftovers().into_iter().filter(|l| l.zombie) {
        let _ = waitpid(Pid::from_raw(leftover.pid), Some(WaitPidFlag::WNOHANG));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_children_found_include_a_process_this_one_started() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let found = super::children().unwrap_or_else(super::every_process);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&pid), "{pid} not among {found:?}");
        assert!(
            !found.contains(&std::process::id()),
            "plugd is not its own child"
        );
    }
}
