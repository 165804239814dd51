//! The manifest's `[limits]` table: what a plugin asks for, checked when the manifest is read.
//! Unset keys take the defaults here, or plugd's settings for the request timeout and body size
//! (the supervisor fills them in when it starts an instance).

use bytesize::ByteSize;
use serde::Deserialize;
use std::time::Duration;

/// Default memory limit.
pub const DEFAULT_MEMORY: u64 = 1024 * 1024 * 1024;
/// Default limit on processes plus threads.
pub const DEFAULT_TASKS: u32 = 512;
/// Default limit on open files.
pub const DEFAULT_OPEN_FILES: u64 = 1024;
/// Default limit on requests in flight.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 256;

/// The `[limits]` table. Unset keys take the defaults below (and plugd's settings for the
/// request timeout and body size).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Time the plugin has to answer one HTTP request, such as `"5s"`.
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// Largest HTTP request body forwarded to the plugin, such as `"1MiB"`.
    #[serde(default)]
    pub max_body: Option<ByteSize>,
    /// Memory the plugin may use, such as `"64MiB"`; past it the plugin is killed.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// Memory past which a warning is logged (default: 80% of `memory`).
    #[serde(default)]
    pub memory_soft: Option<ByteSize>,
    /// CPU the plugin may use, in cores (`0.5` is half of one core).
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Total CPU time after which the process is killed, such as `"10m"`.
    #[serde(default, with = "humantime_serde")]
    pub cpu_time: Option<Duration>,
    /// Processes plus threads the plugin may run.
    #[serde(default)]
    pub tasks: Option<u32>,
    /// File descriptors the plugin may hold open.
    #[serde(default)]
    pub open_files: Option<u64>,
    /// Requests in flight to the plugin at once; more get 503 at once.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Streams (streamed bodies and WebSockets) open at once; more get 503 at once.
    #[serde(default)]
    pub max_streams: Option<u32>,
    /// How long a stream may pass with no data either way before plugd ends it.
    #[serde(default, with = "humantime_serde")]
    pub stream_idle_timeout: Option<Duration>,
    /// Each side's credit per stream and direction: what may be in flight unread.
    #[serde(default)]
    pub stream_window: Option<ByteSize>,
    /// Largest request body a streaming route takes, whatever the route declares.
    #[serde(default)]
    pub max_stream_body: Option<ByteSize>,
    /// Largest WebSocket message, either direction; a bigger one closes the socket with 1009.
    #[serde(default)]
    pub max_ws_message: Option<ByteSize>,
}

/// Streams a plugin may have open at once unless its manifest says otherwise.
pub const DEFAULT_MAX_STREAMS: u32 = 64;

/// How long a stream may stay idle unless the manifest says otherwise: 60 s.
pub const DEFAULT_STREAM_IDLE: Duration = Duration::from_secs(60);

/// Each side's credit per stream and direction unless the manifest says otherwise: 1 MiB.
/// (`bench/stream.sh`: a 256 KiB window held uploads to 0.8 of nginx's throughput, waiting on
/// credit; 1 MiB gives 1.2-1.3 of it. It bounds what one stream makes plugd hold.)
pub const DEFAULT_STREAM_WINDOW: u32 = 1024 * 1024;

/// Largest WebSocket message unless the manifest says otherwise: 1 MiB.
pub const DEFAULT_MAX_WS_MESSAGE: u64 = 1024 * 1024;

/// Checks a `[limits]` table; the error names the key.
pub fn validate_limits(l: &Limits) -> Result<(), String> {
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
    if l.max_streams == Some(0) {
        return Err("field `limits.max_streams`: must be at least 1".into());
    }
    if l.stream_idle_timeout.is_some_and(|d| d.is_zero()) {
        return Err("field `limits.stream_idle_timeout`: must be greater than zero".into());
    }
    let (min, max) = (
        u64::from(plugd_protocol::stream::MIN_WINDOW),
        u64::from(u32::MAX),
    );
    if let Some(w) = l.stream_window {
        if w.as_u64() < min || w.as_u64() > max {
            return Err(format!(
                "field `limits.stream_window`: {w} is outside {} to 4 GiB",
                ByteSize(min)
            ));
        }
    }
    if let Some(m) = l.max_ws_message {
        if m.as_u64() < 125 {
            return Err(format!(
                "field `limits.max_ws_message`: {m} is below 125 bytes (a control frame's size)"
            ));
        }
    }
    if l.cpu_time.is_some_and(|d| d.is_zero()) {
        return Err("field `limits.cpu_time`: must be greater than zero".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let err = validate_limits(&l).expect_err(key);
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
}
