//! Monitoring: memory, CPU, tasks and open files of each plugin, read from its cgroup and
//! `/proc` every few seconds, and the verdict on a sample: a soft limit logs a warning, a hard
//! limit the kernel does not enforce here kills the plugin with a reason that names the limit
//! and the usage.

use super::cgroups::Leaf;
use super::limits::EffectiveLimits;
use bytesize::ByteSize;
use std::time::Instant;

/// One sample of a plugin's resource use (the admin API's type, shown as it is sampled).
pub use plugd_api::Usage;

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
    use crate::manifest::Limits;
    use bytesize::ByteSize;
    use std::time::Duration;

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
}
