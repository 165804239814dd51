//! Readiness: plugd is ready once every plugin has settled (ready, failed, waiting to retry,
//! stopped or disabled); systemd hears it (`READY=1`, `STATUS=`), and so does whoever started
//! plugd (a line on stdout). A change of any plugin's state wakes the heartbeat.

use super::state::PluginState;
use super::Reconciler;
use std::io::Write;

/// Tells systemd how things stand; outside systemd (no `NOTIFY_SOCKET`) it does nothing.
pub(super) fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// Prints a line for whoever started plugd (scripts and tests wait for these on stdout).
pub fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl Reconciler {
    /// Announces readiness once every plugin has settled, and keeps systemd's STATUS current.
    pub(super) fn publish(&mut self) {
        let (mut ready, mut failed, mut other, mut unsettled) = (0, 0, 0, 0);
        for e in self.entries.values() {
            match *e.slot.state() {
                PluginState::Ready(_) => ready += 1,
                PluginState::Failed(_) => failed += 1,
                // Waiting to retry after a failed attempt counts as settled for start-up.
                PluginState::Backoff { .. } | PluginState::Stopped(_) | PluginState::Disabled => {
                    other += 1
                }
                _ => {
                    other += 1;
                    unsettled += 1;
                }
            }
        }
        if !self.registry.is_ready() && unsettled == 0 {
            self.registry.set_ready();
            tracing::info!(ready, failed, "plugins started");
            announce(&format!(
                "plugd ready: {ready} plugins ready, {failed} failed"
            ));
            notify(&[sd_notify::NotifyState::Ready]);
        }
        let signature: Vec<(&str, &'static str, u64)> = self
            .entries
            .iter()
            .map(|(name, e)| {
                let state = e.slot.state();
                let epoch = match &*state {
                    PluginState::Ready(i) => i.epoch,
                    _ => 0,
                };
                (name.as_str(), state.name(), epoch)
            })
            .collect();
        let signature = format!("{signature:?}");
        if signature != self.last_states {
            self.last_states = signature;
            self.registry.notify_changed();
        }
        let status = format!("{ready} plugins ready, {failed} failed, {other} other");
        if status != self.last_status {
            notify(&[sd_notify::NotifyState::Status(&status)]);
            self.last_status = status;
        }
    }
}
