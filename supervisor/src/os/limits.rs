//! A plugin's limits with every default filled in: what the manifest asked for, plugd's
//! settings for the request timeout and body size, and the manifest module's defaults for the
//! rest. Enforced in layers by the sibling modules: [`super::rlimits`] in the child before
//! `exec`, [`super::cgroups`] by the kernel, [`super::usage`] by sampling.

use crate::manifest::{self, Limits};
use std::time::Duration;

/// The soft memory limit, when not set, as a share of the hard one.
const SOFT_SHARE: f64 = 0.8;

/// A plugin's limits with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveLimits {
    /// Time to answer one request.
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
    /// Streams open at once.
    pub max_streams: u32,
    /// Longest a stream may pass without data.
    pub stream_idle_timeout: Duration,
    /// Credit per stream and direction, in bytes.
    pub stream_window: u32,
    /// Largest request body of a streaming route, if bounded.
    pub max_stream_body: Option<u64>,
    /// Largest WebSocket message, in bytes.
    pub max_ws_message: usize,
}

impl EffectiveLimits {
    /// The limits as the admin API and `/readyz` show them.
    pub fn to_api(&self) -> plugd_api::plugins::Limits {
        plugd_api::plugins::Limits {
            request_timeout_ms: self.request_timeout.as_millis() as u64,
            max_body: self.max_body as u64,
            memory: self.memory,
            memory_soft: self.memory_soft,
            cpu: self.cpu,
            cpu_time_s: self.cpu_time_s,
            tasks: self.tasks,
            open_files: self.open_files,
            max_in_flight: self.max_in_flight,
            max_streams: self.max_streams,
            stream_idle_timeout_ms: self.stream_idle_timeout.as_millis() as u64,
            stream_window: self.stream_window,
            max_stream_body: self.max_stream_body,
            max_ws_message: self.max_ws_message as u64,
        }
    }

    /// Fills in the defaults: plugd's settings for timeout and body, this module's for the rest.
    pub fn resolve(l: &Limits, request_timeout: Duration, max_body: usize) -> EffectiveLimits {
        let memory = l.memory.map_or(manifest::DEFAULT_MEMORY, |m| m.as_u64());
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
            tasks: l.tasks.unwrap_or(manifest::DEFAULT_TASKS),
            open_files: l.open_files.unwrap_or(manifest::DEFAULT_OPEN_FILES),
            max_in_flight: l.max_in_flight.unwrap_or(manifest::DEFAULT_MAX_IN_FLIGHT),
            max_streams: l.max_streams.unwrap_or(manifest::DEFAULT_MAX_STREAMS),
            stream_idle_timeout: l
                .stream_idle_timeout
                .unwrap_or(manifest::DEFAULT_STREAM_IDLE),
            stream_window: l
                .stream_window
                .map_or(manifest::DEFAULT_STREAM_WINDOW, |w| {
                    u32::try_from(w.as_u64()).unwrap_or(u32::MAX)
                }),
            max_stream_body: l.max_stream_body.map(|b| b.as_u64()),
            max_ws_message: l
                .max_ws_message
                .map_or(manifest::DEFAULT_MAX_WS_MESSAGE, |m| m.as_u64())
                .try_into()
                .unwrap_or(usize::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_every_unset_limit() {
        let l = EffectiveLimits::resolve(&Limits::default(), Duration::from_secs(7), 99);
        assert_eq!(l.memory, manifest::DEFAULT_MEMORY);
        assert_eq!(
            l.memory_soft,
            (manifest::DEFAULT_MEMORY as f64 * 0.8) as u64
        );
        assert_eq!(
            (l.tasks, l.open_files),
            (manifest::DEFAULT_TASKS, manifest::DEFAULT_OPEN_FILES)
        );
        assert_eq!(
            (l.request_timeout, l.max_body),
            (Duration::from_secs(7), 99)
        );
        assert_eq!(l.cpu, None);
    }
}
