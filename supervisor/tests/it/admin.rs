//! The admin API: authentication and roles, plugin views, enable/disable that survives a
//! restart of plugd, restart and reload, the audit log, logs and stats.

use crate::harness::{PluginDef, TestSupervisor};
use serde_json::Value;

pub const ADMIN: &str = "admin-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";

async fn admin_sup(plugins: &[PluginDef]) -> TestSupervisor {
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
