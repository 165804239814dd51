//! The rlimits each plugin process sets on itself in the forked child, before `exec`: open
//! files, no core dumps, a data-segment backstop above the memory limit, and a CPU-time limit
//! when one is set.

use super::limits::EffectiveLimits;

/// The data-segment backstop of a build command: 8 GiB.
pub const BUILD_DATA: u64 = 8 << 30;

/// The rlimits a child sets on itself before `exec`. Plain numbers, so applying them in the
/// forked child allocates nothing; a start stub is sent them (see `stub`).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
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

    /// The rlimits of a plugin's build command: compilers need far more than the plugin they
    /// build, so a fixed backstop of [`BUILD_DATA`] bytes and 4096 open files; the build's
    /// time limit is enforced by plugd, which kills its process group.
    pub fn for_build() -> Rlimits {
        Rlimits {
            open_files: 4096,
            data: BUILD_DATA,
            cpu_time_s: None,
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
