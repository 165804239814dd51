//! Several workers as real processes on one real PostgreSQL database.

use crate::admin::ADMIN;
use crate::harness::{PluginDef, TestSupervisor};
use serde_json::Value;

async fn worker(url: &str, plugins: &[PluginDef]) -> TestSupervisor {
    TestSupervisor::start_full(
        plugins,
        &[],
        &[
            ("PLUGD_DATABASE_URL", url.to_owned()),
            ("PLUGD_ADMIN_TOKEN", ADMIN.to_owned()),
        ],
        None,
    )
    .await
}

async fn admin(sup: &TestSupervisor, method: reqwest::Method, path: &str) -> (u16, Value) {
    let r = sup
        .client
        .request(method, sup.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_toggle_on_one_worker_converges_on_all() {
    let url = crate::pg::fresh_database().await;
    let plugins = [PluginDef::echo("echo", "")];
    let a = worker(&url, &plugins).await;
    let b = worker(&url, &plugins).await;
    let c = worker(&url, &plugins).await;
    let all = [&a, &b, &c];

    let (status, body) = admin(
        &a,
        reqwest::Method::POST,
        "/admin/plugins/echo/disable?wait=10s",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["convergence"]["converged"], true, "{body}");
    assert_eq!(
        body["convergence"]["workers"]
            .as_object()
            .expect("workers")
            .len(),
        3
    );
    for w in all {
        w.wait_until("every worker disables it", || async {
            w.plugin_status("echo").await["state"] == "disabled"
        })
        .await;
    }
    let (status, _) = admin(&c, reqwest::Method::POST, "/admin/plugins/echo/enable").await;
    assert_eq!(status, 200);
    for w in all {
        w.wait_until("every worker runs it again", || async {
            w.plugin_status("echo").await["state"] == "ready"
        })
        .await;
    }

    a.wait_until(
        "the cluster view shows three workers that all run it",
        || async {
            let (_, view) = admin(&a, reqwest::Method::GET, "/admin/plugins/echo").await;
            view["workers"]
                .as_object()
                .is_some_and(|w| w.len() == 3 && w.values().all(|s| s["state"] == "ready"))
        },
    )
    .await;
    let (_, workers) = admin(&b, reqwest::Method::GET, "/admin/workers").await;
    let list = workers["workers"].as_array().expect("workers");
    assert_eq!(list.len(), 3);
    assert_eq!(list.iter().filter(|w| w["this"] == true).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn workers_started_together_run_a_migration_exactly_once() {
    let url = crate::pg::fresh_database().await;
    // The migration holds the lock for a second, so the other workers surely arrive meanwhile.
    let plugin = PluginDef::echo("once", "").with_file(
        "migrations/001_items.sql",
        "SELECT pg_sleep(1); CREATE TABLE once_items (id BIGINT PRIMARY KEY); INSERT INTO once_items VALUES (1);",
    );
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let (url, plugin) = (url.clone(), plugin.clone());
            tokio::spawn(async move { worker(&url, &[plugin]).await })
        })
        .collect();
    let mut workers = Vec::new();
    for s in starts {
        workers.push(s.await.expect("worker"));
    }
    for w in &workers {
        assert_eq!(
            w.plugin_status("once").await["state"],
            "ready",
            "{}",
            w.log_tail()
        );
    }
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM plugin_migrations WHERE plugin = 'once'")
            .fetch_one(&mut conn)
            .await
            .expect("count");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM once_items")
        .fetch_one(&mut conn)
        .await
        .expect("rows");
    assert_eq!((applied, rows), (1, 1));
}

#[tokio::test]
async fn a_listener_whose_connection_is_killed_resyncs() {
    let url = crate::pg::fresh_database().await;
    let plugins = [PluginDef::echo("echo", "")];
    let a = worker(&url, &plugins).await;
    let b = worker(&url, &plugins).await;
    b.wait_until("b listens", || async {
        b.logged(&["listening for changes of the desired state"])
    })
    .await;

    // Cut every connection the workers have, the listeners' included.
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&mut conn)
    .await
    .expect("terminate");
    assert!(killed >= 2, "both listeners were connected");

    let (status, _) = admin(&a, reqwest::Method::POST, "/admin/plugins/echo/disable").await;
    assert_eq!(status, 200);
    b.wait_until("b applies the change after reconnecting", || async {
        b.plugin_status("echo").await["state"] == "disabled"
    })
    .await;
    assert!(
        b.logged(&["change listener"]),
        "the lost connection is logged"
    );
}

#[tokio::test]
async fn a_bundle_installed_through_one_worker_is_served_by_all() {
    let url = crate::pg::fresh_database().await;
    let plugins = [PluginDef::echo("base", "")];
    let a = worker(&url, &plugins).await;
    let b = worker(&url, &plugins).await;
    let r = a
        .client
        .post(a.url("/admin/plugins/install"))
        .bearer_auth(ADMIN)
        .body(crate::admin::bundle("shipped", "1.0.0"))
        .send()
        .await
        .expect("install");
    assert_eq!(r.status(), 201);
    for w in [&a, &b] {
        w.wait_until("every worker serves the installed plugin", || async {
            w.get("/plugins/shipped/echo/1")
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    assert!(b.dir.path().join("plugins/shipped/.bundle-sha256").exists());

    let (status, _) = admin(&a, reqwest::Method::DELETE, "/admin/plugins/shipped").await;
    assert_eq!(status, 200);
    b.wait_until("the other worker removes it too", || async {
        b.plugin_status("shipped").await.is_null() && !b.dir.path().join("plugins/shipped").exists()
    })
    .await;
}
