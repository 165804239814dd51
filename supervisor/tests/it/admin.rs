//! The admin API: authentication and roles, plugin views, enable/disable that survives a
//! restart of plugd, restart and reload, the audit log, logs and stats.

use crate::harness::{PluginDef, TestSupervisor};
use serde_json::Value;

pub const ADMIN: &str = "admin-token-0123456789abcdef";
pub const VIEWER: &str = "viewer-token-0123456789abcdef";

/// plugd with an admin token (`PLUGD_ADMIN_TOKEN`) and a viewer token named `watcher`.
pub async fn admin_sup(plugins: &[PluginDef]) -> TestSupervisor {
    let config =
        format!("[[admin_tokens]]\nname = \"watcher\"\ntoken = \"{VIEWER}\"\nrole = \"viewer\"\n");
    TestSupervisor::start_full(
        plugins,
        &[],
        &[("PLUGD_ADMIN_TOKEN", ADMIN.to_string())],
        Some(&config),
    )
    .await
}

async fn call(
    sup: &TestSupervisor,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = sup.client.request(method, sup.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(sup: &TestSupervisor, path: &str) -> (u16, Value) {
    call(sup, reqwest::Method::GET, path, Some(ADMIN)).await
}

async fn post(sup: &TestSupervisor, path: &str) -> (u16, Value) {
    call(sup, reqwest::Method::POST, path, Some(ADMIN)).await
}

#[tokio::test]
async fn without_a_configured_token_the_admin_api_refuses_everything() {
    let sup = TestSupervisor::start(&[PluginDef::echo("echo", "")], &[]).await;
    let (status, body) = call(
        &sup,
        reqwest::Method::GET,
        "/admin/plugins",
        Some("anything"),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body["detail"]
        .as_str()
        .expect("detail")
        .contains("PLUGD_ADMIN_TOKEN"));
    assert!(sup.logged(&["NO ADMIN TOKEN IS CONFIGURED"]));
}

#[tokio::test]
async fn tokens_and_roles_are_checked() {
    let sup = admin_sup(&[PluginDef::echo("echo", "")]).await;
    let (status, _) = call(&sup, reqwest::Method::GET, "/admin/plugins", None).await;
    assert_eq!(status, 401);
    let (status, body) = call(
        &sup,
        reqwest::Method::GET,
        "/admin/plugins",
        Some("wrong-token-0123456789"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = call(&sup, reqwest::Method::GET, "/admin/plugins", Some(VIEWER)).await;
    assert_eq!(status, 200, "a viewer may read");
    let (status, body) = call(
        &sup,
        reqwest::Method::POST,
        "/admin/plugins/echo/disable",
        Some(VIEWER),
    )
    .await;
    assert_eq!(status, 403, "a viewer may not change anything");
    assert!(body["detail"].as_str().expect("detail").contains("viewer"));
    let (status, body) = get(&sup, "/admin/plugins/nope").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown plugin"))
    );
}

#[tokio::test]
async fn plugins_are_listed_with_their_state_routes_and_limits() {
    let sup = admin_sup(&[PluginDef::echo("echo", ""), PluginDef::echo("other", "")]).await;
    let (status, body) = get(&sup, "/admin/plugins").await;
    assert_eq!(status, 200);
    let list = body["plugins"].as_array().expect("list");
    assert_eq!(list.len(), 2);
    let (_, echo) = get(&sup, "/admin/plugins/echo").await;
    assert_eq!(echo["state"], "ready");
    assert_eq!(echo["enabled"], true);
    assert!(echo["pid"].as_u64().is_some());
    let routes = echo["routes"].as_array().expect("routes");
    assert!(routes.contains(&serde_json::json!({"method": "GET", "path": "/echo/{id}"})));
    assert!(echo["limits"]["memory"].as_u64().is_some());
    let (_, stats) = get(&sup, "/admin/stats").await;
    assert_eq!(
        (stats["plugins"].as_u64(), stats["enabled"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(stats["routes"].as_u64().expect("routes") >= 2 * routes.len() as u64);
}

#[tokio::test]
async fn disabling_stops_the_plugin_and_survives_a_restart_of_plugd() {
    let mut sup = admin_sup(&[PluginDef::echo("echo", ""), PluginDef::echo("other", "")]).await;
    let (status, body) = post(&sup, "/admin/plugins/echo/disable").await;
    assert_eq!((status, body["changed"].as_bool()), (200, Some(true)));
    let (status, body) = post(&sup, "/admin/plugins/echo/disable").await;
    assert_eq!(
        (status, body["changed"].as_bool()),
        (200, Some(false)),
        "a repeat changes nothing"
    );
    assert!(body["detail"]
        .as_str()
        .expect("detail")
        .contains("already disabled"));
    sup.wait_until("the plugin is disabled", || async {
        sup.plugin_status("echo").await["state"] == "disabled"
    })
    .await;
    assert_eq!(
        sup.get("/plugins/echo/echo/1")
            .await
            .expect("request")
            .status(),
        503
    );

    sup.restart().await;
    assert_eq!(
        sup.plugin_status("echo").await["state"],
        "disabled",
        "the choice survives"
    );
    assert_eq!(sup.plugin_status("other").await["state"], "ready");

    let (status, _) = post(&sup, "/admin/plugins/echo/enable").await;
    assert_eq!(status, 200);
    sup.wait_until("the plugin runs again", || async {
        sup.plugin_status("echo").await["state"] == "ready"
    })
    .await;
    assert_eq!(
        sup.get("/plugins/echo/echo/1")
            .await
            .expect("request")
            .status(),
        200
    );

    // Every change is in the audit log with the token's name.
    let (_, events) = get(&sup, "/admin/events?plugin=echo").await;
    let actions: Vec<(&str, &str)> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or(""),
                e["action"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(actions, vec![("env", "enable"), ("env", "disable")]);
}

#[tokio::test]
async fn restart_and_reload_give_a_new_instance() {
    let sup = admin_sup(&[PluginDef::echo("echo", "")]).await;
    let pid = sup.plugin_status("echo").await["pid"].clone();
    let (status, _) = post(&sup, "/admin/plugins/echo/restart").await;
    assert_eq!(status, 202);
    sup.wait_until("a new instance after restart", || async {
        let s = sup.plugin_status("echo").await;
        s["state"] == "ready" && s["pid"] != pid
    })
    .await;
    let pid = sup.plugin_status("echo").await["pid"].clone();
    let (status, _) = post(&sup, "/admin/plugins/echo/reload").await;
    assert_eq!(status, 202);
    sup.wait_until("a new instance after reload", || async {
        let s = sup.plugin_status("echo").await;
        s["state"] == "ready" && s["pid"] != pid
    })
    .await;
    let (_, logs) = get(&sup, "/admin/plugins/echo/logs?lines=50").await;
    assert!(logs["lines"].is_array());
    let (_, page) = get(&sup, "/admin/events?limit=1").await;
    assert_eq!(page["events"].as_array().expect("events").len(), 1);
    assert_eq!(page["events"][0]["action"], "reload");
    let before = page["next_before"].as_i64().expect("cursor");
    let (_, next) = get(&sup, &format!("/admin/events?limit=1&before={before}")).await;
    assert_eq!(next["events"][0]["action"], "restart");
}

#[tokio::test]
async fn a_failing_plugin_migration_fails_that_plugin_only() {
    let bad = PluginDef::echo("bad", "").with_file("migrations/001.sql", "CREATE TABLE broken (");
    let sup = TestSupervisor::start(&[PluginDef::echo("good", ""), bad], &[]).await;
    let status = sup.plugin_status("bad").await;
    assert_eq!(status["state"], "failed");
    let reason = status["reason"].as_str().expect("reason");
    assert!(
        reason.contains("plugin migration: migration 001.sql failed"),
        "{reason}"
    );
    assert_eq!(status["restarts"], 0, "a broken migration is not retried");
    assert_eq!(
        sup.get("/plugins/good/echo/1")
            .await
            .expect("good")
            .status(),
        200
    );
}

/// A tar.gz bundle whose plugin runs the echo test plugin through a script in the bundle.
pub fn bundle(name: &str, version: &str) -> Vec<u8> {
    bundle_with(name, version, "")
}

/// [`bundle`] with `extra` lines at the end of its manifest (such as an `[env]` table).
pub fn bundle_with(name: &str, version: &str, extra: &str) -> Vec<u8> {
    let echo = crate::harness::workspace_bin("plugd-testkit-echo");
    let manifest =
        format!("name = {name:?}\nversion = {version:?}\ncommand = \"./run.sh\"\n{extra}");
    let script = format!("#!/bin/sh\nexec {} \"$@\"\n", echo.display());
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    for (path, data, mode) in [
        (format!("{name}/plugin.toml"), manifest.into_bytes(), 0o644),
        (format!("{name}/run.sh"), script.into_bytes(), 0o755),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, &data[..]).expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gzip")
}

async fn install(sup: &TestSupervisor, bytes: Vec<u8>) -> (u16, Value) {
    let r = sup
        .client
        .post(sup.url("/admin/plugins/install"))
        .bearer_auth(ADMIN)
        .body(bytes)
        .send()
        .await
        .expect("install");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn plugin_dirs(sup: &TestSupervisor) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sup.dir.path().join("plugins"))
        .expect("plugins dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn bundles_install_upgrade_and_uninstall() {
    let sup = admin_sup(&[PluginDef::echo("base", "")]).await;
    let bytes = bundle("shipped", "1.0.0");
    let (status, body) = install(&sup, bytes.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["sha256"].as_str(),
        Some(plugd::manifest::bundle::sha256(&bytes).as_str())
    );
    sup.wait_until("the installed plugin serves", || async {
        sup.get("/plugins/shipped/echo/1")
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let pid = sup.plugin_status("shipped").await["pid"].clone();

    let (status, body) = install(&sup, bundle("shipped", "2.0.0")).await;
    assert_eq!(
        (status, body["upgraded"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    sup.wait_until("the upgrade is running", || async {
        let s = sup.plugin_status("shipped").await;
        s["state"] == "ready" && s["pid"] != pid
    })
    .await;
    let (_, shipped) = get(&sup, "/admin/plugins/shipped").await;
    assert_eq!(shipped["version"], "2.0.0");
    let (_, events) = get(&sup, "/admin/events?plugin=shipped").await;
    let actions: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, vec!["upgrade", "install"]);

    let (status, _) = call(
        &sup,
        reqwest::Method::DELETE,
        "/admin/plugins/shipped",
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, 200);
    sup.wait_until("the uninstalled plugin is gone", || async {
        sup.plugin_status("shipped").await.is_null()
    })
    .await;
    assert_eq!(get(&sup, "/admin/plugins/shipped").await.0, 404);
    assert_eq!(plugin_dirs(&sup), vec!["base".to_string()]);
}

#[tokio::test]
async fn hostile_bundles_are_refused_and_write_nothing() {
    let sup = admin_sup(&[PluginDef::echo("base", "")]).await;
    let before = plugin_dirs(&sup);
    let traversal = {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        w.start_file("../escaped", zip::write::SimpleFileOptions::default())
            .expect("start");
        std::io::Write::write_all(&mut w, b"x").expect("write");
        w.finish().expect("finish");
        buf.into_inner()
    };
    let bomb = {
        let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut b = tar::Builder::new(enc);
        let zeros = vec![0u8; 300 * 1024 * 1024];
        let mut h = tar::Header::new_gnu();
        h.set_size(zeros.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "plugin.toml", &zeros[..])
            .expect("append");
        b.into_inner().expect("tar").finish().expect("gzip")
    };
    let no_manifest = bundle("x", "1").into_iter().take(10).collect::<Vec<u8>>();
    for (bytes, expect) in [
        (traversal, "'..'"),
        (bomb, "archive bomb"),
        (no_manifest, "unreadable"),
        (b"plain text".to_vec(), "neither"),
    ] {
        let (status, body) = install(&sup, bytes).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid bundle");
        let detail = body["detail"].as_str().expect("detail");
        assert!(detail.contains(expect), "{detail} should mention {expect}");
        assert_eq!(plugin_dirs(&sup), before, "nothing written");
    }
    assert!(!sup.dir.path().join("escaped").exists());
}

#[tokio::test]
async fn plugins_use_their_own_key_value_store_through_the_protocol() {
    let sup =
        TestSupervisor::start(&[PluginDef::echo("a", ""), PluginDef::echo("b", "")], &[]).await;
    let put = |plugin: &str, key: &str, value: &str| {
        sup.client
            .put(sup.url(&format!("/plugins/{plugin}/kv/{key}")))
            .body(value.to_owned())
            .send()
    };
    let r = put("a", "colour", "blue").await.expect("put");
    assert_eq!(r.text().await.expect("version"), "1");
    let r = sup.get("/plugins/a/kv/colour").await.expect("get");
    assert_eq!(r.headers()["x-version"], "1");
    assert_eq!(r.text().await.expect("value"), "blue");
    assert_eq!(
        sup.get("/plugins/b/kv/colour").await.expect("b").status(),
        404,
        "each plugin sees only its own keys"
    );

    put("a", "colour-2", "red").await.expect("put");
    let keys = sup.get_json("/plugins/a/kvlist?prefix=colour", 200).await;
    assert_eq!(keys, serde_json::json!(["colour", "colour-2"]));

    let cas = |expected: &str| {
        sup.client
            .post(sup.url(&format!("/plugins/a/kvcas/colour?expected={expected}")))
            .body("green")
            .send()
    };
    let first: Value = cas("1").await.expect("cas").json().await.expect("json");
    assert_eq!(first, serde_json::json!({"ok": true, "version": 2}));
    let second: Value = cas("1").await.expect("cas").json().await.expect("json");
    assert_eq!(
        second,
        serde_json::json!({"ok": false, "version": 2}),
        "a stale version loses"
    );

    let r = sup
        .client
        .delete(sup.url("/plugins/a/kv/colour"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.text().await.expect("deleted"), "true");
    assert_eq!(
        sup.get("/plugins/a/kv/colour").await.expect("get").status(),
        404
    );
}

#[tokio::test]
async fn routes_that_require_a_permission_check_the_callers_token() {
    let config = "[[admin_tokens]]\nname = \"reader\"\ntoken = \"reader-token-0123456789\"\nrole = \"viewer\"\npermissions = [\"echo.secret\"]\n\n\
         [[admin_tokens]]\nname = \"other\"\ntoken = \"other-token-01234567890\"\nrole = \"viewer\"\n";
    let sup = TestSupervisor::start_full(
        &[PluginDef::echo("echo", "")],
        &[],
        &[("PLUGD_ADMIN_TOKEN", ADMIN.to_string())],
        Some(config),
    )
    .await;
    let secret = |token: Option<&'static str>| {
        let mut req = sup.client.get(sup.url("/plugins/echo/secret"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(secret(None).await.expect("anonymous").status(), 401);
    let denied = secret(Some("other-token-01234567890"))
        .await
        .expect("other");
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.expect("json");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("\"echo.secret\""),
        "{body}"
    );

    let allowed = secret(Some("reader-token-0123456789"))
        .await
        .expect("reader");
    assert_eq!(allowed.status(), 200);
    let body: Value = allowed.json().await.expect("json");
    assert_eq!(body["caller"], "reader");
    assert_eq!(body["permissions"], serde_json::json!(["echo.secret"]));
    assert_eq!(
        body["authorization_seen"], false,
        "plugd keeps the verified token from the plugin"
    );

    // A client cannot claim an identity on an open route.
    let forged = sup
        .client
        .get(sup.url("/plugins/echo/echo/1"))
        .header("x-plugd-caller", "admin")
        .send()
        .await
        .expect("forged");
    let echoed: Value = forged.json().await.expect("json");
    assert!(
        !echoed["headers"].to_string().contains("x-plugd-caller"),
        "{echoed}"
    );

    let (_, perms) = get(&sup, "/admin/permissions").await;
    assert_eq!(
        perms["permissions"],
        serde_json::json!([{"key": "echo.secret", "description": "read the echo plugin's secret", "plugin": "echo"}])
    );
}

#[tokio::test]
async fn a_change_naming_a_stale_generation_gets_409_with_the_current_value() {
    let sup = admin_sup(&[PluginDef::echo("echo", "")]).await;
    let r = sup
        .client
        .get(sup.url("/admin/plugins/echo"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("get");
    let etag = r.headers()["etag"].to_str().expect("etag").to_owned();
    let post = |path: &'static str| {
        sup.client
            .post(sup.url(path))
            .bearer_auth(ADMIN)
            .header("if-match", etag.clone())
            .send()
    };
    assert_eq!(
        post("/admin/plugins/echo/disable")
            .await
            .expect("first")
            .status(),
        200
    );
    let stale = post("/admin/plugins/echo/enable").await.expect("second");
    assert_eq!(stale.status(), 409);
    let body: Value = stale.json().await.expect("json");
    assert_eq!(body["error"], "conflict");
    assert_eq!(body["current"]["enabled"], false);
    let fresh = body["current"]["generation"].as_i64().expect("generation");
    let (status, _) = post_with_generation(&sup, "/admin/plugins/echo/enable", fresh).await;
    assert_eq!(status, 200);

    // An If-Match that is not a generation is refused, not taken as "no condition".
    let bad = sup
        .client
        .post(sup.url("/admin/plugins/echo/disable"))
        .bearer_auth(ADMIN)
        .header("if-match", "\"v2\"")
        .send()
        .await
        .expect("bad if-match");
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("json");
    assert_eq!(body["error"], "bad If-Match", "{body}");
    let (_, view) = call(
        &sup,
        reqwest::Method::GET,
        "/admin/plugins/echo",
        Some(ADMIN),
    )
    .await;
    assert_eq!(view["enabled"], true, "the refused write changed nothing");
}

async fn post_with_generation(sup: &TestSupervisor, path: &str, generation: i64) -> (u16, Value) {
    call(
        sup,
        reqwest::Method::POST,
        &format!("{path}?generation={generation}"),
        Some(ADMIN),
    )
    .await
}
