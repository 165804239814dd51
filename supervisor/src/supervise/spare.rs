//! Prepared starts: with cgroups, each running plugin has at most one start stub (see
//! [`crate::os::stub`]) waiting in a fresh leaf of its own, prepared in the background once an
//! instance has been ready for [`PREPARE_AFTER`]. The next start of the same manifest with the
//! same limits takes it and skips the fork, the cgroup migration (an RCU grace period on
//! cgroup v2, see [`crate::os::cgroups`]) and the rlimits; anything else discards it.
//!
//! A spare belongs to the instance it was prepared after (`for_epoch`): stopping that
//! instance (disable, removal, shutdown) discards it, while a crash keeps it for the restart.
//! The stub runs under the plugin's limits in its own leaf; a stub that died is noticed when
//! it is taken and the start goes the usual way.

use crate::manifest::Manifest;
use crate::os::cgroups::{Cgroups, Leaf};
use crate::os::limits::EffectiveLimits;
use crate::os::output::LogRing;
use crate::os::rlimits::Rlimits;
use crate::os::spawn::{self, Spawned};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an instance is ready before its spare is prepared.
pub const PREPARE_AFTER: Duration = Duration::from_millis(250);

/// A prepared start: the stub's process and its leaf.
#[derive(Debug)]
pub struct Spare {
    /// The stub, whose stdin takes the order.
    pub spawned: Spawned,
    /// The leaf the stub runs in.
    pub leaf: Leaf,
    manifest: Arc<Manifest>,
    limits: EffectiveLimits,
}

#[derive(Debug)]
enum Slot {
    /// Being prepared after the instance `for_epoch` became ready.
    Preparing { for_epoch: u64 },
    /// Ready to be taken.
    Ready { for_epoch: u64, spare: Box<Spare> },
}

impl Slot {
    fn for_epoch(&self) -> u64 {
        match self {
            Slot::Preparing { for_epoch } | Slot::Ready { for_epoch, .. } => *for_epoch,
        }
    }
}

/// Every plugin's prepared start, by the manifest's directory (a canary's is its own).
#[derive(Debug)]
pub struct Spares {
    /// The stub program; without it nothing is prepared.
    stub: Option<PathBuf>,
    slots: Mutex<HashMap<PathBuf, Slot>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Spares {
    /// Prepared starts with `stub` as the stub program (`None`: starts are not prepared).
    pub fn new(stub: Option<PathBuf>) -> Spares {
        Spares {
            stub,
            slots: Mutex::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the prepared start of `manifest`, if there is one for exactly this manifest and
    /// these limits and its stub still waits; discards one that does not fit.
    pub fn take(&self, manifest: &Manifest, limits: &EffectiveLimits) -> Option<Spare> {
        let mut slots = self.slots();
        if !matches!(slots.get(&manifest.dir), Some(Slot::Ready { .. })) {
            return None;
        }
        let Some(Slot::Ready { mut spare, .. }) = slots.remove(&manifest.dir) else {
            return None;
        };
        drop(slots);
        let fits = *spare.manifest == *manifest
            && spare.limits == *limits
            && matches!(spare.spawned.child.try_wait(), Ok(None))
            // A missing program is reported by the usual start, as a failure restarts cannot
            // mend; the stub could only say it exited.
            && nix::unistd::access(&manifest.program(), nix::unistd::AccessFlags::X_OK).is_ok();
        if fits {
            return Some(*spare);
        }
        tokio::spawn(discard(*spare));
        None
    }

    /// Prepares the next start of `manifest` in the background, after its instance
    /// `for_epoch` became ready (replacing any earlier one). Does nothing without cgroups,
    /// where a start has no migration to skip, or without the stub program.
    pub fn prepare(
        self: &Arc<Self>,
        cgroups: &Arc<Cgroups>,
        manifest: Arc<Manifest>,
        limits: EffectiveLimits,
        logs: Arc<LogRing>,
        for_epoch: u64,
    ) {
        let Some(stub) = self.stub.clone() else {
            return;
        };
        if matches!(**cgroups, Cgroups::Unavailable(_))
            || self.closed.load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        let replaced = self
            .slots()
            .insert(manifest.dir.clone(), Slot::Preparing { for_epoch });
        if let Some(Slot::Ready { spare, .. }) = replaced {
            tokio::spawn(discard(*spare));
        }
        let (spares, cgroups) = (self.clone(), cgroups.clone());
        tokio::spawn(async move {
            // An instance stopped soon after it became ready (a flapping enable, a quick
            // upgrade) needs no spare: the wait keeps that work off the starts around it.
            tokio::time::sleep(PREPARE_AFTER).await;
            if !spares.preparing(&manifest.dir, for_epoch) {
                return;
            }
            let epoch = super::instance::next_epoch();
            let Some(leaf) = cgroups.create_leaf(&manifest.name, epoch, &limits).await else {
                spares.forget(&manifest.dir, for_epoch);
                return;
            };
            let rlimits = Rlimits::for_limits(&limits);
            let started =
                spawn::spawn_stub(&stub, &manifest, rlimits, leaf.procs_files(), &logs).await;
            let spawned = match started {
                Ok(spawned) => spawned,
                Err(e) => {
                    tracing::debug!(plugin = %manifest.name, "cannot prepare its next start: {}", e.message);
                    leaf.remove().await;
                    spares.forget(&manifest.dir, for_epoch);
                    return;
                }
            };
            let dir = manifest.dir.clone();
            let spare = Spare {
                spawned,
                leaf,
                manifest,
                limits,
            };
            let unwanted = {
                let mut slots = spares.slots();
                if spares.preparing_in(&slots, &dir, for_epoch) {
                    slots.insert(
                        dir,
                        Slot::Ready {
                            for_epoch,
                            spare: Box::new(spare),
                        },
                    );
                    None
                } else {
                    Some(spare)
                }
            };
            if let Some(spare) = unwanted {
                discard(spare).await;
            }
        });
    }

    /// Whether the spare for instance `for_epoch` is still wanted and not yet made.
    fn preparing(&self, dir: &Path, for_epoch: u64) -> bool {
        self.preparing_in(&self.slots(), dir, for_epoch)
    }

    fn preparing_in(&self, slots: &HashMap<PathBuf, Slot>, dir: &Path, for_epoch: u64) -> bool {
        matches!(slots.get(dir), Some(Slot::Preparing { for_epoch: e }) if *e == for_epoch)
            && !self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn forget(&self, dir: &Path, for_epoch: u64) {
        let mut slots = self.slots();
        if slots.get(dir).is_some_and(|s| s.for_epoch() == for_epoch) {
            slots.remove(dir);
        }
    }

    /// Discards the prepared start that followed instance `epoch` of the manifest in `dir`
    /// (the instance is being stopped on purpose, so no restart will take it).
    pub fn discard_after(&self, dir: &Path, epoch: u64) {
        let mut slots = self.slots();
        if slots.get(dir).is_none_or(|s| s.for_epoch() != epoch) {
            return;
        }
        if let Some(Slot::Ready { spare, .. }) = slots.remove(dir) {
            tokio::spawn(discard(*spare));
        }
    }

    /// Discards every prepared start, and prepares none from now on (plugd is stopping).
    pub async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let all: Vec<Spare> = self
            .slots()
            .drain()
            .filter_map(|(_, slot)| match slot {
                Slot::Ready { spare, .. } => Some(*spare),
                Slot::Preparing { .. } => None,
            })
            .collect();
        futures_util::future::join_all(all.into_iter().map(discard)).await;
    }
}

/// Ends a stub that will not be used, and its leaf.
async fn discard(spare: Spare) {
    let Spare {
        spawned: Spawned {
            mut child, output, ..
        },
        leaf,
        ..
    } = spare;
    spawn::kill_and_reap(&mut child).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), output).await;
    leaf.remove().await;
}
