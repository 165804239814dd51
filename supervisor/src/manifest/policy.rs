//! The manifest's `[restart]` and `[health]` tables. The restart policy's decisions live in the
//! supervisor (`supervise::policy`); these are only what a plugin author writes down.

use serde::Deserialize;
use std::time::Duration;

/// The manifest's `[restart]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartPolicy {
    /// Restarts allowed within `window` before the plugin is marked failed.
    pub max_restarts: u32,
    /// The window restarts are counted in.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Delay before the second restart in a row (the first is immediate).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay between restarts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Uptime after which the backoff starts over.
    #[serde(with = "humantime_serde")]
    pub stable_after: Duration,
    /// Keep a second, handshaked instance that takes over at once when the serving one dies.
    pub standby: bool,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            standby: false,
        }
    }
}

/// The manifest's `[health]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthPolicy {
    /// Time between pings.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time a ping has to be answered before the plugin counts as unresponsive.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
        }
    }
}
