//! The reconcile loop's state machine, in-process: a fake launcher stands in for processes and
//! an in-memory store for the database, and tokio's clock is paused, so restarts, backoff,
//! crash loops, reloads, desired-state changes and an unreachable store are tested without a
//! process, a socket to a plugin or a wall-clock wait.

use super::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::time::Instant as TokioInstant;

/// What the fake launcher did and will do.
#[derive(Default)]
struct Script {
    /// Every start: plugin name and epoch.
    starts: Vec<(String, u64)>,
    /// Outcomes of the next starts, in order (none left: success).
    outcomes: VecDeque<Result<(), Failure>>,
    /// How to end each followed instance, by epoch.
    exits: HashMap<u64, mpsc::UnboundedSender<String>>,
    /// Epochs asked to stop.
    stopped: Vec<u64>,
}

#[derive(Default, Clone)]
struct FakeLauncher(Arc<Mutex<Script>>);

impl FakeLauncher {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0.lock().expect("script")
    }

    fn starts(&self) -> usize {
        self.script().starts.len()
    }

    /// Ends instance `epoch` as if its process had exited for `reason`.
    fn exit(&self, epoch: u64, reason: &str) {
        let tx = self
            .script()
            .exits
            .get(&epoch)
            .cloned()
            .expect("a followed instance");
        let _ = tx.send(reason.to_owned());
    }
}

impl Launcher for FakeLauncher {
    fn start(
        &self,
        manifest: Arc<Manifest>,
        epoch: u64,
        _logs: Arc<crate::os::output::LogRing>,
        on_spawned: Box<dyn FnOnce(u32) + Send>,
        _settings: crate::supervise::settings::Applied,
    ) -> futures_util::future::BoxFuture<'static, Result<Arc<Instance>, Failure>> {
        let outcome = {
            let mut script = self.script();
            script.starts.push((manifest.name.clone(), epoch));
            script.outcomes.pop_front().unwrap_or(Ok(()))
        };
        Box::pin(async move {
            on_spawned(0);
            outcome.map(|()| Arc::new(Instance::detached(manifest, epoch)))
        })
    }

    fn follow(
        &self,
        instance: Arc<Instance>,
        report: Box<dyn Fn(InstanceEvent) + Send + Sync>,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.script().exits.insert(instance.epoch, tx);
        Box::pin(async move {
            if let Some(reason) = rx.recv().await {
                report(InstanceEvent::Exited(reason));
            }
        })
    }

    fn stop(
        &self,
        instance: Arc<Instance>,
        _grace: Duration,
    ) -> futures_util::future::BoxFuture<'static, String> {
        let exit = {
            let mut script = self.script();
            script.stopped.push(instance.epoch);
            script.exits.get(&instance.epoch).cloned()
        };
        if let Some(exit) = exit {
            let _ = exit.send("exited with code 0".into());
        }
        Box::pin(async { "exited with code 0".to_owned() })
    }

    fn kill(&self, instance: &Instance) {
        self.exit(instance.epoch, "killed by signal SIGKILL");
    }
}

/// An in-memory desired state that can be made unreachable.
#[derive(Default)]
struct MemoryStore {
    records: Mutex<HashMap<String, PluginRecord>>,
    away: AtomicBool,
    /// Plugins whose migrations this worker has not verified: starting them needs the store.
    with_migrations: Vec<String>,
    /// Migration checks asked for.
    migrations_checked: std::sync::atomic::AtomicUsize,
}

impl MemoryStore {
    fn unreachable() -> anyhow::Error {
        anyhow::Error::new(sqlx::Error::PoolTimedOut).context("the store does not answer")
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.away.load(Ordering::SeqCst) {
            Err(Self::unreachable())
        } else {
            Ok(())
        }
    }

    fn set_enabled(&self, name: &str, enabled: bool) {
        let mut records = self.records.lock().expect("records");
        let record = records.get_mut(name).expect("registered");
        record.enabled = enabled;
        record.generation += 1;
    }
}

impl StateStore for MemoryStore {
    fn register<'a>(
        &'a self,
        m: &'a Manifest,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<PluginRecord>> {
        Box::pin(async move {
            self.check()?;
            let mut records = self.records.lock().expect("records");
            let record = records.entry(m.name.clone()).or_insert(PluginRecord {
                name: m.name.clone(),
                version: m.version.clone(),
                description: String::new(),
                author: String::new(),
                enabled: true,
                missing: false,
                generation: 1,
                bundle_sha256: None,
                settings_generation: 1,
                canary: None,
            });
            Ok(record.clone())
        })
    }

    fn mark_missing<'a>(
        &'a self,
        _present: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            self.check()?;
            Ok(Vec::new())
        })
    }

    fn plugin<'a>(
        &'a self,
        name: &'a str,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<Option<PluginRecord>>> {
        Box::pin(async move {
            self.check()?;
            Ok(self.records.lock().expect("records").get(name).cloned())
        })
    }

    fn plugins(&self) -> futures_util::future::BoxFuture<'_, anyhow::Result<Vec<PluginRecord>>> {
        Box::pin(async move {
            self.check()?;
            Ok(self
                .records
                .lock()
                .expect("records")
                .values()
                .cloned()
                .collect())
        })
    }

    fn bundle<'a>(
        &'a self,
        _sha256: &'a str,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<Option<Vec<u8>>>> {
        Box::pin(async { Ok(None) })
    }

    fn migrate_plugin<'a>(
        &'a self,
        plugin: &'a str,
        _dir: &'a std::path::Path,
    ) -> futures_util::future::BoxFuture<'a, Result<usize, Failure>> {
        Box::pin(async move {
            self.migrations_checked.fetch_add(1, Ordering::SeqCst);
            if self.with_migrations.iter().any(|p| p == plugin) && self.check().is_err() {
                return Err(Failure::store_away("cannot reach the store"));
            }
            Ok(0)
        })
    }

    fn ping(&self) -> futures_util::future::BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { self.check() })
    }

    fn end_canary<'a>(
        &'a self,
        plugin: &'a str,
        _sha256: &'a str,
        _actor: &'a str,
        _action: &'a str,
        _detail: &'a str,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            self.check()?;
            let mut records = self.records.lock().expect("records");
            Ok(records
                .get_mut(plugin)
                .and_then(|r| r.canary.take())
                .is_some())
        })
    }

    fn audit<'a>(
        &'a self,
        _plugin: &'a str,
        _action: &'a str,
        _detail: &'a str,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move { self.check() })
    }

    fn settings<'a>(
        &'a self,
        _plugin: &'a str,
    ) -> futures_util::future::BoxFuture<'a, anyhow::Result<crate::store::StoredSettings>> {
        Box::pin(async move {
            self.check()?;
            Ok(crate::store::StoredSettings::default())
        })
    }
}

/// A running loop over a plugins directory with one plugin, `a`.
struct Harness {
    _dir: tempfile::TempDir,
    launcher: FakeLauncher,
    store: Arc<MemoryStore>,
    registry: Arc<Registry>,
    handle: Handle,
}

const MANIFEST: &str = r#"name = "a"
version = "1"
command = "./a"
[restart]
max_restarts = 3
window = "60s"
initial_backoff = "1s"
max_backoff = "4s"
"#;

impl Harness {
    fn start(store: MemoryStore) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        std::fs::write(dir.path().join("a/plugin.toml"), MANIFEST).expect("manifest");
        let launcher = FakeLauncher::default();
        let store = Arc::new(store);
        let registry = Registry::new(Duration::from_secs(1), crate::feed::Feed::new("test"));
        let (mut reconciler, handle) = Reconciler::new(
            dir.path().to_path_buf(),
            Arc::new(launcher.clone()),
            Duration::from_secs(1),
            registry.clone(),
            store.clone(),
        );
        // File events would add rescans of their own; these tests send every event themselves.
        reconciler.watch_files = false;
        tokio::spawn(reconciler.run());
        Harness {
            _dir: dir,
            launcher,
            store,
            registry,
            handle,
        }
    }

    fn state(&self) -> Arc<PluginState> {
        self.registry.get("a").expect("plugin a").state()
    }

    fn restarts(&self) -> u32 {
        self.registry.get("a").expect("plugin a").restarts()
    }

    /// Waits (in paused time, which advances only when everything waits) until `a`'s state
    /// satisfies `done`.
    async fn until(&self, what: &str, done: impl Fn(&PluginState) -> bool) -> Arc<PluginState> {
        for _ in 0..10_000 {
            if let Some(slot) = self.registry.get("a") {
                let state = slot.state();
                if done(&state) {
                    return state;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!(
            "plugin a never became {what}; it is {}",
            self.state().name()
        );
    }

    async fn ready(&self) -> u64 {
        match &*self
            .until("ready", |s| matches!(s, PluginState::Ready(_)))
            .await
        {
            PluginState::Ready(i) => i.epoch,
            _ => unreachable!(),
        }
    }

    /// Waits for a ready instance other than `old`.
    async fn ready_other_than(&self, old: u64) -> u64 {
        let state = self
            .until(
                "ready again",
                |s| matches!(s, PluginState::Ready(i) if i.epoch != old),
            )
            .await;
        match &*state {
            PluginState::Ready(i) => i.epoch,
            _ => unreachable!(),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_restarts_at_once_then_backs_off_then_the_crash_loop_fails() {
    let h = Harness::start(MemoryStore::default());
    let first = h.ready().await;
    assert_eq!(h.launcher.starts(), 1);

    // The first crash restarts at once.
    let crashed = TokioInstant::now();
    h.launcher.exit(first, "exited with code 1");
    let second = h.ready_other_than(first).await;
    assert!(
        crashed.elapsed() < Duration::from_millis(100),
        "{:?}",
        crashed.elapsed()
    );
    assert_eq!(h.restarts(), 1);

    // The second waits in backoff: at least half the initial backoff (jitter), at most all.
    let crashed = TokioInstant::now();
    h.launcher.exit(second, "exited with code 1");
    let state = h
        .until("backoff", |s| matches!(s, PluginState::Backoff { .. }))
        .await;
    assert_eq!(state.reason(), Some("exited with code 1"));
    let third = h.ready_other_than(second).await;
    let waited = crashed.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(1100),
        "{waited:?}"
    );
    assert_eq!(h.restarts(), 2);

    // The third backs off longer; the fourth exit within the window is a crash loop.
    h.launcher.exit(third, "exited with code 1");
    let fourth = h.ready_other_than(third).await;
    assert_eq!(h.restarts(), 3);
    h.launcher.exit(fourth, "killed by signal SIGSEGV");
    let state = h
        .until("failed", |s| matches!(s, PluginState::Failed(_)))
        .await;
    let reason = state.reason().expect("a reason");
    assert!(
        reason.contains("crash loop") && reason.contains("SIGSEGV"),
        "{reason}"
    );
    assert_eq!(h.launcher.starts(), 4, "no start after giving up");

    // An admin's restart is the way out of failed.
    h.handle.send(Event::Restart { name: "a".into() });
    h.ready_other_than(fourth).await;
    assert_eq!(h.launcher.starts(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_cannot_work_fails_at_once() {
    let h = Harness::start(MemoryStore::default());
    h.launcher
        .script()
        .outcomes
        .push_back(Err(Failure::never("cannot start ./a: command not found")));
    let state = h
        .until("failed", |s| matches!(s, PluginState::Failed(_)))
        .await;
    assert_eq!(state.reason(), Some("cannot start ./a: command not found"));
    assert_eq!(h.restarts(), 0);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(h.launcher.starts(), 1, "a fatal failure is not retried");
}

#[tokio::test(start_paused = true)]
async fn a_reload_swaps_blue_green_and_a_failed_one_keeps_the_old_instance() {
    let h = Harness::start(MemoryStore::default());
    let blue = h.ready().await;

    h.handle.send(Event::Reload { name: "a".into() });
    let green = h.ready_other_than(blue).await;
    h.until("draining the old one", |_| {
        h.launcher.script().stopped.contains(&blue)
    })
    .await;
    assert_eq!(h.restarts(), 0, "a reload is not a restart");

    // A reload whose new instance fails leaves the running one serving.
    h.launcher
        .script()
        .outcomes
        .push_back(Err(Failure::later("no handshake within 10s")));
    h.handle.send(Event::Reload { name: "a".into() });
    h.until("a second start", |_| h.launcher.starts() == 3)
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    match &*h.state() {
        PluginState::Ready(i) => assert_eq!(i.epoch, green),
        other => panic!("expected the green instance to serve, got {}", other.name()),
    }
    assert!(!h.launcher.script().stopped.contains(&green));
}

#[tokio::test(start_paused = true)]
async fn the_desired_state_stops_and_starts_the_plugin() {
    let h = Harness::start(MemoryStore::default());
    let first = h.ready().await;

    h.store.set_enabled("a", false);
    h.handle.send(Event::Desired { name: "a".into() });
    h.until("disabled", |s| matches!(s, PluginState::Disabled))
        .await;
    assert!(h.launcher.script().stopped.contains(&first));
    assert_eq!(h.restarts(), 0, "a stop on purpose is not a crash");

    h.store.set_enabled("a", true);
    h.handle.send(Event::Desired { name: "a".into() });
    h.ready_other_than(first).await;
    assert_eq!(h.launcher.starts(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_record_read_with_its_change_is_applied_without_another_read() {
    let h = Harness::start(MemoryStore::default());
    let first = h.ready().await;

    // The store is away: only the record that came with the change can stop the plugin.
    h.store.away.store(true, Ordering::SeqCst);
    let mut record = h.store.records.lock().expect("records")["a"].clone();
    record.enabled = false;
    h.handle.send(Event::DesiredKnown {
        name: "a".into(),
        record: Some(record),
    });
    h.until("disabled", |s| matches!(s, PluginState::Disabled))
        .await;
    assert!(h.launcher.script().stopped.contains(&first));
}

#[tokio::test(start_paused = true)]
async fn starts_that_fail_for_want_of_plugds_resources_do_not_count_as_crashes() {
    let h = Harness::start(MemoryStore::default());
    let emfile = std::io::Error::from_raw_os_error(nix::libc::EMFILE);
    {
        let mut script = h.launcher.script();
        for _ in 0..5 {
            let failure = Failure::from_io(format!("cannot start ./a: {emfile}"), &emfile);
            script.outcomes.push_back(Err(failure));
        }
    }
    let state = h
        .until("backoff", |s| matches!(s, PluginState::Backoff { .. }))
        .await;
    assert!(
        state
            .reason()
            .is_some_and(|r| r.contains("Too many open files")),
        "{:?}",
        state.reason()
    );
    // Five failed starts, more than the crash loop allows, and still no restart counted: once
    // plugd has descriptors again the plugin starts. (Retries come every few seconds.)
    tokio::time::sleep(Duration::from_secs(20)).await;
    h.ready().await;
    assert_eq!(h.launcher.starts(), 6);
    assert_eq!(h.restarts(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_needs_the_unreachable_store_waits_without_using_restarts() {
    let store = MemoryStore {
        with_migrations: vec!["a".into()],
        ..MemoryStore::default()
    };
    store.away.store(true, Ordering::SeqCst);
    let h = Harness::start(store);
    let state = h
        .until("backoff", |s| matches!(s, PluginState::Backoff { .. }))
        .await;
    assert!(
        state
            .reason()
            .is_some_and(|r| r.contains("cannot reach the store")),
        "{:?}",
        state.reason()
    );
    // It tries again every few seconds, and none of it counts as a restart.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let attempts = h.store.migrations_checked.load(Ordering::SeqCst);
    assert!(attempts >= 3, "{attempts} attempts in 10 s");
    assert_eq!(h.launcher.starts(), 0, "no process without its migrations");
    assert_eq!(h.restarts(), 0);
    assert!(matches!(*h.state(), PluginState::Backoff { .. }));

    h.store.away.store(false, Ordering::SeqCst);
    h.ready().await;
    assert_eq!(h.restarts(), 0);
}
