//! Plugin settings and secrets, on SQLite and PostgreSQL: the schema's validation, generations,
//! live delivery (and a plugin refusing), settings marked `restart`, required settings, secrets
//! that never leave in clear, a wrong or missing key, and key rotation.

use crate::admin::ADMIN;
use crate::harness::{PluginDef, TestSupervisor};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

/// A secret value the tests look for in every place it must not be.
const SECRET: &str = "s3cret-Value-0xDEADBEEF";

const SCHEMA: &str = r#"
[settings.greeting]
type = "string"
default = "hello"
description = "what it says"
max_length = 40
[settings.retries]
type = "integer"
min = 0
max = 10
[settings.timeout]
type = "duration"
default = "5s"
max = "1m"
[settings.api_key]
type = "string"
secret = true
[settings.mode]
type = "enum"
values = ["fast", "safe"]
default = "fast"
restart = true
"#;

fn echo() -> PluginDef {
    PluginDef::echo("echo", SCHEMA)
}

async fn start(url: Option<&str>, plugins: &[PluginDef], key: Option<&str>) -> TestSupervisor {
    let mut env = vec![("PLUGD_ADMIN_TOKEN", ADMIN.to_owned())];
    if let Some(url) = url {
        env.push(("PLUGD_DATABASE_URL", url.to_owned()));
    }
    if let Some(key) = key {
        env.push(("PLUGD_SECRET_KEY", key.to_owned()));
    }
    TestSupervisor::start_full(plugins, &[], &env, None).await
}

async fn call(
    sup: &TestSupervisor,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut req = sup.client.request(method, sup.url(path)).bearer_auth(ADMIN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, r.json().await.unwrap_or(Value::Null), etag)
}

async fn settings(sup: &TestSupervisor) -> (Value, String) {
    let (status, body, etag) = call(
        sup,
        reqwest::Method::GET,
        "/admin/plugins/echo/settings",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (body, etag.expect("an ETag"))
}

async fn patch(sup: &TestSupervisor, body: Value) -> (u16, Value) {
    let (status, body, _) = call(
        sup,
        reqwest::Method::PATCH,
        "/admin/plugins/echo/settings",
        Some(body),
        None,
    )
    .await;
    (status, body)
}

fn setting<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["settings"]
        .as_array()
        .expect("settings")
        .iter()
        .find(|s| s["name"] == name)
        .expect("declared")
}

/// What the plugin itself has now.
async fn plugin_sees(sup: &TestSupervisor) -> Value {
    sup.get_json("/plugins/echo/settings", 200).await
}

async fn the_settings_api_works_on(url: Option<&str>) {
    let sup = start(url, &[echo()], None).await;

    // Defaults, in normal form, delivered in the handshake.
    let (view, etag) = settings(&sup).await;
    assert_eq!(setting(&view, "greeting")["source"], "default");
    assert_eq!(setting(&view, "greeting")["value"], "hello");
    assert_eq!(setting(&view, "timeout")["value"], 5000);
    assert_eq!(setting(&view, "api_key")["source"], "unset");
    assert_eq!(setting(&view, "mode")["values"], json!(["fast", "safe"]));
    assert_eq!(
        plugin_sees(&sup).await,
        json!({ "greeting": "hello", "timeout": 5000, "mode": "fast" })
    );
    let first = view["generation"].as_i64().expect("generation");
    assert_eq!(etag, format!("\"{first}\""));

    // Every bad field is named with its reason; nothing is stored.
    let (status, body) = patch(
        &sup,
        json!({ "retries": 11, "timeout": "an age", "colour": "red", "greeting": 5 }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["key"].as_str().expect("key"))
        .collect();
    assert_eq!(
        fields,
        ["colour", "greeting", "retries", "timeout"],
        "{body}"
    );
    let detail = body["detail"].as_str().expect("detail");
    assert!(detail.contains("retries: must be at most 10"), "{detail}");
    assert!(detail.contains("colour: is not a setting"), "{detail}");
    assert_eq!(settings(&sup).await.0["generation"], first);

    // A good change, secret included, is taken live by the running instance.
    let pid = sup.plugin_status("echo").await["pid"].clone();
    let (status, body) = patch(
        &sup,
        json!({ "greeting": "hi there", "retries": 3, "timeout": "90s", "api_key": SECRET }),
    )
    .await;
    assert_eq!(status, 400, "90s is above the 1m maximum: {body}");
    let (status, body) = patch(
        &sup,
        json!({ "greeting": "hi there", "retries": 3, "timeout": "30s", "api_key": SECRET }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], "live", "{body}");
    assert_eq!(body["generation"], first + 1);
    assert_eq!(
        body["keys"],
        json!(["api_key", "greeting", "retries", "timeout"])
    );
    let seen = plugin_sees(&sup).await;
    assert_eq!(seen["greeting"], "hi there");
    assert_eq!(seen["timeout"], 30_000);
    assert_eq!(
        seen["api_key"], SECRET,
        "the plugin gets the secret in clear"
    );
    assert_eq!(sup.plugin_status("echo").await["pid"], pid, "no restart");
    let (view, etag) = settings(&sup).await;
    assert_eq!(setting(&view, "api_key")["source"], "set");
    assert!(setting(&view, "api_key").get("value").is_none(), "{view}");
    assert_eq!(
        setting(&view, "greeting")["updated_by"],
        "env",
        "the token's name"
    );

    // A stale generation is refused; the current one passes.
    let stale = format!("\"{first}\"");
    let (status, body, _) = call(
        &sup,
        reqwest::Method::PATCH,
        "/admin/plugins/echo/settings",
        Some(json!({ "retries": 4 })),
        Some(&stale),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, body, _) = call(
        &sup,
        reqwest::Method::PATCH,
        "/admin/plugins/echo/settings",
        Some(json!({ "retries": 4 })),
        Some(&etag),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The plugin refuses a value: it keeps its settings, the admin hears why, nothing stored.
    let generation = settings(&sup).await.0["generation"].clone();
    let (status, body) = patch(&sup, json!({ "greeting": "refuse" })).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("is not a greeting")),
        "{body}"
    );
    assert_eq!(plugin_sees(&sup).await["greeting"], "hi there");
    assert_eq!(settings(&sup).await.0["generation"], generation);

    // DELETE returns one to its default; PUT replaces every value set.
    let (status, _, _) = call(
        &sup,
        reqwest::Method::DELETE,
        "/admin/plugins/echo/settings/greeting",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(plugin_sees(&sup).await["greeting"], "hello");
    let (status, _, _) = call(
        &sup,
        reqwest::Method::DELETE,
        "/admin/plugins/echo/settings/colour",
        None,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, body, _) = call(
        &sup,
        reqwest::Method::PUT,
        "/admin/plugins/echo/settings",
        Some(json!({ "api_key": SECRET })),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = plugin_sees(&sup).await;
    assert!(seen.get("retries").is_none(), "{seen}");
    assert_eq!(seen["timeout"], 5000);

    // A setting marked `restart` swaps in a new instance that starts with it.
    let (status, body) = patch(&sup, json!({ "mode": "safe" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], "reload");
    sup.wait_until("a new instance runs with mode=safe", || async {
        let status = sup.plugin_status("echo").await;
        status["state"] == "ready" && status["pid"] != pid && {
            let seen = sup.get("/plugins/echo/settings").await;
            match seen {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["mode"] == "safe"),
                Err(_) => false,
            }
        }
    })
    .await;

    // The audit log names the keys and the token, never a value.
    let (_, events, _) = call(
        &sup,
        reqwest::Method::GET,
        "/admin/events?plugin=echo",
        None,
        None,
    )
    .await;
    let events = events.to_string();
    assert!(events.contains("api_key (secret)"), "{events}");
    assert!(events.contains("\"actor\":\"env\""), "{events}");

    // The secret is nowhere but in the plugin: not in the API, the audit log, the metrics, the
    // logs, or the database (sealed at rest).
    for path in [
        "/admin/plugins/echo/settings",
        "/admin/plugins/echo",
        "/admin/events",
        "/admin/plugins/echo/logs",
    ] {
        let (_, body, _) = call(&sup, reqwest::Method::GET, path, None, None).await;
        assert!(!body.to_string().contains(SECRET), "{path}: {body}");
    }
    let metrics = sup.metrics().await;
    assert!(!metrics.contains(SECRET));
    let log = std::fs::read_to_string(sup.dir().join("plugd.log")).expect("log");
    assert!(!log.contains(SECRET), "the log holds the secret");
    if url.is_none() {
        for entry in std::fs::read_dir(sup.dir().join("data")).expect("data dir") {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            let found = bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
            assert!(!found, "{} holds the secret in clear", path.display());
        }
    }
}

#[tokio::test]
async fn settings_are_validated_delivered_live_and_secrets_never_leave_on_sqlite() {
    the_settings_api_works_on(None).await;
}

#[tokio::test]
async fn settings_are_validated_delivered_live_and_secrets_never_leave_on_postgres() {
    let url = crate::pg::fresh_database().await;
    the_settings_api_works_on(Some(&url)).await;
}

#[tokio::test]
async fn a_plugin_missing_a_required_setting_waits_for_it_then_starts() {
    let schema = "[settings.token]\ntype = \"string\"\nrequired = true\n";
    let sup = start(None, &[PluginDef::echo("echo", schema)], None).await;
    let status = sup.plugin_status("echo").await;
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("missing required settings: token")),
        "{status}"
    );
    let (status, body) = patch(&sup, json!({ "token": null })).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| d.contains("token: is required")));
    // Through the command line, as an operator would.
    let out = crate::operator::cli(&sup, Some(ADMIN), &["settings", "echo"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("token") && table.contains("MISSING"),
        "{table}"
    );
    assert!(
        table.contains("missing required settings: token"),
        "{table}"
    );
    let out = crate::operator::cli(&sup, Some(ADMIN), &["set", "echo", "token=t-1"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("changed (token)"), "{said}");
    let out = crate::operator::cli(&sup, Some(ADMIN), &["set", "echo", "colour=red"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains("colour: is not a setting"), "{said}");
    sup.wait_until("it starts once the setting is there", || async {
        sup.plugin_status("echo").await["state"] == "ready"
    })
    .await;
    assert_eq!(plugin_sees(&sup).await["token"], "t-1");
}

/// `plugd serve` on `sup`'s directories (stopped), expected to fail: its stderr.
async fn serve_fails(sup: &TestSupervisor, url: Option<&str>, key: Option<&str>) -> String {
    let mut cmd = crate::harness::serve_command(sup.dir());
    cmd.env("PLUGD_ADMIN_TOKEN", ADMIN);
    if let Some(url) = url {
        cmd.env("PLUGD_DATABASE_URL", url);
    }
    if let Some(key) = key {
        cmd.env("PLUGD_SECRET_KEY", key);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run plugd");
    assert_eq!(out.status.code(), Some(1), "plugd must refuse to start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rotate(sup: &TestSupervisor, url: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plugd"));
    cmd.current_dir(sup.dir())
        .args(["secrets", "rotate", "--data-dir", "data"])
        .env_remove("PLUGD_SECRET_KEY")
        .env_remove("PLUGD_DATABASE_URL");
    if let Some(url) = url {
        cmd.env("PLUGD_DATABASE_URL", url);
    }
    let out = cmd.output().expect("run plugd secrets rotate");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn a_wrong_or_missing_key_stops_plugd_and_rotation_reseals_every_secret_on_sqlite() {
    keys_and_rotation_on(None).await;
}

#[tokio::test]
async fn a_wrong_or_missing_key_stops_plugd_and_rotation_reseals_every_secret_on_postgres() {
    let url = crate::pg::fresh_database().await;
    keys_and_rotation_on(Some(&url)).await;
}

async fn keys_and_rotation_on(url: Option<&str>) {
    let mut sup = start(url, &[echo()], None).await;
    let key_file = sup.dir().join("data/secret.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file)
            .expect("key file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let (status, body) = patch(&sup, json!({ "api_key": SECRET })).await;
    assert_eq!(status, 200, "{body}");

    // Rotated while plugd runs: the running worker follows the new key file, and the secret
    // still reaches a new instance.
    let old_key = std::fs::read_to_string(&key_file).expect("key");
    let said = rotate(&sup, url);
    assert!(said.contains("1 secrets sealed again"), "{said}");
    let new_key = std::fs::read_to_string(&key_file).expect("key");
    assert_ne!(old_key, new_key);
    let (status, _, _) = call(
        &sup,
        reqwest::Method::POST,
        "/admin/plugins/echo/restart",
        None,
        None,
    )
    .await;
    assert_eq!(status, 202);
    let pid = sup.plugin_status("echo").await["pid"].clone();
    sup.wait_until("a new instance has the secret", || async {
        let status = sup.plugin_status("echo").await;
        status["state"] == "ready" && status["pid"] != pid
    })
    .await;
    assert_eq!(plugin_sees(&sup).await["api_key"], SECRET);
    let (view, _) = settings(&sup).await;
    assert_eq!(setting(&view, "api_key")["source"], "set");

    // A wrong key, and no key at all, are refused at start-up with the key ids named.
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sup.wait_exit().await.code(), Some(0));
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let said = serve_fails(&sup, url, Some(wrong)).await;
    assert!(
        said.contains("PLUGD_SECRET_KEY") && said.contains("is not the key"),
        "{said}"
    );
    std::fs::rename(&key_file, sup.dir().join("data/secret.key.moved")).expect("move");
    let said = serve_fails(&sup, url, None).await;
    assert!(said.contains("no key is given"), "{said}");
    assert!(!said.contains(SECRET) && !said.contains(new_key.trim()));
    std::fs::rename(sup.dir().join("data/secret.key.moved"), &key_file).expect("move back");
    sup.restart_stopped().await;
    assert_eq!(plugin_sees(&sup).await["api_key"], SECRET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_change_reaches_the_plugin_on_every_worker_live() {
    let url = crate::pg::fresh_database().await;
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let plugins = [echo()];
    let a = start(Some(&url), &plugins, Some(key)).await;
    let b = start(Some(&url), &plugins, Some(key)).await;
    let c = start(Some(&url), &plugins, Some(key)).await;
    let all = [&a, &b, &c];
    let mut slowest = Duration::ZERO;
    for (i, greeting) in ["one", "two", "three"].iter().enumerate() {
        let writer = all[i];
        let began = Instant::now();
        let (status, body) =
            patch(writer, json!({ "greeting": greeting, "api_key": SECRET })).await;
        assert_eq!(status, 200, "{body}");
        for w in all {
            w.wait_until("the plugin on every worker has the new value", || async {
                plugin_sees(w).await["greeting"] == *greeting
            })
            .await;
        }
        slowest = slowest.max(began.elapsed());
        for w in all {
            assert_eq!(plugin_sees(w).await["api_key"], SECRET);
        }
    }
    eprintln!("slowest admin change -> plugin on all three workers: {slowest:?}");
    // A worker whose plugin refuses tells the admin; the others are not changed.
    let (status, body) = patch(&b, json!({ "greeting": "refuse" })).await;
    assert_eq!(status, 422, "{body}");
    for w in all {
        assert_eq!(plugin_sees(w).await["greeting"], "three");
    }
}
