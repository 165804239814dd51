//! A plugin's build command (`build` in its manifest): run in the plugin's directory before it
//! starts, in a process group of its own with the build's rlimits, killed with its whole group
//! at its time limit, its output logged with the plugin's as stream `build`.

use super::output::LogRing;
use super::rlimits::Rlimits;
use super::spawn::{exit_reason, signal_group, spawn_build, Spawned};
use crate::manifest::Manifest;
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines of a build's output kept in its report (the last ones: where compilers say what failed).
pub const BUILD_REPORT_LINES: usize = 20;

/// How a build went: the admin API's report.
pub use plugd_api::BuildReport;

/// Runs `m`'s build command to its end or its time limit. Whatever the build leaves running
/// in its process group is killed when it ends.
pub async fn run(m: &Manifest, logs: &Arc<LogRing>) -> BuildReport {
    let started = Instant::now();
    let started_ms = plugd_protocol::time::now_unix_ms();
    let (ok, status, pid) = match spawn_build(m, logs, Rlimits::for_build()).await {
        Err(e) => (false, e.message, 0),
        Ok(Spawned {
            mut child, output, ..
        }) => {
            let pid = child.id().unwrap_or(0);
            let waited = tokio::time::timeout(m.build_timeout, child.wait()).await;
            // Nothing a build started outlives it.
            signal_group(pid, Signal::SIGKILL);
            let (ok, status) = match waited {
                Ok(status) => (
                    status.as_ref().is_ok_and(|s| s.success()),
                    exit_reason(status),
                ),
                Err(_) => {
                    let _ = child.wait().await;
                    (
                        false,
                        format!("did not finish within {:?}; killed", m.build_timeout),
                    )
                }
            };
            super::orphans::exited(pid);
            // Its last lines may still be in the pipes; they say what failed.
            let _ = tokio::time::timeout(Duration::from_millis(500), output).await;
            (ok, status, pid)
        }
    };
    let mut output: Vec<String> = logs
        .last(super::output::MAX_LINES)
        .into_iter()
        .filter(|l| pid != 0 && l.pid == pid)
        .map(|l| l.display())
        .collect();
    output.drain(..output.len().saturating_sub(BUILD_REPORT_LINES));
    BuildReport {
        command: m.build.clone(),
        ok,
        status,
        started_ms,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        output,
    }
}
