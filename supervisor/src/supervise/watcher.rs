//! Watches the plugins directory (and each plugin's program) and asks the reconcile loop for a
//! rescan when something changes. Bursts of file events (an editor's save, an unpacked bundle,
//! a linker rewriting a binary) are debounced into one rescan.

use super::reconcile::{Event, Handle};
use notify::{EventKind, RecursiveMode, Watcher as _};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Quiet time after the last event before the rescan.
const SETTLE: Duration = Duration::from_millis(300);
/// Longest a steady stream of events can delay the rescan.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// The file watcher; dropping it stops watching.
pub struct Watcher {
    inner: notify::RecommendedWatcher,
    programs: Arc<Mutex<HashSet<PathBuf>>>,
    program_dirs: HashSet<PathBuf>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("program_dirs", &self.program_dirs)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// Watches `plugins_dir` recursively; changes end up as `Rescan` events on `handle`.
    pub fn start(plugins_dir: &Path, handle: Handle) -> notify::Result<Watcher> {
        let programs: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let root = plugins_dir.to_path_buf();
        let wanted = programs.clone();
        let mut inner =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!("file watcher: {e}");
                        return;
                    }
                };
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                let programs = wanted.lock().unwrap_or_else(|e| e.into_inner());
                if event
                    .paths
                    .iter()
                    .any(|p| p.starts_with(&root) || programs.contains(p))
                {
                    let _ = tx.send(());
                }
            })?;
        inner.watch(plugins_dir, RecursiveMode::Recursive)?;
        tokio::spawn(debounce(rx, handle));
        Ok(Watcher {
            inner,
            programs,
            program_dirs: HashSet::new(),
        })
    }

    /// Also watches these programs (a rebuilt binary reloads its plugin), in addition to
    /// everything under the plugins directory.
    pub fn watch_programs(&mut self, programs: impl IntoIterator<Item = PathBuf>) {
        let canonical: HashSet<PathBuf> = programs
            .into_iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect();
        for dir in canonical.iter().filter_map(|p| p.parent()) {
            if !self.program_dirs.contains(dir) {
                match self.inner.watch(dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.program_dirs.insert(dir.to_path_buf());
                    }
                    Err(e) => tracing::warn!("cannot watch {}: {e}", dir.display()),
                }
            }
        }
        *self.programs.lock().unwrap_or_else(|e| e.into_inner()) = canonical;
    }
}

async fn debounce(mut rx: mpsc::UnboundedReceiver<()>, handle: Handle) {
    while rx.recv().await.is_some() {
        let deadline = Instant::now() + MAX_DELAY;
        while Instant::now() < deadline {
            match tokio::time::timeout(SETTLE, rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        tracing::debug!("files changed; rescanning");
        if !handle.send(Event::Rescan { requested: false }) {
            return;
        }
    }
}
