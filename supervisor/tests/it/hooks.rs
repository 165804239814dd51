//! Hooks: every mode with several plugins, priority order, deadlines, a plugin that is down,
//! fail-open and fail-closed vetoes, and MessagePack in and out.

use crate::harness::{PluginDef, TestSupervisor, HOST_TOKEN};
use serde_json::{json, Value};

fn hooked(name: &str, hooks: &str) -> PluginDef {
    PluginDef::echo(
        name,
        &format!("[env]\nECHO_HOOKS = \"{hooks}\"\n[restart]\nmax_restarts = 0\n"),
    )
}

async fn fire(sup: &TestSupervisor, hook: &str, payload: Value) -> Value {
    let r = sup
        .client
        .post(sup.url(&format!("/hooks/{hook}")))
        .bearer_auth(HOST_TOKEN)
        .json(&payload)
        .send()
        .await
        .expect("fire");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

#[tokio::test]
async fn every_mode_combines_several_plugins_in_priority_order() {
    let sup = TestSupervisor::start(
        &[
            hooked("a", "doc.render:filter:20:tag-A;preview:first:1:pass;stats:collect:0:echo;save:veto:5:pass"),
            hooked("b", "doc.render:filter:10:tag-B;preview:first:2:answer-two;stats:collect:0:answer-b;save:veto:1:reject-too big"),
            hooked("c", "doc.render:filter:30:panic;preview:first:3:answer-three;stats:collect:0:panic"),
        ],
        &["--hook-timeout", "2s"],
    )
    .await;

    let filtered = fire(&sup, "doc.render", json!("x")).await;
    assert_eq!(filtered["mode"], "filter");
    assert_eq!(
        filtered["value"], "xBA",
        "b (10) before a (20); c's failure is skipped"
    );
    assert_eq!(filtered["applied"], json!(["b", "a"]));
    assert_eq!(filtered["skipped"][0]["plugin"], "c");

    let first = fire(&sup, "preview", json!({"mime": "text/markdown"})).await;
    assert_eq!(
        (first["value"].as_str(), first["plugin"].as_str()),
        (Some("two"), Some("b"))
    );

    let collected = fire(&sup, "stats", json!({"n": 1})).await;
    let results = collected["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert!(results.contains(&json!({"plugin": "a", "value": {"n": 1}})));
    assert!(results.contains(&json!({"plugin": "b", "value": "b"})));
    let c = results.iter().find(|r| r["plugin"] == "c").expect("c");
    assert!(
        c["error"].as_str().expect("error").contains("panicked"),
        "{c}"
    );

    let vetoed = fire(&sup, "save", json!({"size": 9})).await;
    assert_eq!(vetoed["allowed"], false);
    assert_eq!(
        vetoed["rejected_by"],
        json!({"plugin": "b", "reason": "too big"})
    );

    let nobody = fire(&sup, "unknown.hook", json!(null)).await;
    assert_eq!(nobody["handlers"], 0);
}

#[tokio::test]
async fn deadlines_down_plugins_and_veto_policies() {
    let sup = TestSupervisor::start(
        &[
            hooked("slow", "save:veto:1:hang;stats:collect:0:hang"),
            hooked("strict", "guard:veto:1:hang:closed"),
            hooked("gone", "stats:collect:0:echo;save:veto:2:pass"),
        ],
        &["--hook-timeout", "300ms"],
    )
    .await;
    // A plugin that is down is still a handler: reported, not forgotten.
    sup.get("/plugins/gone/crash").await.expect("crash");
    sup.wait_until("gone is down", || async {
        sup.plugin_status("gone").await["state"] == "failed"
    })
    .await;

    let collected = fire(&sup, "stats", json!(1)).await;
    let errors: Vec<(String, String)> = collected["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["plugin"].as_str().unwrap_or("").to_owned(),
                r["error"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        errors.contains(&("slow".into(), "no answer within 300ms".into())),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(p, e)| p == "gone" && e.contains("is down")),
        "{errors:?}"
    );

    // Fail-open (the default): the hung handler is skipped and the save is allowed.
    let open = fire(&sup, "save", json!({})).await;
    assert_eq!(open["allowed"], true, "{open}");
    assert_eq!(open["skipped"].as_array().expect("skipped").len(), 2);
    // Fail-closed: the hung handler rejects.
    let closed = fire(&sup, "guard", json!({})).await;
    assert_eq!(closed["allowed"], false, "{closed}");
    assert_eq!(closed["rejected_by"]["plugin"], "strict");
    assert!(closed["rejected_by"]["reason"]
        .as_str()
        .expect("reason")
        .contains("fails closed"));
}

#[tokio::test]
async fn messagepack_in_messagepack_out() {
    let sup = TestSupervisor::start(&[hooked("a", "doc.render:filter:1:tag-!")], &[]).await;
    let body = rmp_serde::to_vec(&"hello").expect("encode");
    let r = sup
        .client
        .post(sup.url("/hooks/doc.render"))
        .bearer_auth(HOST_TOKEN)
        .header("content-type", "application/msgpack")
        .body(body)
        .send()
        .await
        .expect("fire");
    assert_eq!(r.headers()["content-type"], "application/msgpack");
    let answer: Value = rmp_serde::from_slice(&r.bytes().await.expect("body")).expect("msgpack");
    assert_eq!(answer["value"], "hello!");
    let bad = sup
        .client
        .post(sup.url("/hooks/doc.render"))
        .bearer_auth(HOST_TOKEN)
        .body("{not json")
        .send()
        .await
        .expect("bad");
    assert_eq!(bad.status(), 400);
}

fn serving(name: &str, services: &str, hooks: &str) -> PluginDef {
    PluginDef::echo(
        name,
        &format!("[env]\nECHO_SERVICES = \"{services}\"\nECHO_HOOKS = \"{hooks}\"\n[restart]\nmax_restarts = 0\n"),
    )
}

async fn call(sup: &TestSupervisor, from: &str, service: &str, payload: Value) -> (u16, String) {
    let r = sup
        .client
        .post(sup.url(&format!("/plugins/{from}/call/{service}")))
        .json(&payload)
        .send()
        .await
        .expect("call");
    (r.status().as_u16(), r.text().await.expect("body"))
}

#[tokio::test]
async fn plugins_call_each_others_services_and_fire_hooks() {
    let sup = TestSupervisor::start(
        &[
            serving("a", "a.relay:relay", ""),
            serving(
                "b",
                "text.upper:upper;b.relay:relay;b.fail:fail",
                "greet:collect:0:answer-hi",
            ),
            serving("down", "down.svc:upper", ""),
        ],
        &["--hook-timeout", "2s"],
    )
    .await;
    assert_eq!(
        call(&sup, "a", "text.upper", json!("shout")).await,
        (200, "\"SHOUT\"".into())
    );

    let (status, body) = call(&sup, "a", "no.such", json!(1)).await;
    assert_eq!(status, 502);
    assert!(
        body.contains("no running plugin provides service"),
        "{body}"
    );
    let (status, body) = call(&sup, "a", "b.fail", json!(1)).await;
    assert_eq!(status, 502);
    assert!(body.contains("fails on purpose"), "{body}");

    sup.get("/plugins/down/crash").await.expect("crash");
    sup.wait_until("the provider is down", || async {
        sup.plugin_status("down").await["state"] == "failed"
    })
    .await;
    let (status, body) = call(&sup, "a", "down.svc", json!("x")).await;
    assert_eq!(status, 502);
    assert!(
        body.contains("no running plugin provides service \\\"down.svc\\\""),
        "{body}"
    );

    // a → b → a → … ends at the depth limit with an error, not a hang.
    let (status, body) = call(&sup, "a", "b.relay", json!({"to": "a.relay"})).await;
    assert_eq!(status, 502);
    assert!(body.contains("call chain deeper than 8"), "{body}");

    // A plugin fires a hook; other plugins answer it.
    let r = sup
        .client
        .post(sup.url("/plugins/a/fire/greet"))
        .json(&json!({}))
        .send()
        .await
        .expect("fire");
    let answer: Value = r.json().await.expect("json");
    assert_eq!(answer["results"], json!([{"plugin": "b", "value": "hi"}]));
}

#[tokio::test]
async fn the_example_hook_plugins_preview_tidy_and_guard_documents() {
    let sup = TestSupervisor::start(
        &[
            PluginDef::relative("preview", "plugd-example-preview"),
            PluginDef::relative("guard", "plugd-example-guard"),
            PluginDef::echo("caller", ""),
        ],
        &[],
    )
    .await;
    let md = fire(
        &sup,
        "file.preview",
        json!({"mime": "text/markdown", "content": "# Hi"}),
    )
    .await;
    assert_eq!(
        (md["plugin"].as_str(), md["value"]["html"].as_str()),
        (Some("preview"), Some("<h1>Hi</h1>\n"))
    );
    let other = fire(
        &sup,
        "file.preview",
        json!({"mime": "image/png", "content": ""}),
    )
    .await;
    assert_eq!(other["value"], Value::Null, "not ours: passed on");

    let tidy = fire(
        &sup,
        "document.render",
        json!({"title": "t", "body": "a  \n\n\n\nb"}),
    )
    .await;
    assert_eq!(tidy["value"]["body"], "a\n\nb");

    let refused = fire(
        &sup,
        "document.before_save",
        json!({"title": " ", "body": "x"}),
    )
    .await;
    assert_eq!(refused["allowed"], false);
    assert_eq!(
        refused["rejected_by"],
        json!({"plugin": "guard", "reason": "a document needs a title"})
    );
    let allowed = fire(
        &sup,
        "document.before_save",
        json!({"title": "ok", "body": "x"}),
    )
    .await;
    assert_eq!(allowed["allowed"], true);

    assert_eq!(
        call(&sup, "caller", "markdown.render", json!("*x*")).await,
        (200, "\"<p><em>x</em></p>\\n\"".into())
    );
}

#[tokio::test]
async fn the_supervisor_fires_lifecycle_hooks() {
    let hooks = [
        "plugd.plugin.loaded",
        "plugd.plugin.unloaded",
        "plugd.plugin.upgraded",
        "plugd.plugin.config_changed",
        "plugd.plugin.settings_changed",
    ]
    .map(|h| format!("{h}:collect:0:record"))
    .join(";");
    let schema = "[settings.greeting]\ntype = \"string\"\n";
    let sup = TestSupervisor::start_with_env(
        &[hooked("watcher", &hooks), PluginDef::echo("b", schema)],
        &[],
        &[("PLUGD_ADMIN_TOKEN", crate::admin::ADMIN.to_owned())],
    )
    .await;
    let recorded = |hook: &'static str| {
        let url = sup.url(&format!("/plugins/watcher/kv/hook:{hook}"));
        let client = sup.client.clone();
        async move {
            let r = client.get(url).send().await.ok()?;
            if r.status() != 200 {
                return None;
            }
            serde_json::from_str::<Value>(&r.text().await.ok()?).ok()
        }
    };
    sup.get("/plugins/b/crash").await.expect("crash");
    sup.wait_until("b's exit is announced", || async {
        recorded("plugd.plugin.unloaded")
            .await
            .is_some_and(|v| v["plugin"] == "b" && v["reason"] == "exited with code 7")
    })
    .await;
    sup.wait_until("b's restart is announced", || async {
        recorded("plugd.plugin.loaded")
            .await
            .is_some_and(|v| v["plugin"] == "b")
    })
    .await;

    // A change of settings taken live.
    let r = sup
        .client
        .patch(sup.url("/admin/plugins/b/settings"))
        .bearer_auth(crate::admin::ADMIN)
        .json(&json!({ "greeting": "hi" }))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    sup.wait_until("b's new settings are announced", || async {
        recorded("plugd.plugin.settings_changed")
            .await
            .is_some_and(|v| v["plugin"] == "b" && v["keys"] == json!(["greeting"]))
    })
    .await;

    // A new version, under its new name and its deprecated one.
    std::fs::write(
        sup.dir.path().join("plugins/b/plugin.toml"),
        PluginDef::echo("b", &format!("{schema}[env]\nECHO_VERSION = \"0.0.2\"\n")).manifest,
    )
    .expect("change b");
    for hook in ["plugd.plugin.upgraded", "plugd.plugin.config_changed"] {
        sup.wait_until("b's upgrade is announced", || async {
            recorded(hook)
                .await
                .is_some_and(|v| v["plugin"] == "b" && v["from"] == "0.0.1" && v["to"] == "0.0.2")
        })
        .await;
    }
}
