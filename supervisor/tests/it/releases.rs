//! Releases: builds from source, kept versions, downloads, rollback and canaries, with real
//! plugin processes (and three real workers on PostgreSQL for the rollback's convergence).

use crate::admin::ADMIN;
use crate::harness::{workspace_bin, PluginDef, TestSupervisor};
use base64::Engine;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A tar.gz bundle of plugin `name` at `version`, running the echo test plugin with
/// `ECHO_VERSION` set to the version (so answers say which version served them) and `env`.
fn release(name: &str, version: &str, env: &[(&str, &str)]) -> Vec<u8> {
    let mut extra = format!("[env]\nECHO_VERSION = {version:?}\n");
    for (k, v) in env {
        extra.push_str(&format!("{k} = {v:?}\n"));
    }
    crate::admin::bundle_with(name, version, &extra)
}

async fn call(
    sup: &TestSupervisor,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut r = sup.client.request(method, sup.url(path)).bearer_auth(ADMIN);
    if let Some(body) = body {
        r = r.body(body);
    }
    let r = r.send().await.expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn admin_get(sup: &TestSupervisor, path: &str) -> (u16, Value) {
    call(sup, reqwest::Method::GET, path, None).await
}

async fn admin_post(sup: &TestSupervisor, path: &str) -> (u16, Value) {
    call(sup, reqwest::Method::POST, path, None).await
}

async fn install(sup: &TestSupervisor, bytes: Vec<u8>, query: &str) -> (u16, Value) {
    call(
        sup,
        reqwest::Method::POST,
        &format!("/admin/plugins/install{query}"),
        Some(bytes),
    )
    .await
}

async fn plugin(sup: &TestSupervisor, name: &str) -> Value {
    admin_get(sup, &format!("/admin/plugins/{name}")).await.1
}

/// Waits until `sup` runs version `version` of `name`.
async fn wait_running(sup: &TestSupervisor, name: &str, version: &str) {
    sup.wait_until(&format!("{name} {version} runs"), || async {
        plugin(sup, name).await["version_running"] == version
    })
    .await;
}

/// Which version answered `GET /plugins/{name}/echo/1` (with `headers`), and its status.
async fn served_by(sup: &TestSupervisor, name: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut r = sup.client.get(sup.url(&format!("/plugins/{name}/echo/1")));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.expect("request");
    let version = r
        .headers()
        .get("x-echo-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    (r.status().as_u16(), version)
}

async fn audit_actions(sup: &TestSupervisor, name: &str) -> Vec<(String, String)> {
    let (_, events) = admin_get(sup, &format!("/admin/events?plugin={name}&limit=50")).await;
    events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Whether `sup` serves the canary of `name`.
async fn canary_serving(sup: &TestSupervisor, name: &str) -> bool {
    let path = format!("/admin/plugins/{name}/canary");
    admin_get(sup, &path).await.1["serving"] == true
}

async fn single(env: &[(&str, &str)]) -> TestSupervisor {
    let mut all = vec![("PLUGD_ADMIN_TOKEN", ADMIN.to_owned())];
    all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    TestSupervisor::start_with_env(&[], &[], &all).await
}

#[tokio::test]
async fn versions_are_kept_pruned_downloaded_and_rolled_back() {
    let sup = single(&[("PLUGD_KEEP_VERSIONS", "2")]).await;
    let bundles: Vec<Vec<u8>> = ["1.0.0", "2.0.0", "3.0.0"]
        .iter()
        .map(|v| release("shipped", v, &[]))
        .collect();
    for (bytes, version) in bundles.iter().zip(["1.0.0", "2.0.0", "3.0.0"]) {
        let (status, body) = install(&sup, bytes.clone(), "").await;
        assert!(status == 200 || status == 201, "{status} {body}");
        wait_running(&sup, "shipped", version).await;
    }
    let (status, list) = admin_get(&sup, "/admin/plugins/shipped/versions").await;
    assert_eq!(status, 200, "{list}");
    let versions: Vec<&str> = list["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_str().expect("version"))
        .collect();
    assert_eq!(versions, ["3.0.0", "2.0.0"], "the oldest is pruned: {list}");
    assert_eq!(list["versions"][0]["current"], true);
    assert_eq!(list["keep"], 2);
    let (status, _) = admin_get(&sup, "/admin/plugins/shipped/bundle?version=1.0.0").await;
    assert_eq!(status, 404, "a pruned version cannot be downloaded");

    // The download carries its sum three ways, all matching the bytes.
    let r = sup
        .client
        .get(sup.url("/admin/plugins/shipped/bundle?version=2.0.0"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (etag, content_digest, digest) =
        (header("etag"), header("content-digest"), header("digest"));
    let bytes = r.bytes().await.expect("bytes");
    assert_eq!(&bytes[..], &bundles[1][..]);
    let sum = plugd::manifest::bundle::sha256(&bytes);
    assert_eq!(etag, format!("\"{sum}\""));
    let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(&sum).expect("hex"));
    assert_eq!(content_digest, format!("sha-256=:{b64}:"));
    assert_eq!(digest, format!("sha-256={b64}"));

    // The CLI checks the sum of what it saved.
    let out_path = sup.dir.path().join("saved.tar.gz");
    let out = crate::operator::cli(
        &sup,
        Some(ADMIN),
        &[
            "download",
            "shipped",
            "--version",
            "2.0.0",
            "-o",
            out_path.to_str().expect("path"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified"));
    assert_eq!(std::fs::read(&out_path).expect("saved"), bundles[1]);

    // Rollback goes to the version before the stable one, then forward again by name.
    let (status, body) = admin_post(&sup, "/admin/plugins/shipped/rollback").await;
    assert_eq!(
        (status, body["to"].as_str()),
        (200, Some("2.0.0")),
        "{body}"
    );
    wait_running(&sup, "shipped", "2.0.0").await;
    assert_eq!(served_by(&sup, "shipped", &[]).await, (200, "2.0.0".into()));
    let out = crate::operator::cli(&sup, Some(ADMIN), &["rollback", "shipped", "--to", "3.0.0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_running(&sup, "shipped", "3.0.0").await;
    let (status, body) = admin_post(&sup, "/admin/plugins/shipped/rollback?to=1.0.0").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown version")),
        "{body}"
    );
    let (status, body) = admin_post(&sup, "/admin/plugins/shipped/rollback?to=3.0.0").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("already stable")),
        "{body}"
    );
    let rollbacks = audit_actions(&sup, "shipped")
        .await
        .into_iter()
        .filter(|(action, _)| action == "rollback")
        .count();
    assert_eq!(rollbacks, 2, "each rollback is audited");
}

#[tokio::test]
async fn a_rollback_converges_on_three_workers() {
    let url = crate::pg::fresh_database().await;
    let env = [
        ("PLUGD_DATABASE_URL", url.clone()),
        ("PLUGD_ADMIN_TOKEN", ADMIN.to_owned()),
    ];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(TestSupervisor::start_with_env(&[], &[], &env).await);
    }
    for version in ["1.0.0", "2.0.0"] {
        let (status, body) = install(&workers[0], release("rolled", version, &[]), "").await;
        assert!(status == 200 || status == 201, "{status} {body}");
        for w in &workers {
            wait_running(w, "rolled", version).await;
        }
    }
    let (status, body) = admin_post(&workers[1], "/admin/plugins/rolled/rollback").await;
    assert_eq!(
        (status, body["to"].as_str()),
        (200, Some("1.0.0")),
        "{body}"
    );
    for w in &workers {
        wait_running(w, "rolled", "1.0.0").await;
        assert_eq!(served_by(w, "rolled", &[]).await, (200, "1.0.0".into()));
    }
    // Every worker's heartbeat reports the bundle it runs.
    workers[2]
        .wait_until(
            "the versions list shows all three workers on 1.0.0",
            || async {
                let (_, list) = admin_get(&workers[2], "/admin/plugins/rolled/versions").await;
                list["versions"].as_array().is_some_and(|vs| {
                    vs.iter().any(|v| {
                        v["version"] == "1.0.0"
                            && v["current"] == true
                            && v["workers"].as_array().is_some_and(|w| w.len() == 3)
                    })
                })
            },
        )
        .await;
}

/// Requests sent by [`load`]: how many were answered, and the failures (the first few with
/// their status, version and body).
#[derive(Default)]
struct Load {
    total: AtomicU64,
    failed: AtomicU64,
    first_failures: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn failed(&self) -> (u64, Vec<String>) {
        (
            self.failed.load(Ordering::SeqCst),
            self.first_failures.lock().expect("failures").clone(),
        )
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut first = self.first_failures.lock().expect("failures");
        if first.len() < 5 {
            first.push(what);
        }
    }
}

/// Sends requests to `name` until `stop`. A failure is an answer plugd gave itself, or one of
/// version `stable` (`*`: any) that is not a 200.
fn load(
    sup: &TestSupervisor,
    name: &str,
    stable: &'static str,
    stop: Arc<AtomicBool>,
) -> (Arc<Load>, tokio::task::JoinHandle<()>) {
    let counts = Arc::new(Load::default());
    let (client, url) = (
        sup.client.clone(),
        sup.url(&format!("/plugins/{name}/echo/1")),
    );
    let c = counts.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let r = match client.get(&url).send().await {
                Ok(r) => r,
                Err(e) => {
                    c.fail(format!("no answer: {e}"));
                    continue;
                }
            };
            c.total.fetch_add(1, Ordering::SeqCst);
            let status = r.status();
            let version = r
                .headers()
                .get("x-echo-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let bad = status != 200 && (stable == "*" || version == stable);
            if bad || version == "-" {
                let body = r.text().await.unwrap_or_default();
                c.fail(format!("{status} from {version}: {body}"));
            }
        }
    });
    (counts, task)
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_on_its_own_while_the_stable_version_serves() {
    let sup = single(&[
        ("PLUGD_CANARY_WINDOW", "5s"),
        ("PLUGD_CANARY_MIN_REQUESTS", "10"),
    ])
    .await;
    let (status, _) = install(&sup, release("canaried", "1.0.0", &[]), "").await;
    assert_eq!(status, 201);
    wait_running(&sup, "canaried", "1.0.0").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (counts, task) = load(&sup, "canaried", "1.0.0", stop.clone());

    let started = Instant::now();
    let bad = release("canaried", "2.0.0", &[("ECHO_STATUS", "500")]);
    let (status, body) = install(&sup, bad, "?canary=30").await;
    assert_eq!((status, body["canary"].as_u64()), (201, Some(30)), "{body}");
    sup.wait_until("the canary serves a share of the requests", || async {
        canary_serving(&sup, "canaried").await || plugin(&sup, "canaried").await["canary"].is_null()
    })
    .await;
    sup.wait_until("plugd rolls the failing canary back", || async {
        plugin(&sup, "canaried").await["canary"].is_null()
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "rolled back within its 5 s window (and the start): {took:?}"
    );
    let audit = audit_actions(&sup, "canaried").await;
    let (_, detail) = audit
        .iter()
        .find(|(action, _)| action == "canary rolled back")
        .unwrap_or_else(|| panic!("the automatic rollback is audited: {audit:?}"));
    assert!(
        detail.contains("5xx ratio") && detail.contains("stable"),
        "{detail}"
    );
    // After the rollback only the stable version answers.
    for _ in 0..20 {
        assert_eq!(
            served_by(&sup, "canaried", &[]).await,
            (200, "1.0.0".into())
        );
    }
    stop.store(true, Ordering::SeqCst);
    task.await.expect("load");
    assert!(counts.total.load(Ordering::SeqCst) > 20, "the load ran");
    let (failed, first) = counts.failed();
    assert_eq!(
        failed, 0,
        "the stable version answered every one of its requests: {first:?}"
    );
    sup.wait_until("the canary's files are removed", || async {
        !sup.dir.path().join("plugins/.canary/canaried").exists()
    })
    .await;
}

#[tokio::test]
async fn a_healthy_canary_serves_its_share_sticky_per_client_and_is_promoted() {
    let mut sup = single(&[]).await;
    let (status, _) = install(&sup, release("promoted", "1.0.0", &[]), "").await;
    assert_eq!(status, 201);
    wait_running(&sup, "promoted", "1.0.0").await;
    let (status, body) = install(&sup, release("promoted", "1.0.0", &[]), "?canary=50").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("cannot start a canary")),
        "the stable bundle is no canary: {body}"
    );
    let (status, body) = install(&sup, release("promoted", "2.0.0", &[]), "?canary=50").await;
    assert_eq!(status, 201, "{body}");
    sup.wait_until("the canary serves", || async {
        canary_serving(&sup, "promoted").await
    })
    .await;
    // The client header picks a side by its hash: the same answer every time, and both sides
    // are picked across clients.
    let mut seen = std::collections::BTreeSet::new();
    for client in 0..20 {
        let id = format!("client-{client}");
        let first = served_by(&sup, "promoted", &[("x-plugd-client", &id)]).await;
        assert_eq!(first.0, 200);
        for _ in 0..3 {
            assert_eq!(
                served_by(&sup, "promoted", &[("x-plugd-client", &id)]).await,
                first
            );
        }
        seen.insert(first.1);
    }
    assert_eq!(seen.len(), 2, "both versions serve some clients: {seen:?}");
    // A client without the header gets a cookie that keeps its side.
    let r = sup
        .client
        .get(sup.url("/plugins/promoted/echo/1"))
        .send()
        .await
        .expect("request");
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let side = r.headers()["x-echo-version"]
        .to_str()
        .expect("version")
        .to_owned();
    for _ in 0..10 {
        assert_eq!(
            served_by(&sup, "promoted", &[("cookie", &cookie)]).await,
            (200, side.clone())
        );
    }
    let (_, report) = admin_get(&sup, "/admin/plugins/promoted/canary").await;
    assert!(
        report["candidate"]["requests"].as_u64() > Some(0),
        "{report}"
    );
    assert_eq!(report["candidate"]["errors"], 0, "{report}");
    // The canary is in the store: a restarted worker runs it again.
    sup.restart().await;
    sup.wait_until("the restarted worker runs the canary again", || async {
        canary_serving(&sup, "promoted").await
    })
    .await;
    assert_eq!(
        served_by(&sup, "promoted", &[("cookie", &cookie)]).await,
        (200, side.clone()),
        "the cookie still holds after the restart"
    );
    let out = crate::operator::cli(&sup, Some(ADMIN), &["promote", "promoted"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_running(&sup, "promoted", "2.0.0").await;
    sup.wait_until("the canary has ended", || async {
        plugin(&sup, "promoted").await["canary"].is_null()
            && sup.plugin_status("promoted").await["state"] == "ready"
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            served_by(&sup, "promoted", &[]).await,
            (200, "2.0.0".into())
        );
    }
    let (_, list) = admin_get(&sup, "/admin/plugins/promoted/versions").await;
    assert_eq!(list["versions"][0]["version"], "2.0.0");
    assert_eq!(list["versions"][0]["current"], true);
    let (status, _) = admin_post(&sup, "/admin/plugins/promoted/promote").await;
    assert_eq!(status, 409, "no canary left to promote");
}

/// A plugin built from `src/version` by `build.sh`, which fails on a version starting with
/// `broken`.
fn built_plugin(name: &str) -> PluginDef {
    let build = r#"#!/bin/sh
set -e
v=$(cat src/version)
case "$v" in broken*) echo "compile error: $v is not a version" >&2; exit 3;; esac
echo "building $v"
printf '#!/bin/sh\nECHO_VERSION=%s exec %s "$@"\n' "$v" "$ECHO_BIN" > run.sh.tmp
chmod +x run.sh.tmp
mv run.sh.tmp run.sh
"#;
    let manifest = format!(
        "name = {name:?}\nversion = \"1.0.0\"\ncommand = \"./run.sh\"\nbuild = [\"sh\", \"build.sh\"]\nwatch = [\"src\"]\n[env]\nECHO_BIN = {:?}\n",
        workspace_bin("plugd-testkit-echo").display().to_string()
    );
    PluginDef::manifest(name, &manifest)
        .with_file("build.sh", build)
        .with_file("src/version", "1.0.0")
}

#[tokio::test]
async fn a_source_change_rebuilds_under_load_and_a_failed_build_keeps_the_old_version() {
    let sup = TestSupervisor::start_with_env(
        &[built_plugin("built")],
        &[],
        &[("PLUGD_ADMIN_TOKEN", ADMIN.to_owned())],
    )
    .await;
    wait_running(&sup, "built", "1.0.0").await;
    let view = plugin(&sup, "built").await;
    assert_eq!(view["build"]["ok"], true, "{view}");
    assert!(
        view["build"]["output"]
            .to_string()
            .contains("building 1.0.0"),
        "{view}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (counts, task) = load(&sup, "built", "*", stop.clone());
    let source = sup.dir.path().join("plugins/built/src/version");
    std::fs::write(&source, "2.0.0").expect("edit the source");
    wait_running(&sup, "built", "2.0.0").await;
    // Some requests after the swap, then stop.
    let seen = counts.total.load(Ordering::SeqCst);
    sup.wait_until("requests reach the new version", || async {
        counts.total.load(Ordering::SeqCst) > seen + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    task.await.expect("load");
    let (failed, first) = counts.failed();
    assert_eq!(failed, 0, "no request failed across the rebuild: {first:?}");

    std::fs::write(&source, "broken-3").expect("break the source");
    sup.wait_until("the failed build is reported", || async {
        let view = plugin(&sup, "built").await;
        view["build"]["ok"] == false
    })
    .await;
    let view = plugin(&sup, "built").await;
    assert!(
        view["build"]["output"]
            .to_string()
            .contains("compile error"),
        "{view}"
    );
    assert_eq!(view["build"]["status"], "exited with code 3", "{view}");
    assert_eq!(
        view["version_running"], "2.0.0",
        "the old version keeps serving"
    );
    assert_eq!(view["state"], "ready");
    assert_eq!(served_by(&sup, "built", &[]).await, (200, "2.0.0".into()));
    let audit = audit_actions(&sup, "built").await;
    assert!(
        audit
            .iter()
            .any(|(a, d)| a == "build failed" && d.contains("compile error")),
        "{audit:?}"
    );
    // The failed build's own writes do not start it again and again.
    let builds = sup.logged_count(&["build failed"]);
    std::fs::write(sup.dir.path().join("plugins/built/unrelated.txt"), "x").expect("touch");
    std::fs::write(&source, "4.0.0").expect("mend the source");
    wait_running(&sup, "built", "4.0.0").await;
    assert_eq!(
        sup.logged_count(&["build failed"]),
        builds,
        "no build ran between"
    );
}
