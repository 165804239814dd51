//! The state store, every test against both backends: SQLite in a temp dir and a real
//! PostgreSQL (see `pg.rs`).

use plugd::manifest::{self, Manifest};
use plugd::store::kv::{KvQuota, OverQuota};
use plugd::store::{Backend, SetOutcome, Store};

/// `Some(true)` changed, `Some(false)` unchanged, `None` unknown plugin.
fn changed(outcome: SetOutcome) -> Option<bool> {
    match outcome {
        SetOutcome::Unknown => None,
        SetOutcome::Unchanged(_) => Some(false),
        SetOutcome::Changed(_) => Some(true),
        SetOutcome::Conflict(r) => panic!("unexpected conflict at generation {}", r.generation),
    }
}

/// One store per backend, migrated, and the temp dir that keeps the SQLite file alive.
async fn stores() -> Vec<(Store, tempfile::TempDir)> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Store::open(None, dir.path()).await.expect("sqlite");
    out.push((sqlite, dir));
    let url = crate::pg::fresh_database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Store::open(Some(&url), dir.path()).await.expect("postgres");
    out.push((pg, dir));
    for (store, _) in &out {
        store.migrate().await.expect("migrate");
        // Migrating twice is a no-op.
        store.migrate().await.expect("migrate again");
    }
    assert_eq!(out[0].0.backend(), Backend::Sqlite);
    assert_eq!(out[1].0.backend(), Backend::Postgres);
    out
}

fn manifest(name: &str, version: &str) -> Manifest {
    manifest::parse(&format!(
        "name = {name:?}\nversion = {version:?}\ndescription = \"d\"\nauthor = \"a\"\ncommand = \"x\"\n"
    ))
    .expect("valid manifest")
}

#[tokio::test]
async fn registration_keeps_an_admins_choice_and_marks_missing_plugins() {
    for (store, _dir) in stores().await {
        let b = store.backend();
        let rec = store
            .register(&manifest("alpha", "1.0"))
            .await
            .expect("register");
        assert!(
            rec.enabled && !rec.missing,
            "{b:?}: new plugins are enabled"
        );
        store
            .register(&manifest("beta", "1.0"))
            .await
            .expect("register");

        assert_eq!(
            changed(
                store
                    .set_enabled("alpha", false, "ops", None)
                    .await
                    .expect("disable")
            ),
            Some(true)
        );
        // Discovery again (a restart): the admin's choice stands, the manifest's data updates.
        let rec = store
            .register(&manifest("alpha", "1.1"))
            .await
            .expect("again");
        assert!(!rec.enabled, "{b:?}: still disabled");
        assert_eq!(rec.version, "1.1");
        assert!(rec.generation > 1, "{b:?}: generation bumped by the change");

        let missing = store
            .mark_missing(&["alpha".into()])
            .await
            .expect("missing");
        assert_eq!(missing, vec!["beta".to_string()]);
        let beta = store
            .plugin("beta")
            .await
            .expect("get")
            .expect("kept, not deleted");
        assert!(beta.missing);
        let back = store
            .register(&manifest("beta", "1.0"))
            .await
            .expect("back");
        assert!(!back.missing, "{b:?}: found again");
        assert_eq!(store.plugins().await.expect("list").len(), 2);
        store.ping().await.expect("ping");
    }
}

#[tokio::test]
async fn changes_are_audited_and_repeats_change_nothing() {
    for (store, _dir) in stores().await {
        let b = store.backend();
        store
            .register(&manifest("alpha", "1.0"))
            .await
            .expect("register");
        assert_eq!(
            changed(
                store
                    .set_enabled("alpha", true, "ops", None)
                    .await
                    .expect("noop")
            ),
            Some(false)
        );
        assert_eq!(
            changed(
                store
                    .set_enabled("nope", true, "ops", None)
                    .await
                    .expect("unknown")
            ),
            None
        );
        assert_eq!(
            changed(
                store
                    .set_enabled("alpha", false, "ops", None)
                    .await
                    .expect("off")
            ),
            Some(true)
        );
        assert_eq!(
            changed(
                store
                    .set_enabled("alpha", false, "ops", None)
                    .await
                    .expect("again")
            ),
            Some(false)
        );
        assert_eq!(
            changed(
                store
                    .set_enabled("alpha", true, "dev", None)
                    .await
                    .expect("on")
            ),
            Some(true)
        );
        for i in 0..5 {
            store
                .record(Some("other"), "plugd", "restart", &format!("n{i}"))
                .await
                .expect("record");
        }
        let alpha = store.events(Some("alpha"), None, 10).await.expect("events");
        let actions: Vec<(&str, &str)> = alpha
            .iter()
            .map(|e| (e.actor.as_str(), e.action.as_str()))
            .collect();
        assert_eq!(
            actions,
            vec![("dev", "enable"), ("ops", "disable")],
            "{b:?}"
        );

        let page1 = store.events(None, None, 3).await.expect("page 1");
        assert_eq!(page1.len(), 3);
        let page2 = store
            .events(None, Some(page1[2].id), 3)
            .await
            .expect("page 2");
        assert!(page2.iter().all(|e| e.id < page1[2].id));
        assert_eq!(
            page1.len()
                + page2.len()
                + store
                    .events(None, Some(page2[2].id), 10)
                    .await
                    .expect("rest")
                    .len(),
            7
        );
    }
}

#[tokio::test]
async fn plugin_migrations_apply_once_refuse_edits_and_roll_back_failures() {
    for (store, dir) in stores().await {
        let b = store.backend();
        let plugin = dir.path().join("plug");
        let migrations = plugin.join("migrations");
        std::fs::create_dir_all(&migrations).expect("mkdir");
        std::fs::write(
            migrations.join("001_items.sql"),
            "CREATE TABLE plug_items (id BIGINT PRIMARY KEY, name TEXT NOT NULL);",
        )
        .expect("write");
        std::fs::write(
            migrations.join("002_seed.sql"),
            "INSERT INTO plug_items (id, name) VALUES (1, 'one');",
        )
        .expect("write");
        assert_eq!(store.migrate_plugin("plug", &plugin).await, Ok(2), "{b:?}");
        assert_eq!(
            store.migrate_plugin("plug", &plugin).await,
            Ok(0),
            "{b:?}: once only"
        );

        // A failing migration is rolled back whole and names the statement's error.
        std::fs::write(
            migrations.join("003_bad.sql"),
            "INSERT INTO plug_items (id, name) VALUES (2, 'two'); INSERT INTO no_such_table VALUES (1);",
        )
        .expect("write");
        let err = store
            .migrate_plugin("plug", &plugin)
            .await
            .expect_err("fails");
        assert!(
            err.message.contains("003_bad.sql") && err.message.contains("no_such_table"),
            "{b:?}: {err}"
        );
        assert!(
            err.is_fatal(),
            "{b:?}: a wrong statement is not worth a retry"
        );
        // The failure left nothing recorded: the fixed file applies, and its row is there once.
        std::fs::write(
            migrations.join("003_bad.sql"),
            "INSERT INTO plug_items (id, name) VALUES (2, 'two');",
        )
        .expect("write");
        assert_eq!(
            store.migrate_plugin("plug", &plugin).await,
            Ok(1),
            "{b:?}: the failed migration was not recorded"
        );

        // An applied migration that changed is refused.
        std::fs::write(
            migrations.join("002_seed.sql"),
            "INSERT INTO plug_items (id, name) VALUES (9, 'nine');",
        )
        .expect("edit");
        let err = store
            .migrate_plugin("plug", &plugin)
            .await
            .expect_err("changed");
        assert!(
            err.message.contains("002_seed.sql") && err.message.contains("must not change"),
            "{b:?}: {err}"
        );
        assert!(err.is_fatal());
    }
}

#[tokio::test]
async fn the_kv_store_versions_expires_lists_and_compares() {
    for (store, _dir) in stores().await {
        let b = store.backend();
        assert_eq!(store.kv_get("p", "a").await.expect("get"), None);
        assert_eq!(
            store
                .kv_set("p", "a", b"1", None, QUOTA)
                .await
                .expect("set"),
            1
        );
        assert_eq!(
            store
                .kv_set("p", "a", b"2", None, QUOTA)
                .await
                .expect("set"),
            2,
            "{b:?}"
        );
        let item = store.kv_get("p", "a").await.expect("get").expect("present");
        assert_eq!((item.value.as_slice(), item.version), (&b"2"[..], 2));
        assert_eq!(
            store.kv_get("other", "a").await.expect("get"),
            None,
            "{b:?}: per plugin"
        );

        store
            .kv_set("p", "ab", b"x", None, QUOTA)
            .await
            .expect("set");
        store
            .kv_set("p", "b", b"y", None, QUOTA)
            .await
            .expect("set");
        store
            .kv_set("p", "a_%", b"z", None, QUOTA)
            .await
            .expect("set");
        let list = |prefix: &'static str, after: Option<&'static str>, limit, budget| {
            let store = store.clone();
            async move {
                let page = store
                    .kv_list("p", prefix, after, limit, budget)
                    .await
                    .expect("list");
                let keys: Vec<String> = page.items.into_iter().map(|i| i.key).collect();
                (keys, page.more)
            }
        };
        assert_eq!(
            list("a", None, 10, 1 << 20).await,
            (vec!["a".into(), "a_%".into(), "ab".into()], false),
            "{b:?}"
        );
        assert_eq!(
            list("a_", None, 10, 1 << 20).await,
            (vec!["a_%".into()], false),
            "{b:?}: no LIKE wildcards"
        );
        // Pages by count and by bytes (each entry here is 2 to 4 bytes), then on from `after`.
        assert_eq!(
            list("a", None, 2, 1 << 20).await,
            (vec!["a".into(), "a_%".into()], true),
            "{b:?}"
        );
        assert_eq!(
            list("a", None, 10, 5).await,
            (vec!["a".into()], true),
            "{b:?}: the byte budget ends the page"
        );
        assert_eq!(
            list("a", None, 10, 0).await,
            (vec!["a".into()], true),
            "{b:?}: a page always holds one entry"
        );
        assert_eq!(
            list("a", Some("a_%"), 10, 1 << 20).await,
            (vec!["ab".into()], false),
            "{b:?}"
        );

        assert_eq!(
            store
                .kv_cas("p", "a", Some(2), b"3", None, QUOTA)
                .await
                .expect("cas"),
            (true, Some(3))
        );
        assert_eq!(
            store
                .kv_cas("p", "a", Some(2), b"4", None, QUOTA)
                .await
                .expect("cas"),
            (false, Some(3)),
            "{b:?}"
        );
        assert_eq!(
            store
                .kv_cas("p", "new", None, b"n", None, QUOTA)
                .await
                .expect("cas"),
            (true, Some(1))
        );
        assert_eq!(
            store
                .kv_cas("p", "new", None, b"n", None, QUOTA)
                .await
                .expect("cas"),
            (false, Some(1))
        );

        store
            .kv_set(
                "p",
                "brief",
                b"t",
                Some(std::time::Duration::from_millis(1)),
                QUOTA,
            )
            .await
            .expect("set");
        let start = std::time::Instant::now();
        while store.kv_get("p", "brief").await.expect("get").is_some() {
            assert!(
                start.elapsed() < crate::harness::DEADLINE,
                "{b:?}: never expired"
            );
            tokio::task::yield_now().await;
        }
        assert!(
            !store.kv_delete("p", "brief").await.expect("delete"),
            "expired counts as absent"
        );
        assert!(store.kv_delete("p", "b").await.expect("delete"));
        assert!(!store.kv_delete("p", "b").await.expect("delete"));
    }
}

const QUOTA: KvQuota = KvQuota {
    keys: 1000,
    bytes: 1 << 20,
};

#[tokio::test]
async fn the_kv_quota_counts_live_keys_and_bytes() {
    for (store, _dir) in stores().await {
        let b = store.backend();
        let small = KvQuota { keys: 2, bytes: 10 };
        store
            .kv_set("q", "a", b"12345", None, small)
            .await
            .expect("set");
        // Rewriting a key replaces its bytes rather than adding to them.
        store
            .kv_set("q", "a", b"1234567", None, small)
            .await
            .expect("rewrite");
        let err = store
            .kv_set("q", "b", b"1234", None, small)
            .await
            .expect_err("over the byte quota");
        let over = err.downcast_ref::<OverQuota>().expect("an OverQuota");
        assert!(over.0.contains("10 bytes"), "{b:?}: {over}");
        store
            .kv_set("q", "b", b"12", None, small)
            .await
            .expect("fits");
        let err = store
            .kv_cas("q", "c", None, b"", None, small)
            .await
            .expect_err("over the key quota");
        assert!(err.to_string().contains("2 keys"), "{b:?}: {err}");
        assert_eq!(
            store.kv_get("q", "c").await.expect("get"),
            None,
            "{b:?}: nothing written"
        );
        // Other plugins have quotas of their own.
        store
            .kv_set("r", "c", b"1234567", None, small)
            .await
            .expect("set");
    }
}

#[tokio::test]
async fn a_write_naming_a_stale_generation_is_refused() {
    for (store, _dir) in stores().await {
        let b = store.backend();
        let rec = store
            .register(&manifest("alpha", "1.0"))
            .await
            .expect("register");
        let g = rec.generation;
        match store
            .set_enabled("alpha", false, "ops", Some(g))
            .await
            .expect("first")
        {
            SetOutcome::Changed(r) => assert_eq!(r.generation, g + 1, "{b:?}"),
            other => panic!("{b:?}: {other:?}"),
        }
        // A second writer that read the same generation loses, and learns the current value.
        match store
            .set_enabled("alpha", true, "dev", Some(g))
            .await
            .expect("second")
        {
            SetOutcome::Conflict(r) => {
                assert_eq!((r.enabled, r.generation), (false, g + 1), "{b:?}")
            }
            other => panic!("{b:?}: {other:?}"),
        }
        assert!(matches!(
            store
                .set_enabled("alpha", true, "dev", Some(g + 1))
                .await
                .expect("third"),
            SetOutcome::Changed(_)
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_reading_while_writers_commit_sees_every_change() {
    const PLUGINS: usize = 24;
    for (store, _dir) in stores().await {
        let b = store.backend();
        let names: Vec<String> = (0..PLUGINS).map(|i| format!("p{i}")).collect();
        for name in &names {
            store
                .register(&manifest(name, "1.0"))
                .await
                .expect("register");
        }
        let mut cursor = store.newest_change().await.expect("newest");
        let writers: Vec<_> = names
            .iter()
            .map(|name| {
                let (store, name) = (store.clone(), name.clone());
                tokio::spawn(async move {
                    store
                        .set_enabled(&name, false, "ops", None)
                        .await
                        .expect("disable")
                })
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        // Read as a worker's follower does, while the writers commit: a version drawn before
        // one already read must not commit after it.
        while writers.iter().any(|w| !w.is_finished()) {
            let (last, changed) = store.changes_since(cursor).await.expect("changes");
            cursor = last;
            seen.extend(changed.into_iter().map(|c| c.name));
            tokio::task::yield_now().await;
        }
        for w in writers {
            assert_eq!(changed(w.await.expect("writer")), Some(true));
        }
        let (_, changed) = store.changes_since(cursor).await.expect("changes");
        seen.extend(changed.into_iter().map(|c| c.name));
        let missed: Vec<_> = names.iter().filter(|n| !seen.contains(*n)).collect();
        assert!(missed.is_empty(), "{b:?}: the follower missed {missed:?}");
    }
}
