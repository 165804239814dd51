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

/// One client's committed writes: (generation it made, enabled value it wrote).
type Writes = Vec<(i64, bool)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_toggles_through_several_workers_lose_no_update() {
    let url = crate::pg::fresh_database().await;
    let plugins = [PluginDef::echo("echo", "")];
    let workers = [
        worker(&url, &plugins).await,
        worker(&url, &plugins).await,
        worker(&url, &plugins).await,
    ];
    let (_, start) = admin(&workers[0], reqwest::Method::GET, "/admin/plugins/echo").await;
    let (g0, initially) = (
        start["generation"].as_i64().expect("generation"),
        start["enabled"].as_bool().expect("enabled"),
    );

    // Four clients, each reading the plugin and flipping it with If-Match, through a different
    // worker every round: read-modify-write races that only a conditional write survives.
    let bases: Vec<String> = workers.iter().map(|w| w.url("")).collect();
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let bases = bases.clone();
            let http = workers[0].client.clone();
            tokio::spawn(async move {
                let (mut writes, mut conflicts): (Writes, u32) = (Vec::new(), 0);
                for round in 0..12 {
                    let base = &bases[(client + round) % bases.len()];
                    let current: Value = http
                        .get(format!("{base}/admin/plugins/echo"))
                        .bearer_auth(ADMIN)
                        .send()
                        .await
                        .expect("read")
                        .json()
                        .await
                        .expect("json");
                    let flip = !current["enabled"].as_bool().expect("enabled");
                    let action = if flip { "enable" } else { "disable" };
                    let r = http
                        .post(format!("{base}/admin/plugins/echo/{action}"))
                        .bearer_auth(ADMIN)
                        .header("If-Match", format!("\"{}\"", current["generation"]))
                        .send()
                        .await
                        .expect("write");
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.expect("json");
                    match status {
                        200 => {
                            assert_eq!(body["changed"], true, "{body}");
                            writes.push((body["generation"].as_i64().expect("gen"), flip));
                        }
                        409 => {
                            assert!(
                                body["current"]["generation"].as_i64()
                                    > current["generation"].as_i64(),
                                "{body}"
                            );
                            conflicts += 1;
                        }
                        _ => panic!("unexpected answer {status}: {body}"),
                    }
                }
                (writes, conflicts)
            })
        })
        .collect();
    let mut writes: Writes = Vec::new();
    let mut conflicts = 0;
    for c in clients {
        let (w, n) = c.await.expect("client");
        writes.extend(w);
        conflicts += n;
    }
    assert!(!writes.is_empty());
    writes.sort();

    // Every committed write made its own generation, one after another, and each flipped the
    // state the one before it left: none was lost or applied on a stale read.
    let generations: Vec<i64> = writes.iter().map(|(g, _)| *g).collect();
    let expected: Vec<i64> = (g0 + 1..=g0 + writes.len() as i64).collect();
    assert_eq!(generations, expected, "{conflicts} conflicts");
    let mut state = initially;
    for (generation, enabled) in &writes {
        assert_eq!(*enabled, !state, "write at generation {generation}");
        state = *enabled;
    }

    // The store holds the last committed write, and every worker converges on it.
    let (_, end) = admin(&workers[1], reqwest::Method::GET, "/admin/plugins/echo").await;
    assert_eq!(end["generation"], g0 + writes.len() as i64);
    assert_eq!(end["enabled"], state);
    let want = if state { "ready" } else { "disabled" };
    for w in &workers {
        w.wait_until("every worker runs the last committed state", || async {
            w.plugin_status("echo").await["state"] == want
        })
        .await;
    }
    workers[2]
        .wait_until("the cluster view agrees", || async {
            let (_, view) = admin(&workers[2], reqwest::Method::GET, "/admin/plugins/echo").await;
            view["workers"]
                .as_object()
                .is_some_and(|w| w.len() == 3 && w.values().all(|s| s["state"] == want))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_leaves_serving_untouched_and_the_cluster_converges_after() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    // A server of this test's own, since it is stopped and started again.
    let cluster = tokio::task::spawn_blocking(crate::pg::Cluster::start_new)
        .await
        .expect("cluster");
    let url = crate::pg::database_on(&cluster.url()).await;
    let plugins = [
        PluginDef::echo("echo", ""),
        PluginDef::echo("migrated", "").with_file(
            "migrations/001_items.sql",
            "CREATE TABLE migrated_items (id BIGINT PRIMARY KEY);",
        ),
    ];
    let workers = [
        worker(&url, &plugins).await,
        worker(&url, &plugins).await,
        worker(&url, &plugins).await,
    ];
    for w in &workers {
        w.wait_until("the worker listens", || async {
            w.logged(&["listening for changes of the desired state"])
        })
        .await;
    }

    // Requests flow through every worker for the whole outage.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = workers
        .iter()
        .map(|w| {
            let (http, route) = (w.client.clone(), w.url("/plugins/echo/echo/1"));
            let (stop, served) = (stop.clone(), served.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match http.get(&route).send().await {
                        Ok(r) if r.status() == 200 => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures.push(format!("status {}", r.status())),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        })
        .collect();

    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop())
        .await
        .expect("stop PostgreSQL");
    let during = served.load(Ordering::SeqCst);

    // Admin writes are refused with a clear answer, and readiness says why.
    let (status, body) = admin(
        &workers[0],
        reqwest::Method::POST,
        "/admin/plugins/echo/disable",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "store unavailable", "{body}");
    // Readiness reuses a probe of the store for 250 ms: it turns within that.
    workers[1]
        .wait_until("readyz names the store", || async {
            let Ok(r) = workers[1].get("/readyz").await else {
                return false;
            };
            r.status() == 503
                && r.json::<Value>().await.is_ok_and(|ready| {
                    ready["store"] != "ok" && ready["plugins"]["echo"]["state"] == "ready"
                })
        })
        .await;

    // Every worker notices and says so, and keeps serving meanwhile.
    for w in &workers {
        w.wait_until("the worker logs the outage", || async {
            (w.logged(&["change listener lost its connection"])
                || w.logged(&["change listener went silent"]))
                && w.logged(&["cannot write the heartbeat"])
        })
        .await;
    }
    workers[0]
        .wait_until("requests are served during the outage", || async {
            served.load(Ordering::SeqCst) > during + 300
        })
        .await;

    // A plugin with migrations that crashes meanwhile comes back: this worker already found
    // its migrations applied and does not need the database to start it again.
    let crashed = workers[0].plugin_status("migrated").await;
    let pid = crashed["pid"].as_i64().expect("pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the plugin");
    workers[0]
        .wait_until("the crashed plugin runs again", || async {
            let s = workers[0].plugin_status("migrated").await;
            s["state"] == "ready" && s["pid"] != pid
        })
        .await;

    // A plugin that appears meanwhile cannot have its migrations checked: it waits for the
    // store, retrying without using up its restarts (one allowed here), and never fails.
    PluginDef::echo("newcomer", "[restart]\nmax_restarts = 1\n")
        .with_file(
            "migrations/001_things.sql",
            "CREATE TABLE newcomer_things (id BIGINT PRIMARY KEY);",
        )
        .install(&workers[1].dir.path().join("plugins"));
    workers[1]
        .wait_until_within(
            "the newcomer waits for the store, twice",
            std::time::Duration::from_secs(45),
            || async { workers[1].logged_count(&["plugin=newcomer", "cannot start it yet"]) >= 2 },
        )
        .await;
    let waiting = workers[1].plugin_status("newcomer").await;
    assert_eq!(waiting["state"], "backoff", "{waiting}");
    assert_eq!(waiting["restarts"], 0, "{waiting}");
    assert!(
        waiting["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot reach the store")),
        "{waiting}"
    );

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .expect("start PostgreSQL");
    for w in &workers {
        w.wait_until(
            "the listener reconnects and the heartbeat resumes",
            || async {
                w.logged(&["change listener connected again"])
                    && w.logged(&["heartbeat written again"])
            },
        )
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        let failures = l.await.expect("load");
        assert!(failures.is_empty(), "failed requests: {failures:?}");
    }
    for w in &workers {
        assert_eq!(w.plugin_status("echo").await["restarts"], 0);
        assert_eq!(w.plugin_status("migrated").await["state"], "ready");
    }
    workers[1]
        .wait_until("the newcomer starts once the store is back", || async {
            workers[1].plugin_status("newcomer").await["state"] == "ready"
        })
        .await;
    workers[1]
        .wait_until(
            "the newcomer is registered once the store is back",
            || async {
                admin(&workers[1], reqwest::Method::GET, "/admin/plugins/newcomer")
                    .await
                    .0
                    == 200
            },
        )
        .await;

    // Writes work again and the cluster converges on them.
    let (status, body) = admin(
        &workers[2],
        reqwest::Method::POST,
        "/admin/plugins/echo/disable?wait=10s",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["convergence"]["converged"], true, "{body}");
    for w in &workers {
        assert_eq!(w.plugin_status("echo").await["state"], "disabled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_connection_that_goes_silent_is_replaced() {
    let url = crate::pg::fresh_database().await;
    let (proxy, proxied) = crate::pg::SilentProxy::start(&url).await;
    let plugins = [PluginDef::echo("echo", "")];
    let a = worker(&url, &plugins).await;
    let b = worker(&proxied, &plugins).await;
    b.wait_until("b listens", || async {
        b.logged(&["listening for changes of the desired state"])
    })
    .await;

    // Every connection b has goes silent: no error, no reset, just nothing.
    proxy.silence();
    b.wait_until("b finds its listener silent", || async {
        b.logged(&["change listener went silent"])
    })
    .await;
    let (status, _) = admin(&a, reqwest::Method::POST, "/admin/plugins/echo/disable").await;
    assert_eq!(status, 200);
    b.wait_until_within(
        "b applies the change over its new connection",
        std::time::Duration::from_secs(45),
        || async { b.plugin_status("echo").await["state"] == "disabled" },
    )
    .await;
    assert!(b.logged(&["change listener connected again"]));
}

#[tokio::test]
async fn a_live_stream_on_one_worker_shows_the_others_states_and_the_audit_log() {
    use crate::operator::{raw_stream, read_until};
    let url = crate::pg::fresh_database().await;
    let plugins = [PluginDef::echo("echo", "")];
    let a = worker(&url, &plugins).await;
    let b = worker(&url, &plugins).await;
    // b lists itself once its first heartbeat is written, which may come after it is ready.
    let own_id = || async {
        let (_, workers) = admin(&b, reqwest::Method::GET, "/admin/workers").await;
        workers["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["this"] == true)
            .and_then(|w| w["id"].as_str())
            .map(str::to_owned)
    };
    b.wait_until("b lists itself", || async { own_id().await.is_some() })
        .await;
    let b_id = own_id().await.expect("b's id");
    let mut states = raw_stream(&a, "plugin=echo&kinds=state").await;
    read_until(&mut states, "event: hello").await;
    let mut audit = raw_stream(&a, "kinds=audit").await;
    read_until(&mut audit, "event: hello").await;
    // The change goes through b; a's stream sees b's plugin stop, and the audit entry.
    let (status, _) = admin(&b, reqwest::Method::POST, "/admin/plugins/echo/disable").await;
    assert_eq!(status, 200);
    read_until(&mut audit, "\"action\":\"disable\"").await;
    let needle = format!("\"worker\":\"{b_id}\",\"plugin\":\"echo\",\"state\":\"disabled\"");
    read_until(&mut states, &needle).await;
}
